//! The Kafka listener: one task per connection, frames read with a bounded
//! size, requests answered strictly in order (a produce's appends happen in
//! order; its wait for the followers may overlap the next requests, see
//! `PIPELINE`). Anything unusable a client
//! sends closes that connection with a logged reason; other clients never
//! notice. Quorum traffic from peer brokers shares the listener (see
//! `cluster::quorum::rpc`) and is served from the start, before this
//! broker has joined the cluster; Kafka clients are served once it has.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::api;
use crate::broker::Broker;
use sluice_metadata::quorum::{Quorum, rpc};
use sluice_protocol::{self as protocol, FrameError};

/// What the listener serves: the quorum at once, the broker once open.
pub struct Listener {
    pub quorum: Arc<Quorum>,
    pub broker: OnceLock<Arc<Broker>>,
    pub max_request_bytes: usize,
}

/// Once a length prefix has arrived, the rest of the frame must follow within
/// this time; a client that stalls mid-frame holds buffers and a task.
const FRAME_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn serve(node: Arc<Listener>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    let broker = node.broker.get().cloned();
                    if let Some(b) = &broker {
                        b.metrics.connections_active.inc();
                        b.metrics.connections_total.inc();
                    }
                    if let Err(e) = connection(&node, stream, peer).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an I/O error");
                    }
                    if let Some(b) = &broker {
                        b.metrics.connections_active.dec();
                    }
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
}

/// Aborts a task when dropped (the connection's frame reader).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connection(node: &Listener, stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut writer = BufWriter::with_capacity(64 * 1024, wr);
    // Capacity 1: the reader holds at most one frame the connection has not
    // taken yet; `PIPELINE` and `PIPELINE_BYTES` bound the rest.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let _reader = AbortOnDrop(tokio::spawn(read_frames(
        BufReader::with_capacity(64 * 1024, rd),
        node.max_request_bytes,
        tx,
    )));
    let mut pending: FuturesOrdered<BoxFuture<'_, (usize, Reply)>> = FuturesOrdered::new();
    let mut in_flight_bytes = 0usize;
    let mut reading = true;
    let mut closing: Option<(&'static str, String)> = None;
    loop {
        if !reading && pending.is_empty() {
            writer.flush().await?;
            return match closing {
                Some((reason, detail)) => close(node.broker.get(), peer, reason, detail),
                None => Ok(()),
            };
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
            }
            incoming = rx.recv(), if reading && room => match incoming {
                None => reading = false,
                Some(Incoming::Refused(reason, detail)) => {
                    closing = Some((reason, detail));
                    reading = false;
                }
                Some(Incoming::Frame(frame)) => {
                    let len = frame.len();
                    in_flight_bytes += len;
                    let reply = dispatch(node, peer, frame).await;
                    pending.push_back(Box::pin(async move { (len, reply.await) }));
                }
            },
        }
    }
}

/// Writes one reply; false when the connection must close.
async fn write_reply(
    writer: &mut BufWriter<tokio::net::tcp::OwnedWriteHalf>,
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
    }
}

/// Runs one request's ordered part and returns what produces its reply.
async fn dispatch<'a>(node: &'a Listener, peer: SocketAddr, frame: Bytes) -> BoxFuture<'a, Reply> {
    let ready = |r: Reply| -> BoxFuture<'a, Reply> { Box::pin(std::future::ready(r)) };
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
    let version = request.version;
    let correlation_id = request.header.correlation_id;
    let started = Instant::now();
    let pending = api::handle(broker, peer, request).await;
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
        let Some(body) = response else {
            return Reply::Nothing;
        };
        match protocol::encode_response_chunks(api_key, version, correlation_id, &body) {
            Ok(chunks) => Reply::Chunks(chunks),
            Err(e) => Reply::Close(
                "encode_failed",
                format!("could not encode {api_name} v{version} response: {e}"),
            ),
        }
    })
}

/// Reads length-prefixed frames and hands them over, until the client
/// closes or sends something unusable.
async fn read_frames(
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    max: usize,
    tx: tokio::sync::mpsc::Sender<Incoming>,
) {
    loop {
        let len = match reader.read_i32().await {
            Ok(n) => n,
            // EOF or a reset: the connection is over.
            Err(_) => return,
        };
        if len < 0 || len as usize > max {
            let _ = tx
                .send(Incoming::Refused(
                    "bad_frame_length",
                    format!("frame length {len} is outside 0..={max} (max-request-bytes)"),
                ))
                .await;
            return;
        }
        // Grow the buffer as bytes arrive rather than trusting the prefix
        // with an up-front allocation.
        let mut frame = BytesMut::new();
        let mut limited = (&mut reader).take(len as u64);
        let body = limited.read_buf_exact(&mut frame, len as usize);
        let refusal = match tokio::time::timeout(FRAME_BODY_TIMEOUT, body).await {
            Err(_) => Some((
                "slow_frame",
                format!(
                    "a {len}-byte frame did not arrive within {}s",
                    FRAME_BODY_TIMEOUT.as_secs()
                ),
            )),
            Ok(Err(_)) => return,
            Ok(Ok(got)) if got < len as usize => Some((
                "truncated_frame",
                format!("connection closed after {got} of {len} frame bytes"),
            )),
            Ok(Ok(_)) => None,
        };
        let incoming = match refusal {
            Some((reason, detail)) => Incoming::Refused(reason, detail),
            None => Incoming::Frame(frame.freeze()),
        };
        let last = matches!(incoming, Incoming::Refused(..));
        if tx.send(incoming).await.is_err() || last {
            return;
        }
    }
}

fn close(
    broker: Option<&Arc<Broker>>,
    peer: SocketAddr,
    reason: &'static str,
    detail: String,
) -> std::io::Result<()> {
    if let Some(b) = broker {
        b.metrics
            .connections_closed_bad_input
            .with_label_values(&[reason])
            .inc();
    }
    tracing::warn!(%peer, reason, "closing connection: {detail}");
    Ok(())
}

/// `AsyncReadExt::take` + read until `len` bytes or EOF.
trait ReadBufExact {
    async fn read_buf_exact(&mut self, buf: &mut BytesMut, len: usize) -> std::io::Result<usize>;
}

impl<R: tokio::io::AsyncRead + Unpin> ReadBufExact for tokio::io::Take<R> {
    async fn read_buf_exact(&mut self, buf: &mut BytesMut, len: usize) -> std::io::Result<usize> {
        while buf.len() < len {
            buf.reserve((len - buf.len()).min(1 << 20));
            if self.read_buf(buf).await? == 0 {
                break;
            }
        }
        Ok(buf.len())
    }
}
