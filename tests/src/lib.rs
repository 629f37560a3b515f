//! Test harness for driving a real `sluice-broker` process from Rust.
//!
//! Every [`Broker`] is its own child process listening on ephemeral ports
//! (`127.0.0.1:0`) with its own data directory, so tests can run in parallel.
//! The broker's stderr goes to a log file that survives restarts; if a test
//! panics while a [`Broker`] is alive, the log is printed when it is dropped.
//!
//! The module also has small helpers for building `rdkafka` clients against
//! a broker, for consuming a known number of records, for reading the on-disk
//! segment files and for raw HTTP GETs against the admin listener.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::ToBytes;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::future_producer::{Delivery, DeliveryFuture};
use rdkafka::producer::{
    BaseRecord, FutureProducer, FutureRecord, ProducerContext, ThreadedProducer,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tempfile::TempDir;

pub use rdkafka;

pub mod cluster;
pub mod history;
pub mod load;
pub mod proxy;
pub mod raw_client;
pub mod sasl;
pub mod tls;

/// Environment variable that overrides where the broker binary is found.
pub const BROKER_BIN_ENV: &str = "SLUICE_BROKER_BIN";

/// How long to wait for the `sluice-broker ready` line after spawning.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default timeout for admin operations and metadata calls in tests.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

const READY_PREFIX: &str = "sluice-broker ready ";

/// Locates the `sluice-broker` binary.
///
/// Order: `$SLUICE_BROKER_BIN`, then every ancestor directory of the running
/// executable (a test binary lives in `target/debug/deps`, the bench in
/// `target/debug`), looking for a sibling file named `sluice-broker`.
pub fn broker_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BROKER_BIN_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{BROKER_BIN_ENV}={} does not point to a file; run `cargo build -p sluice-broker`",
            path.display()
        );
    }
    let exe = std::env::current_exe().context("cannot determine the current executable path")?;
    let name = format!("sluice-broker{}", std::env::consts::EXE_SUFFIX);
    for dir in exe.ancestors().skip(1) {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        // Do not wander above the cargo profile directory.
        if dir
            .file_name()
            .is_some_and(|n| n == "debug" || n == "release")
        {
            break;
        }
    }
    bail!(
        "sluice-broker binary not found next to {} (or its parent directories up to the \
         profile dir); run `cargo build -p sluice-broker` or set {BROKER_BIN_ENV}",
        exe.display()
    )
}

/// Where a broker keeps its data, and who owns the directory.
enum DataDir {
    /// Temporary directory deleted when the broker is dropped.
    Temp(TempDir),
    /// Caller-provided directory, left in place.
    External(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::External(p) => p,
        }
    }
}

/// A running (or killed) `sluice-broker` child process.
pub struct Broker {
    binary: PathBuf,
    child: Option<Child>,
    data: DataDir,
    // Holds the stderr log; kept outside the data dir so the broker never
    // sees foreign files in it.
    _log_dir: TempDir,
    log_path: PathBuf,
    kafka_addr: SocketAddr,
    admin_addr: SocketAddr,
    generation: u32,
    extra_args: Vec<String>,
    /// `--listen` address: ephemeral for a lone broker, fixed for a cluster
    /// member (its peers know it by that address across restarts).
    listen: String,
    /// Network namespace the process runs in (`ip netns exec`), if any.
    netns: Option<String>,
    /// Environment variables set for the process (after the inherited
    /// `SLUICE_*` ones are dropped).
    env: Vec<(String, String)>,
}

/// A broker process launched but not yet confirmed ready.
pub struct Launch {
    child: Child,
    ready: mpsc::Receiver<String>,
}

impl Broker {
    /// Starts a broker on ephemeral ports with a fresh temporary data dir.
    pub fn start() -> Result<Broker> {
        Self::start_with_args(&[])
    }

