//! The Kafka listener: one task per connection, frames read with a bounded
//! size into buffers that grow with the bytes that arrive, requests
//! answered strictly in order (a produce's appends happen in order; its wait
//! for the followers may overlap the next requests, see `PIPELINE`).
//! Anything unusable a client sends closes that connection with a logged
//! (rate-limited) reason; other clients never notice. Admission (connection
//! limits) and accounting are `crate::connections`'. Each configured
//! listener (`crate::listeners`) is served by its own accept loop, over TLS
//! where its protocol says so. The brokers' own traffic (quorum frames, see
//! `cluster::quorum::rpc`; forwarded produce; follower fetches;
//! transaction markers) is served only on the inter-broker listener, from
//! the start, before this broker has joined the cluster; anywhere else it
//! is refused and counted. Kafka clients are served once the broker has
//! joined.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::api::{self, Session};
use crate::broker::Broker;
use crate::connections::Connections;
use crate::listeners::ServerTls;
use sluice_metadata::quorum::{Quorum, rpc};
use sluice_protocol::{self as protocol, FrameError};

/// What the listener serves: the quorum at once, the broker once open.
pub struct Listener {
    pub quorum: Arc<Quorum>,
    pub broker: OnceLock<Arc<Broker>>,
    pub max_request_bytes: usize,
    pub connections: Arc<Connections>,
    /// Set on shutdown: stop accepting, let every connection finish the
    /// requests it has and close.
    pub draining: tokio::sync::watch::Sender<bool>,
}

impl Listener {
    /// Stops taking connections and requests; open connections close once
    /// their requests in progress are answered. `connections.metrics.active`
    /// reaches zero when all have.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }
}

/// Once a length prefix has arrived, the rest of the frame must follow within
/// this time; a client that stalls mid-frame holds buffers and a task.
const FRAME_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection's first read buffer, and the smallest step it grows by.
const READ_CHUNK: usize = 4 * 1024;

/// Response bytes buffered before a write; bigger chunks (fetched records)
/// go to the socket directly.
const WRITE_BUFFER: usize = 8 * 1024;

/// What a connection knows of the listener it arrived on.
pub struct ListenerContext {
    pub name: Arc<str>,
    /// Serves the brokers' own requests.
    pub inter_broker: bool,
    pub tls: Option<ServerTls>,
    /// Connections authenticate with SASL before anything else.
    pub sasl: bool,
    /// The only client-certificate principals let in (the inter-broker
    /// listener with ACLs on: see `listeners::inter_broker_principals`).
    pub peer_principals: Option<std::collections::BTreeSet<String>>,
}

