//! A fault-injecting TCP proxy for Kafka connections.
//!
//! The proxy listens on `127.0.0.1:0` and forwards every accepted connection
//! to a target broker address (which can be changed at run time, e.g. after
//! [`crate::Broker::restart`] moved the broker to new ports). It understands
//! just enough of the Kafka framing (4-byte size prefix; request header
//! `api_key`, `api_version`, `correlation_id`; response header
//! `correlation_id`) to inject faults around Produce requests:
//!
//! * **dropped response**: the Produce request is forwarded, the broker
//!   processes it, and the proxy reads the matching response, discards it
//!   and cuts the connection. The client must retry a batch the broker has
//!   already written: the case idempotent producers exist for.
//! * **cut request**: the proxy forwards only a prefix (possibly empty) of a
//!   Produce request and cuts the connection, so the broker never sees it.
//!
//! Decisions come from a seeded xorshift generator, so a given seed yields
//! the same sequence of decisions (the interleaving of connections may still
//! vary between runs). To force every client connection through the proxy,
//! start the broker with `--advertised-listen <proxy address>`: see
//! [`start_broker_behind_proxy`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::Broker;

/// Kafka API key of Produce requests.
const PRODUCE_API_KEY: i16 = 0;

/// Which faults to inject, and how often.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Seed of the decision generator.
    pub seed: u64,
    /// Probability that a Produce request's response is swallowed and the
    /// connection cut after the broker processed the request.
    pub drop_produce_response: f64,
    /// Probability that a Produce request is truncated (or not forwarded at
    /// all) and the connection cut before the broker sees all of it.
    pub cut_produce_request: f64,
    /// Stop injecting faults after this many (the run must be able to end).
    pub max_faults: u64,
}

impl FaultConfig {
    /// A proxy that forwards everything untouched.
    pub fn none() -> FaultConfig {
        FaultConfig {
            seed: 1,
            drop_produce_response: 0.0,
            cut_produce_request: 0.0,
            max_faults: 0,
        }
    }
}

/// Counters of what the proxy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Connections for which the target could not be reached.
    pub connect_failures: u64,
    /// Connections closed on accept because the proxy was paused.
    pub refused_while_paused: u64,
    /// Request frames seen (client → broker).
    pub requests: u64,
    /// Produce request frames seen.
    pub produce_requests: u64,
    /// Produce responses read from the broker and discarded.
    pub responses_dropped: u64,
    /// Produce requests cut short before the broker received all of them.
    pub requests_cut: u64,
}