    /// Like [`Broker::start`], with extra command-line arguments appended
    /// after `serve ...` (e.g. `["--some-flag", "value"]`).
    pub fn start_with_args(extra_args: &[&str]) -> Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-data-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        Self::spawn_new(DataDir::Temp(dir), extra_args)
    }

    /// Starts a broker on ephemeral ports using `dir` as its data directory.
    /// The directory is created if missing and is not deleted on drop.
    pub fn start_in(dir: impl AsRef<Path>) -> Result<Broker> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        Self::spawn_new(DataDir::External(dir), &[])
    }

    /// [`Broker::start_in`] with extra `serve` arguments.
    pub fn start_in_with_args(dir: impl AsRef<Path>, extra_args: &[&str]) -> Result<Broker> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        Self::spawn_new(DataDir::External(dir), extra_args)
    }

    /// Like [`Broker::start_with_args`], with environment variables (e.g.
    /// the `SLUICE_*` settings a Kubernetes pod spec gives).
    pub fn start_with_env(extra_args: &[&str], env: &[(String, String)]) -> Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-data-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let mut broker = Self::new_unstarted(DataDir::Temp(dir), extra_args, "127.0.0.1:0")?;
        broker.env = env.to_vec();
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn_new(data: DataDir, extra_args: &[&str]) -> Result<Broker> {
        let mut broker = Self::new_unstarted(data, extra_args, "127.0.0.1:0")?;
        broker.spawn()?;
        Ok(broker)
    }

    /// A cluster member on a fixed Kafka address; not started yet.
    pub fn new_member(dir: &Path, listen: &str, extra_args: &[&str]) -> Result<Broker> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        Self::new_unstarted(DataDir::External(dir.to_path_buf()), extra_args, listen)
    }

    fn new_unstarted(data: DataDir, extra_args: &[&str], listen: &str) -> Result<Broker> {
        let binary = broker_binary()?;
        let log_dir = tempfile::Builder::new()
            .prefix("sluice-log-")
            .tempdir()
            .context("cannot create a temporary log directory")?;
        let log_path = log_dir.path().join("broker-stderr.log");
        let broker = Broker {
            binary,
            child: None,
            data,
            _log_dir: log_dir,
            log_path,
            kafka_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            generation: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            listen: listen.to_string(),
            netns: None,
            env: Vec::new(),
        };
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<()> {
        let launch = self.launch()?;
        self.await_ready(launch)
    }

    /// Starts the process without waiting for it: cluster members only
    /// become ready once a quorum of them runs.
    pub fn launch(&mut self) -> Result<Launch> {
        self.generation += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open broker log {}", self.log_path.display()))?;
        writeln!(
            log,
            "===== sluice-tests harness: broker start #{} (data dir {}) =====",
            self.generation,
            self.data.path().display()
        )
        .context("cannot write to the broker log file")?;
        let stderr = log
            .try_clone()
            .context("cannot clone the broker log handle for stderr")?;

        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("serve").arg("--data-dir").arg(self.data.path());
        // (A test that configures listeners itself names every address.)
        if !self.extra_args.iter().any(|a| a == "--listeners") {
            cmd.arg("--listen").arg(&self.listen);
        }
        // An ephemeral admin port, unless the test fixed one (to reach
        // /readyz before the broker is ready).
        if !self.extra_args.iter().any(|a| a == "--admin-listen") {
            cmd.arg("--admin-listen").arg("127.0.0.1:0");
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // Only the flags above configure the broker: drop SLUICE_* settings
        // (config file, auto-create, ...) inherited from the environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // Plain log lines so tests can grep them.
        cmd.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn {}", self.binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("child stdout was not captured")?;

        // A reader thread forwards the ready line and then keeps draining
        // stdout (into the log) so the broker never blocks on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("sluice-broker-stdout".into())
            .spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !sent && line.starts_with(READY_PREFIX) {
                        sent = true;
                        let _ = tx.send(line);
                    } else {
                        let _ = writeln!(log, "[stdout] {line}");
                    }
                }
            })
            .context("cannot spawn the stdout reader thread")?;
        Ok(Launch { child, ready: rx })
    }

    /// Waits for a launched process's ready line.
    pub fn await_ready(&mut self, launch: Launch) -> Result<()> {
        let Launch {
            mut child,
            ready: rx,
        } = launch;
        let deadline = Instant::now() + READY_TIMEOUT;
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) =
                        child.try_wait().context("cannot poll the broker process")?
                    {
                        bail!(
                            "sluice-broker exited with {status} before printing its ready line\n{}",
                            self.log_excerpt()
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!(
                            "sluice-broker did not print its ready line within {READY_TIMEOUT:?}\n{}",
                            self.log_excerpt()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    bail!(
                        "sluice-broker closed stdout without a ready line (exit: {status:?})\n{}",
                        self.log_excerpt()
                    );
                }
            }
        };
        let (kafka, admin) = parse_ready_line(&line)?;
        self.kafka_addr = kafka;
        self.admin_addr = admin;
        self.child = Some(child);
        Ok(())
    }

    /// `host:port` of the Kafka listener, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.kafka_addr.to_string()
    }

    /// Socket address of the Kafka listener.
    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    /// Socket address of the admin HTTP listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://host:port` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Directory for a topic-partition inside the data dir.
    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.data_dir().join(format!("{topic}-{partition}"))
    }

    /// Runs the broker in network namespace `ns` from its next start on
    /// (`ip netns exec` execs it: the process keeps its pid).
    pub fn set_netns(&mut self, ns: &str) {
        self.netns = Some(ns.to_string());
    }

    /// One series of the broker's `/metrics`, e.g.
    /// `sluice_brokers{state="fenced"}`.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let r = http_get(self.admin_addr(), "/metrics")?;
        let needle = format!("{series} ");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .with_context(|| format!("{series} missing"))?
            .trim()
            .parse()
            .context("metric value")
    }

    /// OS process id of the running broker, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the child process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Exit status if the broker has exited on its own (it was not killed
    /// by the harness).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILLs the broker and reaps it. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker (if running) and starts it again on the same data
    /// directory. Ports change: re-read [`Broker::bootstrap`] afterwards.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGTERMs the broker (a clean, controlled shutdown) and waits up to
    /// `wait` for it to exit, SIGKILLing it after that. Returns how long it
    /// took to exit on its own; an error if it had to be killed or did not
    /// exit cleanly.
    pub fn terminate(&mut self, wait: Duration) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            bail!("broker is not running");
        };
        let started = Instant::now();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).context("broker pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM")?;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the broker")? {
                if !status.success() {
                    bail!("broker exited with {status} after SIGTERM");
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > wait {
                let _ = child.kill();
                let _ = child.wait();
                bail!("broker did not exit within {wait:?} of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Broker::terminate`], then starts it again on the same data
    /// directory.
    pub fn restart_gracefully(&mut self, wait: Duration) -> Result<Duration> {
        let took = self.terminate(wait)?;
        self.spawn()?;
        Ok(took)
    }

    /// Everything the broker wrote to stderr (all generations, separated by
    /// harness marker lines) plus stray stdout lines.
    pub fn stderr_log(&self) -> String {
        match fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read broker log {}: {e}>", self.log_path.display()),
        }
    }

    /// Path of the stderr log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn log_excerpt(&self) -> String {
        let log = self.stderr_log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(200);
        format!(
            "---- broker stderr ({}) ----\n{}\n---- end broker stderr ----",
            self.log_path.display(),
            lines[start..].join("\n")
        )
    }

    /// Prints the tail of the broker log to stderr (captured by the test
    /// runner and shown for failing tests).
    /// With `SLUICE_TEST_KEEP_FAILED=<dir>` set, the whole log and the data
    /// directory are also copied there, for a post-mortem of faults that
    /// reproduce once in many long runs.
    pub fn dump_log(&self) {
        eprintln!("{}", self.log_excerpt());
        if let Some(keep) = std::env::var_os("SLUICE_TEST_KEEP_FAILED") {
            let to = Path::new(&keep).join(format!("broker-{}", self.kafka_addr.port()));
            let kept = copy_tree(self.data.path(), &to.join("data"))
                .and_then(|()| fs::copy(&self.log_path, to.join("stderr.log")).map(drop));
            match kept {
                Ok(()) => eprintln!("broker log and data kept in {}", to.display()),
                Err(e) => eprintln!("could not keep broker files in {}: {e}", to.display()),
            }
        }
    }

    /// Kafka node id reported by the broker in metadata.
    pub fn node_id(&self) -> Result<i32> {
        let admin = admin_client(&self.bootstrap())?;
        let md = admin
            .inner()
            .fetch_metadata(None, OP_TIMEOUT)
            .context("metadata request failed")?;
        md.brokers()
            .first()
            .map(|b| b.id())
            .ok_or_else(|| anyhow!("metadata lists no brokers"))
    }
}

