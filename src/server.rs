//! Wiring and lifecycle: opens the store, builds the registry and routes, binds, prints the
//! `listening on` line, and runs the shutdown sequence. Called by `main` (and by anything
//! that wants the server in-process).
//!
//! Shutdown order matters for durability: stop accepting, let every document commit what it
//! has and close its sockets with 1001, then close the store (which commits everything queued
//! before the close), then return.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::AppState;
use crate::auth::{Auth, AuthSettings, KeyError};
use crate::config::Config;
use crate::document::Registry;
use crate::document::{DocSettings, OtSettings};
use crate::http;
use crate::store::Store;

/// Serves `config.addr` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.addr).await?;
    run_on(listener, config, shutdown).await
}

/// Serves an already bound listener (its address, not `config.addr`, is the one served):
/// a program embedding the server binds port 0 itself and knows the port before serving.
pub async fn run_on(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    no_delay_for_accepted(&listener)?;
    let auth = load_auth(&config)?;
    if auth.is_anonymous() {
        if !addr.ip().is_loopback() && !config.allow_anonymous {
            anyhow::bail!(
                "refusing to serve {addr} without a JWT key: everyone could read and write every document. \
                 Configure --jwt-secret or --jwt-public-key, or pass --allow-anonymous"
            );
        }
        tracing::warn!("no JWT key configured: anonymous mode, every client may read and write every document");
    }
    let store = Store::open(&crate::app::store_settings(&config))?;
    // The database lock (`dblock`), held until `run` returns: the CLI's write commands refuse
    // to run while it is held, and a second server on the same database refuses to start.
    // PostgreSQL is shared by design: its servers keep seq unique by the conflict rule.
    let _db_lock = match crate::store::location(&config.db) {
        crate::store::Location::Sqlite(path) => Some(crate::dblock::DbLock::acquire(path)?),
        crate::store::Location::Postgres(_) => None,
    };
    let settings = DocSettings {
        bind_client_ids: !auth.is_anonymous(),
        snapshot_updates: config.snapshot_updates.max(1),
        snapshot_bytes: config.snapshot_bytes.max(1),
        awareness_timeout: Duration::from_millis(config.awareness_timeout_ms.max(10)),
        awareness_clients_max: config.awareness_clients_per_connection_max,
        ot: OtSettings { log_ops_max: config.ot_log_ops_max.max(1), op_limits: crate::app::ot_op_limits(&config) },
    };
    let registry = Registry::new(store.clone(), settings);
    tracing::info!(db = %crate::store::describe(&config.db), sync = ?config.sync, "database open");
    let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    let state = AppState::new(config, auth, registry.clone(), store.clone());
    let sessions = state.sessions.clone();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = warp::serve(http::routes(state)).incoming(listener).graceful(async move {
        let _ = stop_rx.await;
    });
    let server = tokio::spawn(server.run());

    // Poll the shutdown future once before anyone can learn the address: `signal()` installs
    // its handlers on its first poll, and until then a SIGTERM (say, from a script that read
    // the line below) would kill the process instead of shutting it down cleanly.
    let mut shutdown = std::pin::pin!(shutdown);
    let stopped_early = futures::poll!(shutdown.as_mut()).is_ready();

    // Tests and scripts wait for this exact line (SPEC §1).
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, "listening");

    if !stopped_early {
        shutdown.await;
    }
    tracing::info!("shutting down: no new connections; committing and closing documents");
    let _ = stop_tx.send(());
    // OT connections close first, with 1001: a ShareDB client keeps its in-flight op and
    // re-sends it after reconnecting, whereas an error reply would make it discard its
    // pending ops (hard rollback). Yjs connections are closed by their documents below.
    sessions.close_all();
    let left = registry.shutdown(shutdown_timeout).await;
    if left > 0 {
        tracing::warn!(documents = left, "documents still live at shutdown timeout");
    }
    // Every session writes its 1001 close frame before the process exits.
    let open = sessions.drained(shutdown_timeout).await;
    if open > 0 {
        tracing::warn!(sessions = open, "sessions still open at shutdown timeout");
    }
    store.close().await;
    // Plain HTTP connections get the rest of the grace period; upgraded ones are closed.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("stopped");
    Ok(())
}

/// Sets `TCP_NODELAY` on the listener; Linux copies it to every accepted socket (warp's
/// accept loop offers no hook to set it per connection). Without it, a relayed frame sent
/// while the previous one is unacknowledged waits for the ACK, which a client that only
/// reads may delay by up to 40 ms (Nagle meeting delayed ACKs). y-websocket's `ws` server
/// sets it too.
fn no_delay_for_accepted(listener: &TcpListener) -> std::io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_nodelay(true)
}

fn load_auth(config: &Config) -> anyhow::Result<Auth> {
    let pem = match &config.jwt_public_key {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| KeyError::Read { path: path.display().to_string(), message: e.to_string() })?;
            Some((path.to_str().unwrap_or("public key"), bytes))
        }
        None => None,
    };
    Ok(Auth::new(AuthSettings {
        secret: config.jwt_secret.as_ref(),
        public_key_pem: pem,
        audience: config.jwt_audience.as_deref(),
        issuer: config.jwt_issuer.as_deref(),
    })?)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accepted_nodelay(listener: &TcpListener) -> bool {
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        accepted.unwrap().0.nodelay().unwrap()
    }

    #[tokio::test]
    async fn accepted_sockets_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(!accepted_nodelay(&listener).await, "off by default");
        no_delay_for_accepted(&listener).unwrap();
        assert!(accepted_nodelay(&listener).await, "inherited from the listener");
    }
}
