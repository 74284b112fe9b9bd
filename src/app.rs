//! What the doors share: `AppState` (configuration, store, auth, limits, the document
//! registry, live sessions, ShareDB presence channels), built once by `server` and passed to
//! `http` (routes and upgrades) and `rest` (requests), plus the settings derived from
//! `Config` for a session, and the clock in Unix seconds. No IO, no warp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::Auth;
use crate::config::Config;
use crate::document::Registry;
use crate::limits::{LimitSettings, Limiter};
use crate::session::ot::OtSessionSettings;
use crate::session::{SessionSettings, Sessions};

/// The settings of a ShareDB connection, from the Yjs session's and the OT flags.
pub(crate) fn ot_session_settings(config: &Config) -> OtSessionSettings {
    let yjs = SessionSettings::from(config);
    OtSessionSettings {
        outbound_queue_bytes_max: config.outbound_queue_bytes_max,
        ping_interval: yjs.ping_interval,
        idle_timeout: yjs.idle_timeout,
        op_limits: config.ot_op_limits(),
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
    pub ot_presence: Arc<crate::ot::presence::Hub>,
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
    pub(crate) fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Now, in Unix seconds (token expiry is checked against it).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