/// Copies a directory tree (files and directories only).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        self.kill();
    }
}

fn parse_ready_line(line: &str) -> Result<(SocketAddr, SocketAddr)> {
    let mut kafka = None;
    let mut admin = None;
    for token in line.split_whitespace() {
        if let Some(v) = token.strip_prefix("kafka=") {
            kafka = Some(
                v.parse::<SocketAddr>()
                    .with_context(|| format!("bad kafka address in ready line: {line:?}"))?,
            );
        } else if let Some(v) = token.strip_prefix("admin=") {
            admin = Some(
                v.parse::<SocketAddr>()
                    .with_context(|| format!("bad admin address in ready line: {line:?}"))?,
            );
        }
    }
    match (kafka, admin) {
        (Some(k), Some(a)) => Ok((k, a)),
        _ => bail!("ready line lacks kafka=/admin= addresses: {line:?}"),
    }
}

// ---------------------------------------------------------------------------
// rdkafka helpers
// ---------------------------------------------------------------------------

/// An example plugin built from the SDK (`scripts/build-plugins`).
pub fn example_plugin(file: &str) -> Result<Vec<u8>> {
    let path = example_plugin_path(file);
    fs::read(&path).with_context(|| format!("{} (run scripts/build-plugins)", path.display()))
}

/// Where `scripts/build-plugins` puts example plugin `file`.
pub fn example_plugin_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples/target/wasm32-unknown-unknown/release")
        .join(file)
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A topic name unique within this process (tests share nothing anyway,
/// but unique names make logs easier to read).
pub fn unique_name(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Base client config shared by all clients.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        // Fail fast instead of reconnecting forever to a killed broker.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    cfg
}

/// Producer config: acks=all, small linger, bounded delivery timeout.
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = base_config(bootstrap);
    cfg.set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "15000")
        .set("enable.idempotence", "false");
    cfg
}