/// Longest a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(node: Arc<Listener>, listener: TcpListener, endpoint: Arc<ListenerContext>) {
    let mut draining = node.draining.subscribe();
    loop {
        // Kafka's acceptor waits while the broker is at max.connections.
        let slot = tokio::select! {
            slot = node.connections.slot() => slot,
            () = drained(&mut draining) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Dropping the listener closes the port: clients fail over at
            // once instead of connecting to a broker that is leaving.
            () = drained(&mut draining) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(admitted) = node.connections.admit(peer, slot) else {
                    // Over max.connections.per.ip: closed on arrival.
                    drop(stream);
                    continue;
                };
                let node = node.clone();
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    if let Err(e) = accepted_connection(&node, &endpoint, stream, peer).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an I/O error");
                    }
                    drop(admitted);
                });
            }
            Err(e) => {
                // Typically EMFILE; back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Requests of one connection in progress at once. Their ordered parts
/// (a produce's appends) run one after another in arrival order; what
/// follows (waiting for the followers) overlaps, and the responses go out
/// in order. Kafka processes one request per connection at a time, which
/// caps an acks=all producer at one batch per replication round trip.
const PIPELINE: usize = 16;
/// Request bytes a connection may hold in progress before it stops reading.
const PIPELINE_BYTES: usize = 64 << 20;

/// What the frame reader hands the connection.
enum Incoming {
    Frame(Bytes),
    /// Unusable input: close with this reason after answering what came before.
    Refused(&'static str, String),
}

/// A response ready to write, or the reason to close.
enum Reply {
    Chunks(Vec<Bytes>),
    Nothing,
    Close(&'static str, String),
    /// Write this response, then close for this reason.
    Last(Vec<Bytes>, &'static str, String),
}

/// Aborts a task when dropped (the connection's frame reader).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves one accepted connection: plain, or after a TLS handshake.
async fn accepted_connection(
    node: &Listener,
    endpoint: &ListenerContext,
    stream: TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let session = Session::new(
        peer,
        endpoint.name.clone(),
        endpoint.inter_broker,
        endpoint.sasl,
        node.max_request_bytes,
    );
    let Some(tls) = &endpoint.tls else {
        let (rd, wr) = stream.into_split();
        return connection(node, &session, rd, wr).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let failed = |detail: String| {
        node.connections
            .metrics
            .tls_handshake_failures
            .with_label_values(&[&endpoint.name])
            .inc();
        node.connections
            .closed_for_bad_input(peer, "tls_handshake", &detail);
        Ok(())
    };
    let handshake = acceptor.accept(stream).into_fallible();
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => {
            let principal = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::auth::certificate::principal(cert));
            if let Some(allowed) = &endpoint.peer_principals
                && !principal.as_ref().is_some_and(|p| allowed.contains(p))
            {
                node.connections
                    .metrics
                    .inter_broker_refused
                    .with_label_values(&[&endpoint.name, "UntrustedCertificate"])
                    .inc();
                node.connections.closed_for_bad_input(
                    peer,
                    "untrusted_certificate",
                    &format!(
                        "{} is neither this broker's certificate nor a super user",
                        principal.as_deref().unwrap_or("an unreadable certificate")
                    ),
                );
                return Ok(());
            }
            if let Some(p) = principal.filter(|_| !endpoint.sasl) {
                // SSL (not SASL_SSL): the certificate says who this is.
                session.authenticated_as(p);
            }
            let (rd, wr) = tokio::io::split(tls);
            connection(node, &session, rd, wr).await
        }
        Ok(Err((e, tcp))) => {
            close_after_alert(tcp).await;
            failed(format!("TLS handshake failed: {e}"))
        }
        Err(_) => failed(format!(
            "TLS handshake not finished within {}s",
            TLS_HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}

/// After a refused TLS handshake (its alert already sent): closes this
/// side and reads what the client still sends, for a moment, so that the
/// client gets a FIN after the alert and reads why it was refused. Closing
/// with its unread bytes (the rest of its handshake flight) in the receive
/// buffer would send a reset instead, which can make it lose the alert.
async fn close_after_alert(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
}

async fn connection<R, W>(node: &Listener, session: &Session, rd: R, wr: W) -> std::io::Result<()>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin,
{
    let peer = session.peer;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, wr);
    // Capacity 1: the reader holds at most one frame the connection has not
    // taken yet; `PIPELINE` and `PIPELINE_BYTES` bound the rest.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(
        rd,
        session.frame_limit.clone(),
        tx,
    )));
    let mut pending: FuturesOrdered<BoxFuture<'_, (usize, Reply)>> = FuturesOrdered::new();
    let mut in_flight_bytes = 0usize;
    let mut reading = true;
    let mut closing: Option<(&'static str, String)> = None;
    // connections.max.idle.ms: from the last request or response.
    let idle_timeout = node.connections.limits.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut draining = node.draining.subscribe();
    loop {
        if !reading && pending.is_empty() {
            writer.flush().await?;
            if let Some((reason, detail)) = closing {
                node.connections.closed_for_bad_input(peer, reason, &detail);
            }
            return Ok(());
        }
        let room = pending.len() < PIPELINE && in_flight_bytes < PIPELINE_BYTES;
        tokio::select! {
            Some((len, reply)) = pending.next(), if !pending.is_empty() => {
                in_flight_bytes -= len;
                if !write_reply(&mut writer, reply, &mut closing).await? {
                    reading = false;
                    pending.clear();
                    continue;
                }
                // Replies already done go out together, then one flush.
                while let Some(Some((len, reply))) = pending.next().now_or_never() {
                    in_flight_bytes -= len;
                    if !write_reply(&mut writer, reply, &mut closing).await? {
                        reading = false;
                        pending.clear();
                        break;
                    }
                }
                writer.flush().await?;
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
            }
            incoming = rx.recv(), if reading && room => match incoming {
                None => reading = false,
                Some(Incoming::Refused(reason, detail)) => {
                    closing = Some((reason, detail));
                    reading = false;
                }
                Some(Incoming::Frame(frame)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    let len = frame.len();
                    in_flight_bytes += len;
                    let reply = Box::pin(dispatch(node, session, frame)).await;
                    pending.push_back(Box::pin(async move { (len, reply.await) }));
                }
            },
            () = drained(&mut draining), if reading => {
                // Shutting down: answer what is in progress, then close.
                reading = false;
            }
            () = &mut idle, if reading && pending.is_empty() => {
                node.connections.metrics.idle_closed.inc();
                tracing::debug!(%peer, idle_ms = idle_timeout.as_millis(), "closing idle connection (connections-max-idle-ms)");
                reading = false;
            }
        }
    }
}

/// Resolves once the listener drains (the guard `wait_for` returns must
/// not live across the connection's awaits).
async fn drained(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// Writes one reply; false when the connection must close.
async fn write_reply<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    reply: Reply,
    closing: &mut Option<(&'static str, String)>,
) -> std::io::Result<bool> {
    match reply {
        Reply::Chunks(chunks) => {
            // Big chunks (fetched records) bypass the write buffer.
            for chunk in chunks {
                writer.write_all(&chunk).await?;
            }
            Ok(true)
        }
        Reply::Nothing => Ok(true),
        Reply::Close(reason, detail) => {
            *closing = Some((reason, detail));
            Ok(false)
        }
        Reply::Last(chunks, reason, detail) => {
            for chunk in chunks {
                writer.write_all(&chunk).await?;
            }
            *closing = Some((reason, detail));
            Ok(false)
        }
    }
}

/// Runs one request's ordered part and returns what produces its reply.
async fn dispatch<'a>(
    node: &'a Listener,
    session: &'a Session,
    frame: Bytes,
) -> BoxFuture<'a, Reply> {
    let ready = |r: Reply| -> BoxFuture<'a, Reply> { Box::pin(std::future::ready(r)) };
    let private = if rpc::is_quorum_frame(&frame) {
        Some("Quorum")
    } else if protocol::is_forwarded_produce(&frame) {
        Some("ForwardedProduce")
    } else {
        None
    };
    if let Some(request) = private
        && !session.inter_broker
    {
        // Brokers' private APIs: nothing but a peer on the inter-broker
        // listener may vote, propose metadata changes or forward records.
        node.connections
            .metrics
            .inter_broker_refused
            .with_label_values(&[&session.listener, request])
            .inc();
        return ready(Reply::Close(
            "inter_broker_request_on_client_listener",
            format!(
                "{request} request on listener {}, which is not the inter-broker listener",
                session.listener
            ),
        ));
    }
    if rpc::is_quorum_frame(&frame) {
        let out = node.quorum.handle_frame(&frame).await;
        return ready(Reply::Chunks(vec![Bytes::from(out)]));
    }
    // A connection opened before the broker joined the cluster picks it up
    // as soon as it is there.
    let Some(broker) = node.broker.get() else {
        return ready(Reply::Close(
            "starting",
            "broker is still joining the cluster; retry shortly".into(),
        ));
    };
    if protocol::is_forwarded_produce(&frame) {
        let (correlation, req) = match protocol::decode_forwarded_produce(frame) {
            Ok(r) => r,
            Err(FrameError::Close { reason, detail }) => {
                return ready(Reply::Close(reason, detail));
            }
            Err(FrameError::Respond(bytes)) => return ready(Reply::Chunks(vec![bytes])),
        };
        let started = Instant::now();
        let pending = api::handle_forwarded_produce(broker, req).await;
        return Box::pin(async move {
            let resp = pending.await;
            broker
                .metrics
                .request_seconds
                .with_label_values(&["ForwardedProduce"])
                .observe(started.elapsed().as_secs_f64());
            match protocol::encode_forwarded_produce_response(correlation, &resp) {
                Ok(bytes) => Reply::Chunks(vec![bytes]),
                Err(e) => Reply::Close(
                    "encode_failed",
                    format!("could not encode a forwarded produce response: {e}"),
                ),
            }
        });
    }
    let request = match protocol::decode_request(frame) {
        Ok(r) => r,
        Err(FrameError::Respond(bytes)) => return ready(Reply::Chunks(vec![bytes])),
        Err(FrameError::Close { reason, detail }) => return ready(Reply::Close(reason, detail)),
    };
    let api_key = request.api_key;
    if !session.admits(api_key) {
        let (reason, when) = if session.sasl_session_expired() {
            (
                "sasl_session_expired",
                "after the SASL session expired without re-authentication (connections-max-reauth-ms)",
            )
        } else {
            ("sasl_authentication_required", "before SASL authentication")
        };
        return ready(Reply::Close(
            reason,
            format!("{api_key:?} {when} on listener {}", session.listener),
        ));
    }
    let version = request.version;
    let correlation_id = request.header.correlation_id;
    let started = Instant::now();
    let refused = &node.connections.metrics.inter_broker_refused;
    let pending = match api::inter_broker::refusal(session, &request, &broker.metrics, refused) {
        Some(refusal) => Box::pin(std::future::ready(api::Answer::Respond(refusal))),
        None => api::handle(broker, session, request).await,
    };
    // A failed SASL exchange closes the connection after its own answer
    // (decided now: the SASL handlers run in the ordered part).
    let sasl_failed = session.auth_failed();
    Box::pin(async move {
        let response = pending.await;
        let api_name = format!("{api_key:?}");
        broker
            .metrics
            .requests
            .with_label_values(&[&api_name])
            .inc();
        broker
            .metrics
            .request_seconds
            .with_label_values(&[&api_name])
            .observe(started.elapsed().as_secs_f64());
        let body = match response {
            api::Answer::Respond(body) => body,
            api::Answer::Nothing => return Reply::Nothing,
            api::Answer::Close(detail) => return Reply::Close("acks0_produce_error", detail),
        };
        match protocol::encode_response_chunks(api_key, version, correlation_id, &body) {
            // A failed SASL exchange: the answer, then the connection closes.
            Ok(chunks) if sasl_failed => Reply::Last(
                chunks,
                "sasl_authentication_failed",
                format!(
                    "SASL authentication failed on listener {}",
                    session.listener
                ),
            ),
            Ok(chunks) => Reply::Chunks(chunks),
            Err(e) => Reply::Close(
                "encode_failed",
                format!("could not encode {api_name} v{version} response: {e}"),
            ),
        }
    })
}

/// Reads length-prefixed frames and hands them over, until the client
/// closes or sends something unusable. A declared length is a limit, not an
/// allocation: the buffer grows fourfold as the bytes arrive (so a frame in
/// progress holds at most about four times what has arrived, plus
/// `READ_CHUNK`), except up to the largest frame this connection has
/// already delivered in full, which gets its whole buffer at once (a
/// producer's steady stream of 1 MB requests is read without copies).
async fn read_frames<R: AsyncRead + Unpin>(
    mut rd: R,
    limit: Arc<std::sync::atomic::AtomicUsize>,
    tx: tokio::sync::mpsc::Sender<Incoming>,
) {
    let mut buf = BytesMut::new();
    let mut proven = 0usize;
    loop {
        match fill(&mut rd, &mut buf, 4, 0).await {
            Ok(true) => {}
            // EOF or a reset between frames: the connection is over.
            Ok(false) | Err(_) => return,
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let max = limit.load(std::sync::atomic::Ordering::Relaxed);
        if len < 0 || len as usize > max {
            let _ = tx
                .send(Incoming::Refused(
                    "bad_frame_length",
                    format!(
                        "frame length {len} is outside 0..={max} (max-request-bytes; 512 KiB before SASL authentication)"
                    ),
                ))
                .await;
            return;
        }
        let len = len as usize;
        let body = fill(&mut rd, &mut buf, 4 + len, proven);
        let refusal = match tokio::time::timeout(FRAME_BODY_TIMEOUT, body).await {
            Err(_) => Some((
                "slow_frame",
                format!(
                    "a {len}-byte frame did not arrive within {}s",
                    FRAME_BODY_TIMEOUT.as_secs()
                ),
            )),
            Ok(Err(_)) => return,
            Ok(Ok(false)) => Some((
                "truncated_frame",
                format!(
                    "connection closed after {} of {len} frame bytes",
                    buf.len().saturating_sub(4)
                ),
            )),
            Ok(Ok(true)) => None,
        };
        let incoming = match refusal {
            Some((reason, detail)) => Incoming::Refused(reason, detail),
            None => {
                buf.advance(4);
                proven = proven.max(len);
                Incoming::Frame(buf.split_to(len).freeze())
            }
        };
        let last = matches!(incoming, Incoming::Refused(..));
        if tx.send(incoming).await.is_err() || last {
            return;
        }
    }
}

/// Reads until `buf` holds `need` bytes; false on EOF first. Room is added
/// as described at `read_frames`.
async fn fill<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    need: usize,
    proven: usize,
) -> std::io::Result<bool> {
    while buf.len() < need {
        if buf.capacity() == buf.len() {
            // (Reading ahead into the next frame is fine: the buffer is kept.)
            let target = if need > 4 && need - 4 <= proven {
                need
            } else {
                need.max(READ_CHUNK).min((buf.len() * 4).max(READ_CHUNK))
            };
            buf.reserve(target - buf.len());
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}
