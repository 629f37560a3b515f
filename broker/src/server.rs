//! The Kafka listener: one task per connection, frames read with a bounded
//! size, requests answered strictly in order. Anything unusable a client
//! sends closes that connection with a logged reason; other clients never
//! notice. Quorum traffic from peer brokers shares the listener (see
//! `cluster::quorum::rpc`) and is served from the start, before this
//! broker has joined the cluster; Kafka clients are served once it has.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::api;
use crate::broker::Broker;
use crate::cluster::quorum::{Quorum, rpc};
use crate::protocol::{self, FrameError};

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

async fn connection(node: &Listener, stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, rd);
    let mut writer = BufWriter::with_capacity(64 * 1024, wr);
    let max = node.max_request_bytes;
    let broker = node.broker.get();
    loop {
        let len = match reader.read_i32().await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if len < 0 || len as usize > max {
            return close(
                broker,
                peer,
                "bad_frame_length",
                format!("frame length {len} is outside 0..={max} (max-request-bytes)"),
            );
        }
        // Grow the buffer as bytes arrive rather than trusting the prefix
        // with an up-front allocation.
        let mut frame = BytesMut::new();
        let mut limited = (&mut reader).take(len as u64);
        let body = limited.read_buf_exact(&mut frame, len as usize);
        let Ok(got) = tokio::time::timeout(FRAME_BODY_TIMEOUT, body).await else {
            return close(
                broker,
                peer,
                "slow_frame",
                format!(
                    "a {len}-byte frame did not arrive within {}s",
                    FRAME_BODY_TIMEOUT.as_secs()
                ),
            );
        };
        let got = got?;
        if got < len as usize {
            return close(
                broker,
                peer,
                "truncated_frame",
                format!("connection closed after {got} of {len} frame bytes"),
            );
        }
        let frame: Bytes = frame.freeze();
        if rpc::is_quorum_frame(&frame) {
            let out = node.quorum.handle_frame(&frame).await;
            writer.write_all(&out).await?;
            writer.flush().await?;
            continue;
        }
        // A connection opened before the broker joined the cluster picks
        // it up as soon as it is there.
        let Some(broker) = broker.or_else(|| node.broker.get()) else {
            return close(
                None,
                peer,
                "starting",
                "broker is still joining the cluster; retry shortly".into(),
            );
        };
        if protocol::is_forwarded_produce(&frame) {
            let (correlation, req) = match protocol::decode_forwarded_produce(frame) {
                Ok(r) => r,
                Err(FrameError::Close { reason, detail }) => {
                    return close(Some(broker), peer, reason, detail);
                }
                Err(FrameError::Respond(bytes)) => {
                    writer.write_all(&bytes).await?;
                    writer.flush().await?;
                    continue;
                }
            };
            let started = Instant::now();
            let resp = api::handle_forwarded_produce(broker, req).await;
            broker
                .metrics
                .request_seconds
                .with_label_values(&["ForwardedProduce"])
                .observe(started.elapsed().as_secs_f64());
            match protocol::encode_forwarded_produce_response(correlation, &resp) {
                Ok(bytes) => writer.write_all(&bytes).await?,
                Err(e) => {
                    return close(
                        Some(broker),
                        peer,
                        "encode_failed",
                        format!("could not encode a forwarded produce response: {e}"),
                    );
                }
            }
            if reader.buffer().is_empty() {
                writer.flush().await?;
            }
            continue;
        }
        let request = match protocol::decode_request(frame) {
            Ok(r) => r,
            Err(FrameError::Respond(bytes)) => {
                writer.write_all(&bytes).await?;
                writer.flush().await?;
                continue;
            }
            Err(FrameError::Close { reason, detail }) => {
                return close(Some(broker), peer, reason, detail);
            }
        };
        let api_key = request.api_key;
        let version = request.version;
        let correlation_id = request.header.correlation_id;
        let api_name = format!("{api_key:?}");
        let started = Instant::now();
        let response = api::handle(broker, peer, request).await;
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
        let Some(body) = response else { continue };
        match protocol::encode_response_chunks(api_key, version, correlation_id, &body) {
            Ok(chunks) => {
                // Big chunks (fetched records) bypass the write buffer.
                for chunk in chunks {
                    writer.write_all(&chunk).await?;
                }
            }
            Err(e) => {
                return close(
                    Some(broker),
                    peer,
                    "encode_failed",
                    format!("could not encode {api_name} v{version} response: {e}"),
                );
            }
        }
        // Pipelined requests already buffered get answered before one flush.
        if reader.buffer().is_empty() {
            writer.flush().await?;
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