/// Consumer config for manual `assign()` (the broker has no groups yet):
/// a throwaway group id, no auto-commit, start from the earliest offset.
pub fn consumer_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = base_config(bootstrap);
    cfg.set("group.id", unique_name("sluice-tests-group"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("enable.partition.eof", "false");
    cfg
}

/// Admin client config.
pub fn admin_config(bootstrap: &str) -> ClientConfig {
    base_config(bootstrap)
}

/// Builds a [`FutureProducer`] from [`producer_config`] plus overrides.
pub fn future_producer(bootstrap: &str, overrides: &[(&str, &str)]) -> Result<FutureProducer> {
    let mut cfg = producer_config(bootstrap);
    for (k, v) in overrides {
        cfg.set(*k, *v);
    }
    cfg.create().context("cannot create FutureProducer")
}

/// Builds a [`StreamConsumer`] from [`consumer_config`] plus overrides.
pub fn stream_consumer(bootstrap: &str, overrides: &[(&str, &str)]) -> Result<StreamConsumer> {
    let mut cfg = consumer_config(bootstrap);
    for (k, v) in overrides {
        cfg.set(*k, *v);
    }
    cfg.create().context("cannot create StreamConsumer")
}

/// Builds an admin client.
pub fn admin_client(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    admin_config(bootstrap)
        .create()
        .context("cannot create AdminClient")
}

/// Admin options with a bounded operation timeout.
pub fn admin_opts() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(OP_TIMEOUT))
        .operation_timeout(Some(OP_TIMEOUT))
}

/// Creates a topic with `partitions` partitions, replication factor 1 and
/// the given topic configs; fails on any per-topic error.
pub async fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin = admin_client(bootstrap)?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics([&topic], &admin_opts())
        .await
        .with_context(|| format!("CreateTopics request for {name} failed"))?;
    for r in results {
        if let Err((topic, code)) = r {
            bail!("CreateTopics({topic}) failed: {code:?}");
        }
    }
    Ok(())
}

