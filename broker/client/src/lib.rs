//! The one internal Kafka-protocol client of Sluice: what a broker uses to
//! talk to another broker (follower fetches, forwarded produce, controller
//! quorum traffic), and what the operator, the benchmark and the tests use
//! to speak Kafka to a broker without a full client library.
//!
//! A [`Connection`] is one TCP connection carrying many requests at once:
//! requests are written in order and their responses matched back by
//! correlation id, so callers on different tasks share it without waiting
//! for each other (the server answers in order; a slow request, like a
//! long-polling fetch, does delay the ones behind it, so give those their
//! own connection). A [`Pool`] keeps one connection per peer and reopens
//! it after a failure, so steady traffic costs no new connections and no
//! DNS lookups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub mod admin;
pub mod sasl;
pub mod tls;
pub use tls::Transport;

/// A connection's halves: plain TCP or TLS over it.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Largest response frame accepted (a fetch may carry tens of megabytes).
pub const MAX_RESPONSE_BYTES: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to {0} closed")]
    Closed(String),
    #[error("{addr}: no response within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: malformed response: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("encoding request: {0}")]
    Encode(String),
    #[error("no address known for broker {0}")]
    UnknownPeer(i32),
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// Did the connection fail (as opposed to one request)? Then it is
    /// dropped and the next call reconnects.
    pub fn is_connection_error(&self) -> bool {
        !matches!(self, ClientError::Encode(_) | ClientError::UnknownPeer(_))
    }
}

type Pending = Arc<Mutex<HashMap<i32, oneshot::Sender<Result<Bytes, ClientError>>>>>;

/// One pipelined connection to a Kafka-protocol server.
pub struct Connection {
    addr: String,
    client_id: StrBytes,
    writer: tokio::sync::Mutex<WriteHalf>,
    pending: Pending,
    correlation: AtomicI32,
    closed: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Opens a plain TCP connection to `addr` (`host:port`), giving up
    /// after `timeout`.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        Self::open(addr, client_id, timeout, &Transport::Plain).await
    }

    /// Opens a connection to `addr` over `transport` (the TLS handshake
    /// included), giving up after `timeout`.
    pub async fn open(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        transport: &Transport,
    ) -> Result<Connection, ClientError> {
        let (rd, wr) = match tokio::time::timeout(timeout, open_stream(addr, transport)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: addr.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("not connected within {timeout:?}"),
                    ),
                });
            }
        };
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_responses(
            rd,
            addr.to_string(),
            pending.clone(),
            closed.clone(),
        ));
        Ok(Connection {
            addr: addr.to_string(),
            client_id: StrBytes::from_string(client_id.to_string()),
            writer: tokio::sync::Mutex::new(wr),
            pending,
            correlation: AtomicI32::new(0),
            closed,
            reader,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// False once the connection failed; a [`Pool`] then opens a new one.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Sends `req` as API version `version` and waits for its response.
    pub async fn send<R: Request>(
        &self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        self.send_as(R::KEY, req, version, timeout).await
    }

    /// Like `send`, under another API key: Sluice's private inter-broker
    /// APIs reuse Kafka message bodies (a forwarded produce is a Produce
    /// request body under its own key).
    pub async fn send_as<R: Request>(
        &self,
        api_key: i16,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let mut body = BytesMut::new();
        req.encode(&mut body, version)
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        let mut frame = self
            .call(
                api_key,
                version,
                R::header_version(version),
                body.freeze(),
                timeout,
            )
            .await?;
        let protocol = |detail: String| ClientError::Protocol {
            addr: self.addr.clone(),
            detail,
        };
        ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .map_err(|e| protocol(e.to_string()))?;
        R::Response::decode(&mut frame, version).map_err(|e| protocol(e.to_string()))
    }

    /// Sends one request whose body is already encoded, with a request
    /// header of `header_version`; returns the response frame after its
    /// correlation id (the rest of the response header, if any, is the
    /// caller's to decode).
    pub async fn send_raw(
        &self,
        api_key: i16,
        version: i16,
        header_version: i16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let mut frame = self
            .call(api_key, version, header_version, body, timeout)
            .await?;
        frame.advance(4);
        Ok(frame)
    }

    /// Writes one request and returns its whole response frame (correlation
    /// id included).
    async fn call(
        &self,
        api_key: i16,
        version: i16,
        header_version: i16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        if !self.is_open() {
            return Err(ClientError::Closed(self.addr.clone()));
        }
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed);
        let mut header = RequestHeader::default();
        header.request_api_key = api_key;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(self.client_id.clone());
        let mut head = BytesMut::with_capacity(64);
        head.put_i32(0);
        if header_version == 0 {
            // Kafka's request header v0 (no client id); kafka-protocol no
            // longer encodes it, but Sluice's quorum frames use it.
            head.put_i16(api_key);
            head.put_i16(version);
            head.put_i32(correlation);
        } else {
            header
                .encode(&mut head, header_version)
                .map_err(|e| ClientError::Encode(e.to_string()))?;
        }
        let len = i32::try_from(head.len() - 4 + body.len())
            .map_err(|_| ClientError::Encode(format!("a {}-byte request", body.len())))?;
        head[..4].copy_from_slice(&len.to_be_bytes());
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(correlation, tx);
        // Forget the waiter however this call ends (timeout, error, drop).
        let _cleanup = Forget {
            pending: &self.pending,
            correlation,
        };
        let write = async {
            let mut w = self.writer.lock().await;
            w.write_all(&head).await?;
            w.write_all(&body).await?;
            w.flush().await
        };
        let exchange = async {
            if let Err(source) = write.await {
                self.closed.store(true, Ordering::Release);
                return Err(ClientError::Io {
                    addr: self.addr.clone(),
                    source,
                });
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Closed(self.addr.clone())),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        }
    }
}

