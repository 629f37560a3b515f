//! HTTP admin API: Prometheus `/metrics`, liveness `/healthz`, readiness
//! `/readyz` (200 once logs are recovered and the Kafka listener is up, and
//! while disk writes work; otherwise 503 with the reason), and the plugin
//! registry under `/v1/plugins` (see `plugins`). While the broker starts,
//! `serve_starting` answers `/healthz` and `/readyz` alone. Who may call
//! what: `auth`.

pub mod auth;
mod plugins;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::listeners::ServerTls;

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/plugins", get(plugins::list))
        .route(
            "/v1/plugins/{name}",
            get(plugins::describe)
                .post(plugins::upload)
                .put(plugins::upload)
                .delete(plugins::delete),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            sluice_plugin_host::registry::MAX_MODULE_BYTES + 1024,
        ))
        .layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            auth::authenticate,
        ))
        .with_state(broker)
}

pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> std::io::Result<()> {
    serve_app(listener, router(broker), tls, std::future::pending()).await
}

/// Longest a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves: plain HTTP, or
/// HTTPS with `tls`, where a client certificate's principal goes with each
/// request (`auth::CertificatePrincipal`).
async fn serve_app(
    listener: TcpListener,
    app: Router,
    tls: Option<ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    tokio::pin!(shutdown);
    // Told to every connection at shutdown: each finishes the request in
    // progress and closes (a keep-alive client then reconnects to whatever
    // serves the port next), as axum's graceful shutdown does.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => {
                let _ = stopping.send(true);
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let app = app.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "admin API: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let principal = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::auth::certificate::principal(cert));
            let app = app.layer(axum::Extension(auth::CertificatePrincipal(principal)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                // A client that goes quiet before sending its headers is
                // not kept.
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopped = async {
                // Stopping, or the sender gone: either way, wind down.
                let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
            };
            let ended = tokio::select! {
                ended = conn.as_mut() => Some(ended),
                () = stopped => None,
            };
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "admin API connection ended");
            }
        });
    }
}

async fn metrics(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    let view = b.view();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            b.plugins
                .metrics
                .set_memory(&b.plugins.registry.memory_by_plugin());
            b.metrics.render(
                &view,
                &b.groups,
                &|t, p| b.high_watermarks.get(&view, t, p),
                &b.quorum,
                Some(&b.replicas),
                Some(&b.transactions),
            )
        },
    )
}

async fn readyz(State(b): State<Arc<Broker>>) -> impl IntoResponse {
    if let Some(problem) = sluice_storage::health::disk().problem() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}\n"),
        );
    }
    if b.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or shutting down\n".to_string(),
        )
    }
}

/// What a starting broker is waiting for, for `/readyz`.
pub type StartupPhase = Arc<std::sync::Mutex<&'static str>>;

/// Serves `/healthz` and `/readyz` until `opened` resolves (the full API
/// needs the open broker): readiness says what the broker is waiting for,
/// and names the disk problem when there is one (a broker restarted on a
/// full disk waits for space rather than failing).
pub async fn serve_starting(
    listener: TcpListener,
    tls: Option<ServerTls>,
    phase: StartupPhase,
    opened: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let readyz = move || {
        let phase = *phase.lock().unwrap_or_else(|e| e.into_inner());
        async move {
            let reason = match sluice_storage::health::disk().problem() {
                Some(problem) => format!("starting ({phase}): {problem}\n"),
                None => format!("starting: {phase}\n"),
            };
            (StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    serve_app(listener, app, tls, opened).await
}