/// Awaits delivery reports in order; fails on the first failed delivery.
pub async fn await_deliveries(futures: Vec<DeliveryFuture>) -> Result<Vec<Delivery>> {
    let mut out = Vec::with_capacity(futures.len());
    for (i, fut) in futures.into_iter().enumerate() {
        match fut.await {
            Ok(Ok(d)) => out.push(d),
            Ok(Err((e, _msg))) => bail!("delivery of record #{i} failed: {e}"),
            Err(_) => bail!("delivery future of record #{i} was cancelled"),
        }
    }
    Ok(out)
}

/// Enqueues one record with `send_result`, retrying while the local queue
/// is full.
pub async fn enqueue<'a>(
    producer: &FutureProducer,
    mut record: FutureRecord<'a, [u8], [u8]>,
) -> Result<DeliveryFuture> {
    loop {
        match producer.send_result(record) {
            Ok(fut) => return Ok(fut),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                rec,
            )) => {
                record = rec;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => bail!("cannot enqueue record: {e}"),
        }
    }
}

/// Enqueues `record` on a threaded producer, waiting while librdkafka's
/// local queue is full; any other error is returned.
pub fn send_blocking<'a, K, P, C>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> Result<(), rdkafka::error::KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    C: ProducerContext,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Produces one record (acks=all) and reads it back with a fresh consumer:
/// the smoke check that the broker still works.
pub async fn roundtrip_once(bootstrap: &str, topic: &str, payload: &[u8]) -> Result<()> {
    let producer = future_producer(bootstrap, &[])?;
    let fut = enqueue(
        &producer,
        FutureRecord::to(topic)
            .key(b"rt".as_slice())
            .payload(payload),
    )
    .await?;
    let delivery = await_deliveries(vec![fut]).await?.remove(0);
    let consumer = stream_consumer(bootstrap, &[])?;
    assign(
        &consumer,
        &[(topic, delivery.partition, Offset::Offset(delivery.offset))],
    )?;
    let msgs = consume_n(&consumer, 1, Duration::from_secs(10)).await?;
    let got = msgs[0].payload().unwrap_or_default();
    if got != payload || msgs[0].offset() != delivery.offset {
        bail!(
            "round trip mismatch: produced {} bytes at offset {}, read {} bytes at offset {}",
            payload.len(),
            delivery.offset,
            got.len(),
            msgs[0].offset()
        );
    }
    Ok(())
}

/// Assigns `(topic, partition, offset)` triples to `consumer`.
pub fn assign(consumer: &StreamConsumer, parts: &[(&str, i32, Offset)]) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in parts {
        tpl.add_partition_offset(topic, *partition, *offset)
            .with_context(|| format!("bad offset {offset:?} for {topic}-{partition}"))?;
    }
    consumer.assign(&tpl).context("assign() failed")
}

/// Receives exactly `n` messages or fails after `timeout`.
///
/// Consumer-level errors (e.g. group coordinator complaints, since the broker
/// has no group support) are collected and reported only if the deadline
/// passes, because librdkafka may surface them while fetching still works.
pub async fn consume_n(
    consumer: &StreamConsumer,
    n: usize,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    let mut errors: Vec<String> = Vec::new();
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(msg)) => out.push(msg.detach()),
            Ok(Err(e)) => {
                if errors.len() < 20 {
                    errors.push(e.to_string());
                }
            }
            Err(_) => bail!(
                "timed out after {timeout:?}: received {} of {n} messages; consumer errors: {errors:?}",
                out.len()
            ),
        }
    }
    Ok(out)
}

/// Waits `quiet` for any further message; returns those received.
pub async fn drain_extra(consumer: &StreamConsumer, quiet: Duration) -> Vec<OwnedMessage> {
    let mut out = Vec::new();
    while let Ok(r) = tokio::time::timeout(quiet, consumer.recv()).await {
        if let Ok(m) = r {
            out.push(m.detach());
        }
    }
    out
}