/// TCP to `addr`, then the TLS handshake if `transport` asks for it.
async fn open_stream(
    addr: &str,
    transport: &Transport,
) -> Result<(ReadHalf, WriteHalf), ClientError> {
    let io = |source| ClientError::Io {
        addr: addr.to_string(),
        source,
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    stream.set_nodelay(true).map_err(io)?;
    match transport {
        Transport::Plain => {
            let (rd, wr) = stream.into_split();
            Ok((Box::new(rd), Box::new(wr)))
        }
        Transport::Tls(config) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                ClientError::Tls {
                    addr: addr.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                }
            })?;
            let tls = tokio_rustls::TlsConnector::from(config.current())
                .connect(name, stream)
                .await
                .map_err(|source| ClientError::Tls {
                    addr: addr.to_string(),
                    source,
                })?;
            let (rd, wr) = tokio::io::split(tls);
            Ok((Box::new(rd), Box::new(wr)))
        }
    }
}

/// Removes a waiter from the pending map when its call ends.
struct Forget<'a> {
    pending: &'a Pending,
    correlation: i32,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.correlation);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a `len`-byte frame into fresh capacity: no zero-filling first
/// (follower fetch responses run to megabytes).
async fn read_frame(rd: &mut ReadHalf, len: usize) -> std::io::Result<Bytes> {
    let mut frame = BytesMut::with_capacity(len);
    while frame.len() < len {
        let want = (len - frame.len()) as u64;
        if (&mut *rd).take(want).read_buf(&mut frame).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(frame.freeze())
}

/// Reads response frames and hands each to the call waiting for its
/// correlation id. On any failure every waiting call gets the error and
/// the connection is marked closed.
async fn read_responses(mut rd: ReadHalf, addr: String, pending: Pending, closed: Arc<AtomicBool>) {
    let failure = loop {
        let len = match rd.read_i32().await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break ClientError::Closed(addr.clone());
            }
            Err(source) => {
                break ClientError::Io {
                    addr: addr.clone(),
                    source,
                };
            }
        };
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|l| (4..=MAX_RESPONSE_BYTES).contains(l))
        else {
            break ClientError::Protocol {
                addr: addr.clone(),
                detail: format!("response length {len}"),
            };
        };
        let frame = match read_frame(&mut rd, len).await {
            Ok(frame) => frame,
            Err(source) => {
                break ClientError::Io {
                    addr: addr.clone(),
                    source,
                };
            }
        };
        let correlation = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        // A waiter that timed out is gone: its late response is dropped.
        if let Some(tx) = lock(&pending).remove(&correlation) {
            let _ = tx.send(Ok(frame));
        }
    };
    closed.store(true, Ordering::Release);
    tracing::debug!(%addr, error = %failure, "connection closed");
    for (_, tx) in lock(&pending).drain() {
        let _ = tx.send(Err(match &failure {
            ClientError::Io { addr, source } => ClientError::Io {
                addr: addr.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            ClientError::Protocol { addr, detail } => ClientError::Protocol {
                addr: addr.clone(),
                detail: detail.clone(),
            },
            _ => ClientError::Closed(addr.clone()),
        }));
    }
}

