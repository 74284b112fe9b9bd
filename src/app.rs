//! What the doors share: `AppState` (configuration, store, auth, limits, the document
//! registry, live sessions, ShareDB presence channels), built once by `server` and passed to
//! `http` (routes and upgrades) and `rest` (requests), plus the settings derived from
//! `Config` for each module (sessions, the store, OT limits: `config` itself holds only the
//! flags' plain values), and the clock in Unix seconds. No IO, no warp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::Auth;
use crate::config::{Config, SyncMode};
use crate::document::Registry;
use crate::limits::{LimitSettings, Limiter};
use crate::ot::delta::DeltaLimits;
use crate::protocol::FrameLimits;
use crate::session::hocuspocus::HocuspocusSettings;
use crate::session::ot::OtSessionSettings;
use crate::session::{SessionSettings, Sessions};
use crate::store::{Durability, StoreSettings};
use crate::validate::Limits;

/// Per-connection limits, from the flags.
pub fn session_settings(c: &Config) -> SessionSettings {
    SessionSettings {
        outbound_queue_bytes_max: c.outbound_queue_bytes_max,
        frame_limits: FrameLimits {
            update: Limits { any_depth_max: c.update_depth_max },
            awareness_clients_max: c.awareness_clients_per_message_max,
        },
        ping_interval: Duration::from_millis(c.ping_interval_ms.max(10)),
        idle_timeout: Duration::from_millis(c.idle_timeout_ms.max(10)),
        awareness_state_bytes_max: c.awareness_state_bytes_max,
    }
}

/// Bounds on one OT op, from the flags; lengths stay far below yrs's `u32` positions.
pub fn ot_op_limits(c: &Config) -> DeltaLimits {
    DeltaLimits { components_max: c.ot_op_components_max, insert_units_max: c.ot_op_insert_units_max, len_max: 1 << 31 }
}

/// The settings of a Hocuspocus connection: the Yjs session's, and its own caps.
pub(crate) fn hocuspocus_settings(config: &Config) -> HocuspocusSettings {
    HocuspocusSettings {
        session: session_settings(config),
        docs_max: config.hocuspocus_docs_per_connection_max.max(1),
        preauth_bytes_max: config.hocuspocus_preauth_bytes_max,
        preauth_frames_max: config.hocuspocus_preauth_frames_max,
    }
}

/// How the store opens the database, from the flags.
pub fn store_settings(c: &Config) -> StoreSettings {
    StoreSettings {
        db: c.db.clone(),
        durability: match c.sync {
            SyncMode::Full => Durability::Full,
            SyncMode::Normal => Durability::Normal,
        },
        busy_timeout: Duration::from_millis(c.store_busy_timeout_ms),
        batch_max: c.store_batch_max.max(1),
    }
}

/// The settings of a ShareDB connection, from the Yjs session's and the OT flags.
pub(crate) fn ot_session_settings(config: &Config) -> OtSessionSettings {
    let yjs = session_settings(config);
    OtSessionSettings {
        outbound_queue_bytes_max: config.outbound_queue_bytes_max,
        ping_interval: yjs.ping_interval,
        idle_timeout: yjs.idle_timeout,
        op_limits: ot_op_limits(config),
        docs_max: config.ot_docs_per_connection_max.max(1),
        presence_bytes_max: config.awareness_state_bytes_max,
    }
}

/// What the routes share.
pub struct AppState {
    pub config: Config,
    pub store: crate::store::Store,
    pub auth: Auth,
    pub limiter: Arc<Limiter>,
    pub registry: Arc<Registry>,
    pub sessions: Arc<Sessions>,
    /// ShareDB presence channels of the OT connections.
    pub ot_presence: Arc<crate::ot::presence::Hub<crate::outbox::OutboxPeer>>,
    next_conn: AtomicU64,
}

impl AppState {
    pub fn new(config: Config, auth: Auth, registry: Arc<Registry>, store: crate::store::Store) -> Arc<AppState> {
        let limiter = Limiter::new(LimitSettings {
            messages_per_sec: config.rate_messages_per_sec,
            messages_burst: config.rate_messages_burst,
            // At least one largest message must fit the burst.
            bytes_per_sec: config.rate_bytes_per_sec,
            bytes_burst: config.rate_bytes_burst.max(config.message_bytes_max as f64),
            connections_per_user_max: config.connections_per_user_max,
            connections_max: config.connections_max,
        });
        Arc::new(AppState {
            config,
            store,
            auth,
            limiter,
            registry,
            sessions: Arc::default(),
            ot_presence: Arc::default(),
            next_conn: AtomicU64::new(1),
        })
    }

    /// A fresh connection id (also used for REST requests' attachments).
    pub(crate) fn next_conn(&self) -> crate::conn::ConnId {
        crate::conn::ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }
}

/// Now, in Unix seconds (token expiry is checked against it).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