/// Headers of a message as `(key, value)` pairs in wire order.
pub fn header_pairs(msg: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    match msg.headers() {
        None => Vec::new(),
        Some(h) => h
            .iter()
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect(),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for payloads that
/// neither compress trivially nor need a `rand` dependency.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// On-disk segment helpers
// ---------------------------------------------------------------------------

/// `.log` segment files of a partition directory, sorted by base offset.
pub fn segment_files(partition_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(partition_dir)
        .with_context(|| format!("cannot list {}", partition_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    Ok(files)
}

/// Location of one record batch inside a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Byte position of the batch in the file.
    pub position: u64,
    /// Total size of the batch in bytes (12-byte prefix included).
    pub size: u64,
    /// Base offset stored in the batch.
    pub base_offset: i64,
    /// Last offset delta (records in batch - 1 for uncompacted batches).
    pub last_offset_delta: i32,
    /// Attributes field (compression codec in the low three bits).
    pub attributes: i16,
    /// Number of records according to the batch header.
    pub record_count: i32,
}

/// Parses the batch headers of a segment file (v2 record batches back to
/// back). Stops at the first incomplete batch.
pub fn read_batches(segment: &Path) -> Result<Vec<BatchInfo>> {
    let mut data = Vec::new();
    File::open(segment)
        .with_context(|| format!("cannot open segment {}", segment.display()))?
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read segment {}", segment.display()))?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    // baseOffset(8) batchLength(4) leaderEpoch(4) magic(1) crc(4)
    // attributes(2) lastOffsetDelta(4) firstTs(8) maxTs(8) producerId(8)
    // producerEpoch(2) baseSequence(4) recordCount(4) = 61 bytes.
    while pos + 61 <= data.len() {
        let be_i64 = |p: usize| i64::from_be_bytes(data[p..p + 8].try_into().unwrap_or([0; 8]));
        let be_i32 = |p: usize| i32::from_be_bytes(data[p..p + 4].try_into().unwrap_or([0; 4]));
        let be_i16 = |p: usize| i16::from_be_bytes(data[p..p + 2].try_into().unwrap_or([0; 2]));
        let base_offset = be_i64(pos);
        let batch_len = be_i32(pos + 8);
        if batch_len < 49 {
            break;
        }
        let size = 12 + batch_len as usize;
        if pos + size > data.len() {
            break;
        }
        out.push(BatchInfo {
            position: pos as u64,
            size: size as u64,
            base_offset,
            attributes: be_i16(pos + 21),
            last_offset_delta: be_i32(pos + 23),
            record_count: be_i32(pos + 57),
        });
        pos += size;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------

/// Minimal HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// HTTP/1.1 POST of `body` with `Connection: close` over a raw socket.
pub fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<HttpResponse> {
    http_request(addr, "POST", path, body)
}

/// HTTP/1.1 GET with `Connection: close` over a raw socket.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    http_request(addr, "GET", path, &[])
}

/// HTTP/1.1 DELETE with `Connection: close` over a raw socket.
pub fn http_delete(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    http_request(addr, "DELETE", path, &[])
}

fn http_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<HttpResponse> {
    http_as(addr, method, path, None, body)
}

/// An admin API request with `Authorization: Bearer <token>` when given.
pub fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse> {
    let stream = admin_stream(addr)?;
    http_exchange(stream, addr, method, path, token, body)
}

/// A TCP connection to an admin listener, with a read timeout.
pub fn admin_stream(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to admin listener {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("cannot set read timeout")?;
    Ok(stream)
}

/// One HTTP/1.1 request on `stream` (plain TCP or TLS), read to the end.
pub fn http_exchange(
    mut stream: impl Read + Write,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse> {
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .context("cannot send HTTP request")?;
    stream.write_all(body).context("cannot send HTTP body")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read HTTP response for {path}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response for {path}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("no status code in HTTP response for {path}: {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        head: head.to_string(),
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, rest)) = s.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        s = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_line() {
        let (k, a) =
            parse_ready_line("sluice-broker ready kafka=127.0.0.1:9092 admin=127.0.0.1:8080")
                .expect("valid line");
        assert_eq!(k.port(), 9092);
        assert_eq!(a.port(), 8080);
        assert!(parse_ready_line("sluice-broker ready kafka=127.0.0.1:1").is_err());
    }

    #[test]
    fn dechunks_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn pseudo_random_is_deterministic() {
        assert_eq!(pseudo_random_bytes(7, 100), pseudo_random_bytes(7, 100));
        assert_ne!(pseudo_random_bytes(7, 100), pseudo_random_bytes(8, 100));
        assert_eq!(pseudo_random_bytes(1, 13).len(), 13);
    }
}