/// How a pool finds a peer's address (re-asked at every reconnect, so a
/// peer that moved is found again).
pub type Resolve = Arc<dyn Fn(i32) -> Option<String> + Send + Sync>;

/// A peer's connection, if open; locked while (re)connecting.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// One persistent connection per peer, opened on first use and reopened
/// after a failure.
pub struct Pool {
    client_id: String,
    resolve: Resolve,
    transport: Transport,
    connect_timeout: Duration,
    peers: Mutex<HashMap<i32, Slot>>,
}

impl Pool {
    pub fn new(client_id: impl Into<String>, resolve: Resolve, connect_timeout: Duration) -> Pool {
        Pool {
            client_id: client_id.into(),
            resolve,
            transport: Transport::Plain,
            connect_timeout,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Connects over `transport` (TLS to an inter-broker listener).
    pub fn with_transport(mut self, transport: Transport) -> Pool {
        self.transport = transport;
        self
    }

    /// The open connection to `peer`, connecting if there is none.
    pub async fn get(&self, peer: i32) -> Result<Arc<Connection>, ClientError> {
        let slot = lock(&self.peers).entry(peer).or_default().clone();
        // One connect at a time per peer; callers that find it open go on.
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let addr = (self.resolve)(peer).ok_or(ClientError::UnknownPeer(peer))?;
        let conn = Arc::new(
            Connection::open(
                &addr,
                &self.client_id,
                self.connect_timeout,
                &self.transport,
            )
            .await?,
        );
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection to `peer` (after an error that may have left it
    /// unusable); the next `get` reconnects.
    pub async fn reset(&self, peer: i32) {
        let slot = lock(&self.peers).get(&peer).cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ResponseHeader;
    use tokio::net::TcpListener;

    /// A server that answers every request with its correlation id and the
    /// request's body reversed: many concurrent calls on one pipelined
    /// connection each get their own answer.
    #[tokio::test]
    async fn concurrent_calls_share_one_connection_and_get_their_own_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = s.read_i32().await else { return };
                        let mut frame = vec![0u8; len as usize];
                        if s.read_exact(&mut frame).await.is_err() {
                            return;
                        }
                        let mut buf = Bytes::from(frame);
                        let header = RequestHeader::decode(&mut buf, 1).expect("header");
                        let mut out = BytesMut::new();
                        out.put_i32(0);
                        let mut rh = ResponseHeader::default();
                        rh.correlation_id = header.correlation_id;
                        rh.encode(&mut out, 0).expect("encode");
                        out.extend(buf.iter().rev());
                        let n = (out.len() - 4) as i32;
                        out[..4].copy_from_slice(&n.to_be_bytes());
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let resolve: Resolve = Arc::new(move |_| Some(addr.clone()));
        let pool = Arc::new(Pool::new("test", resolve, Duration::from_secs(1)));
        let mut calls = Vec::new();
        for i in 0..50u8 {
            let pool = pool.clone();
            calls.push(tokio::spawn(async move {
                let conn = pool.get(7).await.expect("connect");
                let body = Bytes::from(vec![i, 1, 2]);
                let answer = conn
                    .send_raw(18, 0, 1, body, Duration::from_secs(5))
                    .await
                    .expect("answer");
                assert_eq!(&answer[..], &[2, 1, i]);
            }));
        }
        for c in calls {
            c.await.expect("call");
        }
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            1,
            "one connection for all"
        );
    }

    #[tokio::test]
    async fn a_dead_peer_fails_pending_calls_and_the_pool_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Accept and hang up at once, twice.
        tokio::spawn(async move {
            for _ in 0..2 {
                if let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            }
        });
        let resolve: Resolve = Arc::new(move |_| Some(addr.clone()));
        let pool = Pool::new("test", resolve, Duration::from_secs(1));
        let first = pool.get(1).await.expect("connect");
        let err = first
            .send_raw(18, 0, 1, Bytes::new(), Duration::from_secs(5))
            .await
            .expect_err("peer hung up");
        assert!(err.is_connection_error(), "{err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_open());
        let second = pool.get(1).await.expect("reconnect");
        assert!(!Arc::ptr_eq(&first, &second));
    }
}