impl ProxyStats {
    /// Faults injected of either kind.
    pub fn faults(&self) -> u64 {
        self.responses_dropped + self.requests_cut
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    connect_failures: AtomicU64,
    refused_while_paused: AtomicU64,
    requests: AtomicU64,
    produce_requests: AtomicU64,
    responses_dropped: AtomicU64,
    requests_cut: AtomicU64,
}

/// Tiny xorshift64* generator: deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What to do with one Produce request.
enum Decision {
    Forward,
    DropResponse,
    /// Forward this many bytes of the frame (size prefix included), then cut.
    Cut(usize),
}

struct Shared {
    target: Mutex<Option<SocketAddr>>,
    config: FaultConfig,
    rng: Mutex<XorShift>,
    enabled: AtomicBool,
    paused: AtomicBool,
    /// Woken to cut every open connection (see `set_isolated`).
    cut: tokio::sync::Notify,
    counters: Counters,
}

impl Shared {
    fn decide(&self, frame_len: usize) -> Decision {
        if !self.enabled.load(Ordering::SeqCst) {
            return Decision::Forward;
        }
        let injected = self.counters.responses_dropped.load(Ordering::SeqCst)
            + self.counters.requests_cut.load(Ordering::SeqCst);
        if injected >= self.config.max_faults {
            return Decision::Forward;
        }
        let Ok(mut rng) = self.rng.lock() else {
            return Decision::Forward;
        };
        let roll = rng.next_f64();
        if roll < self.config.drop_produce_response {
            Decision::DropResponse
        } else if roll < self.config.drop_produce_response + self.config.cut_produce_request {
            Decision::Cut((rng.next_u64() % frame_len.max(1) as u64) as usize)
        } else {
            Decision::Forward
        }
    }
}

/// A running proxy. Dropping it stops accepting and closes all connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` with no target yet (connections are
    /// closed until [`FaultProxy::set_target`] is called).
    pub fn start(config: FaultConfig) -> Result<FaultProxy> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy listener")?;
        std_listener
            .set_nonblocking(true)
            .context("cannot make the proxy listener non-blocking")?;
        let addr = std_listener
            .local_addr()
            .context("cannot read the proxy address")?;
        let shared = Arc::new(Shared {
            target: Mutex::new(None),
            rng: Mutex::new(XorShift::new(config.seed)),
            config,
            enabled: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            cut: tokio::sync::Notify::new(),
            counters: Counters::default(),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot build the proxy runtime")?;
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-fault-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fault proxy: cannot register listener: {e}");
                            return;
                        }
                    };
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            let shared = task_shared.clone();
                            tokio::spawn(handle_connection(client, shared));
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = rx => {}
                    }
                });
                // Dropping the runtime here cancels every connection task,
                // which closes their sockets.
            })
            .context("cannot spawn the proxy thread")?;
        Ok(FaultProxy {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` of the proxy, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Where new connections are forwarded to. Existing connections keep
    /// their old upstream.
    pub fn set_target(&self, target: SocketAddr) {
        if let Ok(mut t) = self.shared.target.lock() {
            *t = Some(target);
        }
    }

    /// Turns fault injection on or off (forwarding continues either way).
    pub fn set_faults_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::SeqCst);
    }

    /// While paused, new connections are closed as soon as they are
    /// accepted (existing ones keep flowing): clients cannot reach the
    /// broker again until [`FaultProxy::set_paused`]`(false)`.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    /// A network partition: while isolated, open connections are cut and
    /// new ones refused, in both directions of this link.
    pub fn set_isolated(&self, isolated: bool) {
        self.shared.paused.store(isolated, Ordering::SeqCst);
        if isolated {
            self.shared.cut.notify_waiters();
        }
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::SeqCst),
            connect_failures: c.connect_failures.load(Ordering::SeqCst),
            refused_while_paused: c.refused_while_paused.load(Ordering::SeqCst),
            requests: c.requests.load(Ordering::SeqCst),
            produce_requests: c.produce_requests.load(Ordering::SeqCst),
            responses_dropped: c.responses_dropped.load(Ordering::SeqCst),
            requests_cut: c.requests_cut.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a proxy, then a broker that advertises the proxy's address (so
/// every client connection, including those opened after Metadata, goes
/// through the proxy), and points the proxy at the broker.
///
/// After [`Broker::restart`], call `proxy.set_target(broker.kafka_addr())`:
/// the broker keeps advertising the proxy, whose port does not change.
pub fn start_broker_behind_proxy(
    config: FaultConfig,
    extra_args: &[&str],
) -> Result<(Broker, FaultProxy)> {
    let proxy = FaultProxy::start(config)?;
    let advertised = proxy.bootstrap();
    let mut args: Vec<&str> = vec!["--advertised-listen", &advertised];
    args.extend_from_slice(extra_args);
    let broker = Broker::start_with_args(&args)?;
    proxy.set_target(broker.kafka_addr());
    Ok((broker, proxy))
}

/// Reads one size-prefixed frame; the returned buffer includes the prefix.
async fn read_frame(r: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    r.read_exact(&mut size).await.ok()?;
    let len = i32::from_be_bytes(size);
    if !(0..=256 * 1024 * 1024).contains(&len) {
        return None;
    }
    let mut frame = vec![0u8; 4 + len as usize];
    frame[..4].copy_from_slice(&size);
    r.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

async fn handle_connection(client: TcpStream, shared: Arc<Shared>) {
    let cut = shared.cut.notified();
    tokio::pin!(cut);
    cut.as_mut().enable();
    shared.counters.connections.fetch_add(1, Ordering::SeqCst);
    if shared.paused.load(Ordering::SeqCst) {
        shared
            .counters
            .refused_while_paused
            .fetch_add(1, Ordering::SeqCst);
        return;
    }
    let target = shared.target.lock().ok().and_then(|t| *t);
    let Some(target) = target else {
        shared
            .counters
            .connect_failures
            .fetch_add(1, Ordering::SeqCst);
        return;
    };
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            shared
                .counters
                .connect_failures
                .fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    // Correlation ids whose responses must be swallowed.
    let doomed: Arc<Mutex<HashSet<i32>>> = Arc::default();
    tokio::select! {
        _ = upstream(client_r, server_w, shared.clone(), doomed.clone()) => {}
        _ = downstream(server_r, client_w, shared.clone(), doomed) => {}
        _ = cut => {}
    }
    // Returning drops all four halves: both connections close.
}

/// Client → broker.
async fn upstream(
    mut client_r: OwnedReadHalf,
    mut server_w: OwnedWriteHalf,
    shared: Arc<Shared>,
    doomed: Arc<Mutex<HashSet<i32>>>,
) {
    while let Some(frame) = read_frame(&mut client_r).await {
        shared.counters.requests.fetch_add(1, Ordering::SeqCst);
        // size(4) api_key(2) api_version(2) correlation_id(4)
        let is_produce =
            frame.len() >= 12 && i16::from_be_bytes([frame[4], frame[5]]) == PRODUCE_API_KEY;
        if is_produce {
            shared
                .counters
                .produce_requests
                .fetch_add(1, Ordering::SeqCst);
            match shared.decide(frame.len()) {
                Decision::Forward => {}
                Decision::DropResponse => {
                    let corr = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
                    if let Ok(mut d) = doomed.lock() {
                        d.insert(corr);
                    }
                }
                Decision::Cut(n) => {
                    shared.counters.requests_cut.fetch_add(1, Ordering::SeqCst);
                    let _ = server_w.write_all(&frame[..n]).await;
                    let _ = server_w.flush().await;
                    return;
                }
            }
        }
        if server_w.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Broker → client.
async fn downstream(
    mut server_r: OwnedReadHalf,
    mut client_w: OwnedWriteHalf,
    shared: Arc<Shared>,
    doomed: Arc<Mutex<HashSet<i32>>>,
) {
    while let Some(frame) = read_frame(&mut server_r).await {
        if frame.len() >= 8 {
            let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            let drop_it = doomed.lock().map(|mut d| d.remove(&corr)).unwrap_or(false);
            if drop_it {
                shared
                    .counters
                    .responses_dropped
                    .fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        if client_w.write_all(&frame).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_deterministic_and_in_range() {
        let mut a = XorShift::new(42);
        let mut b = XorShift::new(42);
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
        }
    }
}
