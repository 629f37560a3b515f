//! `sluice-bench`: produce/consume throughput and produce latency against a
//! Sluice (or any Kafka) broker, next to the machine's sequential-write
//! baseline on the same filesystem.
//!
//! Without `--bootstrap` it spawns its own `sluice-broker` with a data dir
//! under `--data-dir` (default: a temporary directory in the current
//! working directory, so the baseline measures the same filesystem).
//!
//! `--mode cluster` spawns three brokers and measures acks=1 against
//! acks=all with replication factor 3, and how long producing stalls when
//! a partition leader is killed.
//!
//! `--mode transactions` measures transactional produce (librdkafka,
//! `--records-per-transaction` records per transaction) against idempotent
//! acks=all produce of the same records in the same run, on one broker or
//! (`--brokers 3`) a replicated cluster, and commit latency.
//!
//! `--mode tls` measures librdkafka produce and consume over an SSL
//! listener against a PLAINTEXT one of the same brokers (`--brokers`), in
//! the same run, and how long opening a connection takes on each.
//!
//! `--mode groups` measures consumer groups instead: how long a 3-member
//! group takes to rebalance when its third member subscribes, and how many
//! offset commits (synchronous, and asynchronous with a bounded number in
//! flight) one consumer gets through per second.

/// The same allocator as the broker, so the raw client's per-response
/// buffers cost what they cost the broker (glibc returns big buffers to
/// the kernel and page-faults them back). librdkafka's own allocations (C
/// malloc) are not affected.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use sluice_tests::{Broker, base_config, create_topic, http_get, http_post, pseudo_random_bytes};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Produce/consume throughput and produce latency (the default).
    ProduceConsume,
    /// Consumer-group rebalance time and offset-commit throughput.
    Groups,
    /// Produce throughput and latency with no plugin, a trivial partitioner,
    /// an interceptor rewriting one header, and a filter keeping half.
    Plugins,
    /// A 3-broker cluster: acks=1 vs acks=all throughput and latency with
    /// RF 3, and failover time after SIGKILL of a partition leader.
    Cluster,
    /// Transactional produce vs idempotent produce, and commit latency.
    Transactions,
    /// Produce/consume over TLS vs PLAINTEXT, and connection set-up time.
    Tls,
    /// Partition reassignment speed on 3 brokers: MB/s of moving one
    /// partition's replica onto a broker that lacks it, unthrottled and
    /// with `--throttle-mb` (follower.replication.throttled.rate).
    Reassign,
}

/// Which producer drives the produce phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Client {
    /// librdkafka (rdkafka crate): what applications see, client costs included.
    Rdkafka,
    /// A pipelined producer resending one pre-encoded batch: the broker's
    /// own capacity, with the client's per-record cost taken out.
    Raw,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice-bench",
    about = "Produce/consume throughput and latency benchmark for Sluice"
)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::ProduceConsume)]
    mode: Mode,
    /// Groups mode: partitions of the group's topic.
    #[arg(long, default_value_t = 12)]
    group_partitions: i32,
    /// Groups mode: rebalance measurements (the median is reported).
    #[arg(long, default_value_t = 5)]
    rebalance_rounds: usize,
    /// Groups mode: heartbeat.interval.ms of the members (existing members
    /// learn about a rebalance from a heartbeat response).
    #[arg(long, default_value_t = 500)]
    heartbeat_interval_ms: u32,
    /// Groups mode: seconds spent in each commit loop.
    #[arg(long, default_value_t = 3)]
    commit_seconds: u64,
    /// Groups mode: asynchronous commits per burst (each burst ends with a
    /// synchronous commit as a barrier).
    #[arg(long, default_value_t = 100)]
    async_burst: u64,
    /// Plugins mode: rounds over all scenarios (medians are reported).
    #[arg(long, default_value_t = 3)]
    plugin_rounds: usize,
    /// Plugins mode: directory holding the example plugins' .wasm files
    /// (built by scripts/build-plugins).
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Plugins and transactions modes: brokers to run (3: a cluster,
    /// topics with replication factor 3 and min.insync.replicas 2; in
    /// plugins mode routed records are forwarded to the brokers leading
    /// their partitions).
    #[arg(long, default_value_t = 1)]
    brokers: usize,
    /// Transactions mode: records per transaction, one scenario per value
    /// (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    records_per_transaction: Vec<u64>,
    /// Transactions mode: rounds over all scenarios (medians reported).
    #[arg(long, default_value_t = 3)]
    transaction_rounds: usize,
    /// Reassign mode: the throttled run's rate, MB/s.
    #[arg(long, default_value_t = 20)]
    throttle_mb: u64,
    /// Broker to benchmark; if absent, a sluice-broker is spawned.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Data directory for the spawned broker and the baseline file
    /// (default: a temporary directory under the current directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of records to produce.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Partitions of the benchmark topic (records are spread round-robin).
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Producer acks: 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    /// Producer compression.type: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Producer linger.ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Producer batch.size in bytes (librdkafka default if absent).
    #[arg(long)]
    batch_size: Option<u64>,
    /// Client for both phases.
    #[arg(long, value_enum, default_value_t = Client::Rdkafka)]
    client: Client,
    /// Raw client: produce requests in flight at once (its consumer keeps
    /// one fetch in flight, like librdkafka).
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Cluster mode: throughput rounds (each runs acks=1 then acks=all;
    /// medians are reported).
    #[arg(long, default_value_t = 3)]
    cluster_rounds: usize,
    /// Cluster mode: leader kills timed (median, min and max reported).
    #[arg(long, default_value_t = 5)]
    failover_rounds: usize,
    /// An existing topic to use, e.g. one with replication factor 3 on a
    /// cluster given by `--bootstrap` (default: a fresh one is created).
    #[arg(long)]
    topic: Option<String>,
}

const MB: f64 = 1_000_000.0;

/// Producer-side bookkeeping. Per-record costs here are paid by the client
/// thread that competes with the broker for the same cores, so there is no
/// allocation and no shared lock per record: the delivery opaque is the send
/// time itself (microseconds since `origin`), and only the client's single
/// delivery thread touches the histogram.
struct Stats {
    origin: Instant,
    latency_us: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    failed: AtomicU64,
    /// Microseconds since `origin` of the latest delivery report.
    last_ack_us: AtomicU64,
}

impl Stats {
    fn new() -> Result<Stats> {
        Ok(Stats {
            origin: Instant::now(),
            latency_us: Mutex::new(latency_histogram()?),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_ack_us: AtomicU64::new(0),
        })
    }

    /// What the delivery reports recorded so far.
    fn latency(&self) -> Histogram<u64> {
        self.latency_us
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn micros_now(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

struct BenchContext(Arc<Stats>);

impl ClientContext for BenchContext {}

impl ProducerContext for BenchContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at_us: usize) {
        let now = self.0.micros_now();
        match result {
            Ok(_) => {
                let us = now.saturating_sub(sent_at_us as u64);
                if let Ok(mut h) = self.0.latency_us.lock() {
                    h.saturating_record(us.max(1));
                }
                self.0.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.0.last_ack_us.fetch_max(now, Ordering::Relaxed);
    }
}

/// Hands `record` to librdkafka, waiting while its queue is full; the
/// record's latency counts from the enqueue that succeeded.
fn enqueue<'a>(
    producer: &ThreadedProducer<BenchContext>,
    stats: &Stats,
    mut record: BaseRecord<'a, [u8], [u8], usize>,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), mut r)) => {
                std::thread::sleep(Duration::from_micros(200));
                r.delivery_opaque = stats.micros_now() as usize;
                record = r;
            }
            Err((e, _)) => bail!("cannot enqueue: {e}"),
        }
    }
}

/// Microseconds from 1 µs to 10 minutes, 3 significant digits.
fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")
}

/// Payload pool: each value is half pseudo-random, half repetitive text, so
/// compression codecs have something (but not everything) to gain.
fn payload_pool(record_size: usize) -> Vec<Vec<u8>> {
    (0..256u64)
        .map(|i| {
            let mut v = pseudo_random_bytes(i, record_size / 2);
            let text = b"sluice benchmark payload ";
            while v.len() < record_size {
                let take = (record_size - v.len()).min(text.len());
                v.extend_from_slice(&text[..take]);
            }
            v
        })
        .collect()
}

struct ProduceResult {
    acked: u64,
    failed: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// Produces with librdkafka; `client` holds the bootstrap servers and any
/// security settings.
fn produce(args: &Args, client: &ClientConfig, topic: &str) -> Result<ProduceResult> {
    let stats = Arc::new(Stats::new()?);
    let mut cfg = client.clone();
    cfg.set("acks", &args.acks)
        .set("compression.type", &args.compression)
        .set("linger.ms", args.linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "120000")
        .set("enable.idempotence", "false");
    if let Some(b) = args.batch_size {
        cfg.set("batch.size", b.to_string());
    }
    let producer: ThreadedProducer<BenchContext> = cfg
        .create_with_context(BenchContext(stats.clone()))
        .context("cannot create producer")?;

    let pool = payload_pool(args.record_size);
    let start_us = stats.micros_now();
    let mut key = String::new();
    for seq in 0..args.records {
        let value = &pool[(seq % pool.len() as u64) as usize];
        let partition = (seq % args.partitions as u64) as i32;
        // Plugins mode keys records by sequence number (the keep-half filter
        // reads the key's last digit); otherwise records are unkeyed.
        let keyed = args.mode == Mode::Plugins;
        if keyed {
            use std::fmt::Write;
            key.clear();
            let _ = write!(key, "{seq}");
        }
        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, stats.micros_now() as usize)
                .partition(partition)
                .payload(value.as_slice());
        if keyed {
            record = record.key(key.as_bytes());
        }
        enqueue(&producer, &stats, record).with_context(|| format!("record {seq}"))?;
    }
    producer
        .flush(Duration::from_secs(300))
        .context("producer flush timed out")?;
    let end_us = match stats.last_ack_us.load(Ordering::Relaxed) {
        0 => stats.micros_now(),
        us => us,
    };
    let latency = stats.latency();
    Ok(ProduceResult {
        acked: stats.acked.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        elapsed: Duration::from_micros(end_us.saturating_sub(start_us)),
        latency,
    })
}

/// The produce phase through the raw pipelined client; librdkafka's
/// `batch.size` default (1,000,000 bytes) sets the batch unless given.
fn produce_raw(args: &Args, bootstrap: &str, topic: &str) -> Result<ProduceResult> {
    if args.compression != "none" {
        bail!("--client raw sends uncompressed batches; drop --compression");
    }
    let acks = match args.acks.as_str() {
        "all" | "-1" => -1,
        other => other
            .parse::<i16>()
            .with_context(|| format!("--acks {other}: expected 0, 1 or all"))?,
    };
    let pool = payload_pool(args.record_size);
    let r = sluice_tests::raw_client::produce(&sluice_tests::raw_client::RawProduceSettings {
        bootstrap,
        topic,
        partitions: args.partitions,
        values: &pool,
        records: args.records,
        batch_bytes: args.batch_size.unwrap_or(1_000_000) as usize,
        acks,
        max_in_flight: args.max_in_flight.max(1),
    })?;
    Ok(ProduceResult {
        acked: r.records,
        failed: 0,
        elapsed: r.elapsed,
        latency: r.latency_us,
    })
}

struct ConsumeResult {
    records: u64,
    bytes: u64,
    elapsed: Duration,
}

fn consume(args: &Args, client: &ClientConfig, topic: &str) -> Result<ConsumeResult> {
    let mut cfg = client.clone();
    cfg.set("group.id", format!("sluice-bench-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = cfg.create().context("cannot create consumer")?;
    let mut expected = 0i64;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}-{p}"))?;
        expected += high - low;
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .context("assignment")?;
    }
    consumer.assign(&tpl).context("assign")?;
    let start = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut last_progress = Instant::now();
    while records < expected as u64 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                bytes += m.payload_len() as u64 + m.key().map_or(0, |k| k.len() as u64);
                last_progress = Instant::now();
            }
            Some(Err(e)) => eprintln!("consumer error (continuing): {e}"),
            None => {
                if last_progress.elapsed() > Duration::from_secs(30) {
                    bail!("consume stalled at {records} of {expected} records");
                }
            }
        }
    }
    Ok(ConsumeResult {
        records,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Sequential 1 MiB writes of `total` bytes followed by fdatasync.
fn baseline(dir: &Path, total: u64) -> Result<Duration> {
    let path = dir.join(format!(".sluice-bench-baseline-{}.tmp", std::process::id()));
    let chunk = pseudo_random_bytes(42, 1 << 20);
    let start = Instant::now();
    let result = (|| -> Result<()> {
        let mut f = File::create(&path)
            .with_context(|| format!("cannot create baseline file {}", path.display()))?;
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).context("baseline write")?;
            left -= n as u64;
        }
        f.sync_data().context("baseline fdatasync")?;
        Ok(())
    })();
    let elapsed = start.elapsed();
    let _ = fs::remove_file(&path);
    result.map(|()| elapsed)
}

fn rate(amount: f64, d: Duration) -> f64 {
    amount / d.as_secs_f64().max(1e-9)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.mode == Mode::Groups {
        return groups_main(&args);
    }
    if args.mode == Mode::Plugins {
        return plugins_main(&args);
    }
    if args.mode == Mode::Cluster {
        return cluster_main(&args);
    }
    if args.mode == Mode::Transactions {
        return transactions_main(&args);
    }
    if args.mode == Mode::Tls {
        return tls_main(&args);
    }
    if args.mode == Mode::Reassign {
        return reassign_main(&args);
    }
    if args.partitions < 1 || args.records == 0 || args.record_size == 0 {
        bail!("--partitions, --records and --record-size must be positive");
    }
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: client={:?} records={} record_size={} partitions={} acks={} compression={} linger_ms={} batch_size={} bootstrap={}",
        args.client,
        args.records,
        args.record_size,
        args.partitions,
        args.acks,
        args.compression,
        args.linger_ms,
        args.batch_size
            .map_or("librdkafka-default".to_string(), |b| b.to_string()),
        args.bootstrap
            .as_deref()
            .unwrap_or("<spawned sluice-broker>")
    );

    // Data directory: explicit, or a temp dir on the current filesystem.
    let _temp_guard;
    let data_dir: PathBuf = match &args.data_dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let t = tempfile::Builder::new()
                .prefix("sluice-bench-")
                .tempdir_in(&cwd)
                .context("cannot create a temp dir in the current directory")?;
            let p = t.path().to_path_buf();
            _temp_guard = t;
            p
        }
    };
    let mut broker = match &args.bootstrap {
        Some(_) => None,
        None => Some(Broker::start_in(&data_dir).context("cannot start sluice-broker")?),
    };
    let bootstrap = match (&args.bootstrap, &broker) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => b.bootstrap(),
        (None, None) => unreachable!("a broker is spawned when --bootstrap is absent"),
    };
    println!("data dir: {}", data_dir.display());

    let topic = args.topic.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        format!("sluice-bench-{}-{t}", std::process::id())
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    if args.topic.is_none() {
        runtime
            .block_on(create_topic(&bootstrap, &topic, args.partitions, &[]))
            .with_context(|| format!("cannot create topic {topic}"))?;
    }

    let produced = match args.client {
        Client::Rdkafka => produce(&args, &base_config(&bootstrap), &topic)?,
        Client::Raw => produce_raw(&args, &bootstrap, &topic)?,
    };
    if produced.failed > 0 {
        eprintln!("warning: {} records failed delivery", produced.failed);
    }
    let produced_bytes = produced.acked * args.record_size as u64;
    let consumed = match args.client {
        Client::Rdkafka => consume(&args, &base_config(&bootstrap), &topic)?,
        Client::Raw => {
            let r = sluice_tests::raw_client::consume(
                &bootstrap,
                &topic,
                args.partitions,
                produced.acked,
            )?;
            ConsumeResult {
                records: r.records,
                bytes: r.bytes,
                elapsed: r.elapsed,
            }
        }
    };

    if let Some(b) = broker.as_mut() {
        b.kill();
    }
    let volume = produced_bytes;
    let base = baseline(&data_dir, volume)?;

    let produce_rps = rate(produced.acked as f64, produced.elapsed);
    let produce_mbs = rate(produced_bytes as f64 / MB, produced.elapsed);
    let consume_rps = rate(consumed.records as f64, consumed.elapsed);
    let consume_mbs = rate(consumed.bytes as f64 / MB, consumed.elapsed);
    let base_mbs = rate(volume as f64 / MB, base);
    let h = &produced.latency;
    let ms = |us: u64| us as f64 / 1000.0;

    println!();
    println!(
        "produce: {} records acked ({} failed) in {:.3} s",
        produced.acked,
        produced.failed,
        produced.elapsed.as_secs_f64()
    );
    println!(
        "consume: {} records, {} value+key bytes in {:.3} s",
        consumed.records,
        consumed.bytes,
        consumed.elapsed.as_secs_f64()
    );
    println!(
        "baseline: {} bytes in 1 MiB writes + fdatasync in {:.3} s",
        volume,
        base.as_secs_f64()
    );
    println!();
    println!(
        "| produce rec/s | produce MB/s | consume rec/s | consume MB/s | baseline write+fdatasync MB/s | produce/baseline | consume/produce |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {produce_rps:.0} | {produce_mbs:.1} | {consume_rps:.0} | {consume_mbs:.1} | {base_mbs:.1} | {:.2} | {:.2} |",
        produce_mbs / base_mbs,
        consume_mbs / produce_mbs
    );
    println!();
    println!("| produce latency (send → ack) | ms |");
    println!("|---|---:|");
    println!("| p50 | {:.3} |", ms(h.value_at_quantile(0.50)));
    println!("| p99 | {:.3} |", ms(h.value_at_quantile(0.99)));
    println!("| p99.9 | {:.3} |", ms(h.value_at_quantile(0.999)));
    println!("| max | {:.3} |", ms(h.max()));
    println!();
    println!("MB = 10^6 bytes; record payload bytes only (no framing).");
    match args.client {
        Client::Rdkafka => println!(
            "Latency is open-loop: records are enqueued as fast as librdkafka accepts them, \
             so it includes time queued in the client behind earlier records."
        ),
        Client::Raw => println!(
            "Latency is the round trip of the produce request that carried the record, \
             with up to {} requests in flight.",
            args.max_in_flight
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// --mode groups
// ---------------------------------------------------------------------------

#[derive(Default)]
struct GroupStats {
    assigns: AtomicU64,
}

struct GroupContext(Arc<GroupStats>);

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.0.assigns.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type GroupConsumer = BaseConsumer<GroupContext>;

fn group_member(
    args: &Args,
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> Result<(GroupConsumer, Arc<GroupStats>)> {
    let stats = Arc::new(GroupStats::default());
    let mut cfg = base_config(bootstrap);
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set(
            "heartbeat.interval.ms",
            args.heartbeat_interval_ms.to_string(),
        );
    let consumer: GroupConsumer = cfg
        .create_with_context(GroupContext(stats.clone()))
        .context("cannot create a group consumer")?;
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("cannot subscribe to {topic}"))?;
    Ok((consumer, stats))
}

fn assigned(c: &GroupConsumer) -> usize {
    c.assignment().map(|a| a.count()).unwrap_or(0)
}

/// Polls every member until `done` holds or `timeout` passes.
fn poll_until(
    members: &[&GroupConsumer],
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        for m in members {
            let _ = m.poll(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// One measurement: two members settle, the third subscribes; time until
/// all three own partitions of the new generation.
fn rebalance_round(args: &Args, bootstrap: &str, topic: &str, round: usize) -> Result<Duration> {
    let group = format!("sluice-bench-rebalance-{}-{round}", std::process::id());
    let (c1, s1) = group_member(args, bootstrap, &group, topic)?;
    let (c2, s2) = group_member(args, bootstrap, &group, topic)?;
    poll_until(
        &[&c1, &c2],
        Duration::from_secs(60),
        "two members to share the topic",
        || {
            let (a, b) = (assigned(&c1), assigned(&c2));
            a > 0 && b > 0 && (a + b) as i32 == args.group_partitions
        },
    )?;
    let (before1, before2) = (
        s1.assigns.load(Ordering::SeqCst),
        s2.assigns.load(Ordering::SeqCst),
    );
    let start = Instant::now();
    let (c3, _s3) = group_member(args, bootstrap, &group, topic)?;
    poll_until(
        &[&c1, &c2, &c3],
        Duration::from_secs(60),
        "three members to share the topic",
        || {
            let (a, b, c) = (assigned(&c1), assigned(&c2), assigned(&c3));
            s1.assigns.load(Ordering::SeqCst) > before1
                && s2.assigns.load(Ordering::SeqCst) > before2
                && a > 0
                && b > 0
                && c > 0
                && (a + b + c) as i32 == args.group_partitions
        },
    )?;
    let elapsed = start.elapsed();
    drop((c1, c2, c3));
    Ok(elapsed)
}

struct CommitResult {
    ok: u64,
    failed: u64,
    elapsed: Duration,
}

fn commit_list(topic: &str, partitions: i32, i: u64) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Offset((i % 1000) as i64))
            .context("commit list")?;
    }
    Ok(tpl)
}

fn commit_bench(args: &Args, bootstrap: &str, topic: &str) -> Result<(CommitResult, CommitResult)> {
    let group = format!("sluice-bench-commits-{}", std::process::id());
    let (c, _stats) = group_member(args, bootstrap, &group, topic)?;
    poll_until(&[&c], Duration::from_secs(60), "the assignment", || {
        assigned(&c) as i32 == args.group_partitions
    })?;
    let window = Duration::from_secs(args.commit_seconds);

    // Synchronous: one OffsetCommit round trip at a time.
    let (mut ok, mut failed, mut i) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < window {
        i += 1;
        match c.commit(
            &commit_list(topic, args.group_partitions, i)?,
            CommitMode::Sync,
        ) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    let sync = CommitResult {
        ok,
        failed,
        elapsed: start.elapsed(),
    };
    // Asynchronous: rust-rdkafka's BaseConsumer gets no per-commit result
    // for async commits (librdkafka only reports them to an
    // offset_commit_cb, which rdkafka 0.38 does not install), so commits go
    // out in bursts of `async_burst` followed by one synchronous commit as a
    // barrier: librdkafka sends them in order on the coordinator
    // connection, so the barrier completes after the whole burst.
    let (mut ok, mut failed, mut issued) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < window {
        for _ in 0..args.async_burst {
            i += 1;
            c.commit(
                &commit_list(topic, args.group_partitions, i)?,
                CommitMode::Async,
            )
            .context("cannot enqueue an async commit")?;
            issued += 1;
        }
        i += 1;
        match c.commit(
            &commit_list(topic, args.group_partitions, i)?,
            CommitMode::Sync,
        ) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
        let _ = c.poll(Duration::ZERO);
    }
    let asyncr = CommitResult {
        ok: issued + ok,
        failed,
        elapsed: start.elapsed(),
    };
    Ok((sync, asyncr))
}

fn groups_main(args: &Args) -> Result<()> {
    if args.group_partitions < 3 || args.rebalance_rounds == 0 || args.commit_seconds == 0 {
        bail!("--group-partitions must be >= 3, --rebalance-rounds and --commit-seconds positive");
    }
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: mode=groups group_partitions={} rebalance_rounds={} heartbeat_interval_ms={} \
         commit_seconds={} async_burst={} bootstrap={}",
        args.group_partitions,
        args.rebalance_rounds,
        args.heartbeat_interval_ms,
        args.commit_seconds,
        args.async_burst,
        args.bootstrap
            .as_deref()
            .unwrap_or("<spawned sluice-broker --group-initial-rebalance-delay-ms 0>")
    );
    let _temp_guard;
    let mut broker = match &args.bootstrap {
        Some(_) => None,
        None => {
            let dir = match &args.data_dir {
                Some(d) => d.clone(),
                None => {
                    let cwd =
                        std::env::current_dir().context("cannot read the current directory")?;
                    let t = tempfile::Builder::new()
                        .prefix("sluice-bench-")
                        .tempdir_in(&cwd)
                        .context("cannot create a temp dir in the current directory")?;
                    let p = t.path().to_path_buf();
                    _temp_guard = t;
                    p
                }
            };
            Some(
                Broker::start_in_with_args(&dir, &["--group-initial-rebalance-delay-ms", "0"])
                    .context("cannot start sluice-broker")?,
            )
        }
    };
    let bootstrap = match (&args.bootstrap, &broker) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => b.bootstrap(),
        (None, None) => unreachable!("a broker is spawned when --bootstrap is absent"),
    };
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("sluice-bench-groups-{}", std::process::id()));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(create_topic(&bootstrap, &topic, args.group_partitions, &[]))
        .with_context(|| format!("cannot create topic {topic}"))?;

    let mut rounds = Vec::new();
    for round in 0..args.rebalance_rounds {
        let d = rebalance_round(args, &bootstrap, &topic, round)?;
        println!(
            "rebalance round {}: {:.1} ms",
            round + 1,
            d.as_secs_f64() * 1000.0
        );
        rounds.push(d);
    }
    rounds.sort();
    let median = rounds[rounds.len() / 2];
    let (sync, asyncr) = commit_bench(args, &bootstrap, &topic)?;
    // Cross-check against the broker's own request counter.
    let broker_commits = broker.as_ref().and_then(|b| {
        let m = http_get(b.admin_addr(), "/metrics").ok()?;
        m.body
            .lines()
            .find(|l| l.starts_with("sluice_requests_total{api=\"OffsetCommit\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    });
    if let Some(b) = broker.as_mut() {
        b.kill();
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!("| measurement | result |");
    println!("|---|---:|");
    println!(
        "| rebalance, 3rd member subscribes → all 3 assigned (median of {}) | {:.1} ms (min {:.1}, max {:.1}) |",
        rounds.len(),
        ms(median),
        ms(rounds[0]),
        ms(rounds[rounds.len() - 1])
    );
    println!(
        "| sync commits/s ({} partitions each) | {:.0} ({} ok, {} failed in {:.2} s) |",
        args.group_partitions,
        rate(sync.ok as f64, sync.elapsed),
        sync.ok,
        sync.failed,
        sync.elapsed.as_secs_f64()
    );
    println!(
        "| async commits/s (bursts of {} + 1 sync barrier, {} partitions each) | {:.0} ({} sent, {} barrier failures in {:.2} s) |",
        args.async_burst,
        args.group_partitions,
        rate(asyncr.ok as f64, asyncr.elapsed),
        asyncr.ok,
        asyncr.failed,
        asyncr.elapsed.as_secs_f64()
    );
    if let Some(n) = broker_commits {
        println!();
        println!(
            "broker counted {n} OffsetCommit requests (client: {} sync + {} async/barrier)",
            sync.ok + sync.failed,
            asyncr.ok + asyncr.failed
        );
    }
    println!();
    println!(
        "Rebalance time includes up to one heartbeat.interval.ms ({} ms) for the existing \
         members to learn of the rebalance.",
        args.heartbeat_interval_ms
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// --mode plugins

/// Produce throughput and p99 latency with each kind of plugin bound, as
/// ratios to the same workload with no plugin, against one spawned broker.
fn plugins_main(args: &Args) -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: mode=plugins brokers={} rounds={} records={} record_size={} partitions={} acks={} compression={} linger_ms={}",
        args.brokers,
        args.plugin_rounds,
        args.records,
        args.record_size,
        args.partitions,
        args.acks,
        args.compression,
        args.linger_ms
    );
    let dir = args.plugins_dir.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/examples/target/wasm32-unknown-unknown/release")
    });
    let spawned = Spawned::start(args.brokers)?;
    let (bootstrap, admin_addr, rf) = (
        spawned.bootstrap(),
        spawned.brokers()[0].admin_addr(),
        spawned.replication_factor(),
    );
    for (name, kind, file) in [
        ("trivial", "partitioner", "trivial_partitioner.wasm"),
        ("stamp", "interceptor", "stamp_header.wasm"),
        ("half", "filter", "keep_half.wasm"),
    ] {
        let path = dir.join(file);
        let wasm = fs::read(&path).with_context(|| {
            format!("cannot read {} (run scripts/build-plugins)", path.display())
        })?;
        let resp = http_post(
            admin_addr,
            &format!("/v1/plugins/{name}?kind={kind}"),
            &wasm,
        )?;
        if resp.status != 201 {
            bail!("uploading {name}: {} {}", resp.status, resp.body);
        }
    }
    let brokers = spawned.brokers();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let scenarios: [(&str, Vec<(&str, &str)>); 4] = [
        ("no plugin", vec![]),
        (
            "trivial partitioner",
            vec![("sluice.partitioner", "trivial")],
        ),
        (
            "interceptor: rewrite one header",
            vec![("sluice.interceptors", "stamp")],
        ),
        ("filter: keep half", vec![("sluice.filters", "half")]),
    ];
    // Rounds run every scenario once, in order; each scenario's median over
    // the rounds is reported, so one slow phase of a noisy machine does not
    // decide a ratio.
    let mut samples: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); scenarios.len()];
    for round in 0..args.plugin_rounds.max(1) {
        for (i, (label, configs)) in scenarios.iter().enumerate() {
            let topic = format!("sluice-bench-plugins-{}-{round}-{i}", std::process::id());
            runtime
                .block_on(create_replicated_topic(
                    &bootstrap,
                    &topic,
                    args.partitions,
                    rf,
                    configs,
                ))
                .with_context(|| format!("cannot create topic {topic}"))?;
            let measured = Round::prepare(&runtime, &bootstrap, &brokers, &topic, args.partitions)?;
            let r = produce(args, &base_config(&bootstrap), &topic)?;
            let cpu = measured.finish(&runtime)?;
            if r.failed > 0 {
                eprintln!("warning: {label}: {} records failed delivery", r.failed);
            }
            let rps = rate(r.acked as f64, r.elapsed);
            let mbs = rate((r.acked * args.record_size as u64) as f64 / MB, r.elapsed);
            let p99 = r.latency.value_at_quantile(0.99) as f64 / 1000.0;
            let cpu_us = cpu.as_secs_f64() * 1e6 / r.acked.max(1) as f64;
            println!(
                "round {round}: {label}: {} acked in {:.3} s, broker CPU {:.3} s ({cpu_us:.2} µs/record)",
                r.acked,
                r.elapsed.as_secs_f64(),
                cpu.as_secs_f64()
            );
            samples[i].push((rps, mbs, p99, cpu_us));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rows: Vec<(String, f64, f64, f64, f64)> = scenarios
        .iter()
        .zip(&samples)
        .map(|((label, _), s)| {
            (
                label.to_string(),
                median(&mut s.iter().map(|x| x.0).collect()),
                median(&mut s.iter().map(|x| x.1).collect()),
                median(&mut s.iter().map(|x| x.2).collect()),
                median(&mut s.iter().map(|x| x.3).collect()),
            )
        })
        .collect();
    let (_, base_rps, _, base_p99, base_cpu) = rows[0].clone();
    println!();
    println!(
        "| plugin | produce rec/s | MB/s | p99 latency ms | broker CPU µs/record | throughput vs no plugin | p99 vs no plugin | broker CPU vs no plugin |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, rps, mbs, p99, cpu) in &rows {
        println!(
            "| {label} | {rps:.0} | {mbs:.1} | {p99:.1} | {cpu:.2} | {:.2} | {:.2} | {:.2} |",
            rps / base_rps,
            p99 / base_p99.max(1e-9),
            cpu / base_cpu.max(1e-9)
        );
    }
    println!();
    println!(
        "Medians of {} rounds. Throughput counts acknowledged records (the filter's dropped half included).",
        args.plugin_rounds.max(1)
    );
    println!(
        "Broker CPU: user+system time of every broker process from the round's first record to the last replica caught up, per acknowledged record."
    );
    println!("Latency is open-loop (see the default mode).");
    Ok(())
}

// ---------------------------------------------------------------------------
// --mode transactions

/// One run of a producer that writes in rounds: the records' throughput,
/// and how long each round took from its last record's enqueue to done
/// (its records acknowledged; for a transaction, committed too).
struct RoundsResult {
    produced: ProduceResult,
    rounds: u64,
    round_wait_us: Histogram<u64>,
    /// commit_transaction() alone (transactional only).
    commit_us: Histogram<u64>,
}

/// Produces `args.records` records (acks=all, idempotent) in rounds of
/// `per_round`, one after another, as a consume-transform-produce loop
/// does: enqueue, wait for the acks, and when transactional begin before
/// and `commit_transaction()` after (EndTxn until the decision is
/// durable), so the two differ by the transaction alone. linger.ms 0: a
/// round waits for its records, not for the linger timer.
fn produce_in_rounds(
    args: &Args,
    bootstrap: &str,
    topic: &str,
    per_round: u64,
    transactional: bool,
) -> Result<RoundsResult> {
    let stats = Arc::new(Stats::new()?);
    let mut cfg: ClientConfig = base_config(bootstrap);
    cfg.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.messages", "1000000")
        // librdkafka: at most transaction.timeout.ms (60 s by default).
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "0");
    if transactional {
        cfg.set(
            "transactional.id",
            format!("sluice-bench-{}-{topic}", std::process::id()),
        );
    }
    if let Some(b) = args.batch_size {
        cfg.set("batch.size", b.to_string());
    }
    let producer: ThreadedProducer<BenchContext> = cfg
        .create_with_context(BenchContext(stats.clone()))
        .context("cannot create producer")?;
    let timeout = Duration::from_secs(60);
    if transactional {
        producer
            .init_transactions(timeout)
            .context("init_transactions")?;
    } else {
        // The idempotent producer gets its producer id on first use (about
        // half a second in librdkafka): before the clock starts, as
        // init_transactions does for the other.
        producer
            .send(BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, 0).payload(b"warm-up"))
            .map_err(|(e, _)| anyhow::anyhow!("warm-up record: {e}"))?;
        let started = Instant::now();
        while producer.in_flight_count() > 0 {
            if started.elapsed() > timeout {
                bail!("warm-up record not acknowledged within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        stats.acked.store(0, Ordering::Relaxed);
        if let Ok(mut h) = stats.latency_us.lock() {
            h.reset();
        }
    }
    let mut round_wait_us = latency_histogram()?;
    let mut commit_us = round_wait_us.clone();
    let pool = payload_pool(args.record_size);
    let start_us = stats.micros_now();
    let per_round = per_round.max(1);
    let mut rounds = 0;
    let mut seq = 0;
    while seq < args.records {
        if transactional {
            producer.begin_transaction().context("begin_transaction")?;
        }
        let end = (seq + per_round).min(args.records);
        for i in seq..end {
            let value = &pool[(i % pool.len() as u64) as usize];
            let record =
                BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, stats.micros_now() as usize)
                    .partition((i % args.partitions as u64) as i32)
                    .payload(value.as_slice());
            enqueue(&producer, &stats, record).with_context(|| format!("record {i}"))?;
        }
        let waiting = Instant::now();
        // Not `flush()` (nor commit_transaction's own flush): with delivery
        // reports as events, served by the producer's polling thread,
        // both wait in 100 ms steps.
        while producer.in_flight_count() > 0 {
            if waiting.elapsed() > timeout {
                bail!("round {rounds} not acknowledged within {timeout:?}");
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        if transactional {
            let committing = Instant::now();
            producer
                .commit_transaction(timeout)
                .context("commit_transaction")?;
            commit_us.saturating_record((committing.elapsed().as_micros() as u64).max(1));
        }
        round_wait_us.saturating_record((waiting.elapsed().as_micros() as u64).max(1));
        rounds += 1;
        seq = end;
    }
    let end_us = stats.micros_now();
    let latency = stats.latency();
    Ok(RoundsResult {
        produced: ProduceResult {
            acked: stats.acked.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            elapsed: Duration::from_micros(end_us.saturating_sub(start_us)),
            latency,
        },
        rounds,
        round_wait_us,
        commit_us,
    })
}

/// Transactional produce throughput as ratios to idempotent acks=all
/// produce of the same records in the same run: pipelined (a producer that
/// never waits), and in rounds of the same size without the transaction
/// (the transaction's own cost); and how long each commit takes.
fn transactions_main(args: &Args) -> Result<()> {
    if args.partitions < 1 || args.records == 0 || args.record_size == 0 {
        bail!("--partitions, --records and --record-size must be positive");
    }
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: mode=transactions brokers={} rounds={} records={} record_size={} partitions={} records_per_transaction={:?} compression={} linger_ms={}",
        args.brokers,
        args.transaction_rounds,
        args.records,
        args.record_size,
        args.partitions,
        args.records_per_transaction,
        args.compression,
        args.linger_ms
    );
    let spawned = Spawned::start(args.brokers)?;
    let (bootstrap, brokers, rf) = (
        spawned.bootstrap(),
        spawned.brokers(),
        spawned.replication_factor(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    // (label, records per round (0: pipelined), transactional)
    let mut scenarios: Vec<(String, u64, bool)> =
        vec![("idempotent, pipelined".to_string(), 0, false)];
    for &n in &args.records_per_transaction {
        scenarios.push((format!("idempotent, rounds of {n}"), n, false));
        scenarios.push((format!("transactional, {n} records/txn"), n, true));
    }
    struct Sample {
        records_per_s: f64,
        p99_ms: f64,
        cpu_us: f64,
        wait_p50_ms: f64,
        wait_p99_ms: f64,
        commit_p50_ms: f64,
        commit_p99_ms: f64,
    }
    let mut samples: Vec<Vec<Sample>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..args.transaction_rounds.max(1) {
        for (i, (label, per_round, transactional)) in scenarios.iter().enumerate() {
            let topic = format!("sluice-bench-txn-{}-{round}-{i}", std::process::id());
            runtime
                .block_on(create_replicated_topic(
                    &bootstrap,
                    &topic,
                    args.partitions,
                    rf,
                    &[],
                ))
                .with_context(|| format!("cannot create topic {topic}"))?;
            let measured = Round::prepare(&runtime, &bootstrap, &brokers, &topic, args.partitions)?;
            let (r, rounds) = if *per_round == 0 {
                let mut a = args.clone();
                a.acks = "all".to_string();
                (produce(&a, &base_config(&bootstrap), &topic)?, None)
            } else {
                let t = produce_in_rounds(args, &bootstrap, &topic, *per_round, *transactional)?;
                (t.produced, Some((t.rounds, t.round_wait_us, t.commit_us)))
            };
            let cpu = measured.finish(&runtime)?;
            if r.failed > 0 {
                eprintln!("warning: {label}: {} records failed delivery", r.failed);
            }
            let cpu_us = cpu.as_secs_f64() * 1e6 / r.acked.max(1) as f64;
            let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "round {round}: {label}: {} acked in {:.3} s{}, broker CPU {:.3} s ({cpu_us:.2} µs/record)",
                r.acked,
                r.elapsed.as_secs_f64(),
                rounds
                    .as_ref()
                    .map(|(n, _, _)| format!(" in {n} rounds"))
                    .unwrap_or_default(),
                cpu.as_secs_f64()
            );
            samples[i].push(Sample {
                records_per_s: rate(r.acked as f64, r.elapsed),
                p99_ms: ms(&r.latency, 0.99),
                cpu_us,
                wait_p50_ms: rounds.as_ref().map_or(0.0, |(_, h, _)| ms(h, 0.5)),
                wait_p99_ms: rounds.as_ref().map_or(0.0, |(_, h, _)| ms(h, 0.99)),
                commit_p50_ms: rounds.as_ref().map_or(0.0, |(_, _, h)| ms(h, 0.5)),
                commit_p99_ms: rounds.as_ref().map_or(0.0, |(_, _, h)| ms(h, 0.99)),
            });
        }
    }
    let median = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rows: Vec<[f64; 7]> = samples
        .iter()
        .map(|s| {
            [
                median(s.iter().map(|x| x.records_per_s).collect()),
                median(s.iter().map(|x| x.p99_ms).collect()),
                median(s.iter().map(|x| x.cpu_us).collect()),
                median(s.iter().map(|x| x.wait_p50_ms).collect()),
                median(s.iter().map(|x| x.wait_p99_ms).collect()),
                median(s.iter().map(|x| x.commit_p50_ms).collect()),
                median(s.iter().map(|x| x.commit_p99_ms).collect()),
            ]
        })
        .collect();
    let pipelined = rows[0];
    let cell = |v: f64| {
        if v > 0.0 {
            format!("{v:.2}")
        } else {
            "-".to_string()
        }
    };
    println!();
    println!(
        "| producer ({} broker{}) | rec/s | MB/s | p99 record latency ms | round wait p50 ms | round wait p99 ms | commit p50 ms | commit p99 ms | broker CPU µs/record | throughput vs pipelined | throughput vs same rounds without txn | CPU vs pipelined |",
        args.brokers,
        if args.brokers > 1 { "s, RF 3" } else { "" }
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, ((label, _, transactional), r)) in scenarios.iter().zip(&rows).enumerate() {
        let vs_rounds = if *transactional {
            format!("{:.2}", r[0] / rows[i - 1][0].max(1e-9))
        } else {
            "-".to_string()
        };
        println!(
            "| {label} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {:.2} | {:.2} | {vs_rounds} | {:.2} |",
            r[0],
            r[0] * args.record_size as f64 / MB,
            r[1],
            cell(r[3]),
            cell(r[4]),
            cell(r[5]),
            cell(r[6]),
            r[2],
            r[0] / pipelined[0].max(1e-9),
            r[2] / pipelined[2].max(1e-9)
        );
    }
    println!();
    println!(
        "Medians of {} rounds. Rounds run one after another, as a consume-transform-produce loop does; a round's wait runs from its last record's enqueue until its records are acknowledged (and, transactional, commit_transaction() returned: the decision durable).",
        args.transaction_rounds.max(1)
    );
    Ok(())
}

/// The brokers a mode spawns, in a temporary directory under the current
/// one (the filesystem the baselines measure): one, or a cluster whose
/// topics are replicated on all of them.
struct Spawned {
    // Declared before the directory: the brokers stop before it goes.
    brokers: Brokers,
    _dir: tempfile::TempDir,
}

enum Brokers {
    One(Box<Broker>),
    Cluster(sluice_tests::cluster::Cluster),
}

impl Spawned {
    fn start(brokers: usize) -> Result<Spawned> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir_in(&cwd)
            .context("cannot create a temp dir in the current directory")?;
        let brokers = if brokers > 1 {
            Brokers::Cluster(
                sluice_tests::cluster::Cluster::start_in(dir.path(), brokers, &[])
                    .context("cannot start the cluster")?,
            )
        } else {
            Brokers::One(Box::new(
                Broker::start_in(dir.path()).context("cannot start sluice-broker")?,
            ))
        };
        Ok(Spawned { brokers, _dir: dir })
    }

    fn bootstrap(&self) -> String {
        match &self.brokers {
            Brokers::One(b) => b.bootstrap(),
            Brokers::Cluster(c) => c.bootstrap(),
        }
    }

    fn brokers(&self) -> Vec<&Broker> {
        match &self.brokers {
            Brokers::One(b) => vec![b],
            Brokers::Cluster(c) => c.brokers.iter().collect(),
        }
    }

    /// Topics are replicated on every broker.
    fn replication_factor(&self) -> i32 {
        self.brokers().len() as i32
    }
}

/// A topic with `rf` replicas per partition (min.insync.replicas 2 when
/// replicated) and `configs`.
async fn create_replicated_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rf: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let admin = sluice_tests::admin_client(bootstrap)?;
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(rf));
    if rf > 1 {
        t = t.set("min.insync.replicas", "2");
    }
    for (k, v) in configs {
        t = t.set(k, v);
    }
    for r in admin
        .create_topics([&t], &sluice_tests::admin_opts())
        .await?
    {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    Ok(())
}

/// acks=1 vs acks=all on a 3-broker cluster (RF 3, min.insync.replicas 2),
/// then failover time: a producer writes one acks=all record every 2 ms
/// while the leader of partition 0 is SIGKILLed; the time from the kill to
/// the first acknowledgement of a record sent after it is what a client
/// sees of a failover.
fn cluster_main(args: &Args) -> Result<()> {
    use sluice_tests::cluster::Cluster;
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: mode=cluster brokers=3 rf=3 min.insync.replicas=2 rounds={} failover_rounds={} records={} record_size={} partitions={} linger_ms={} (broker defaults: session timeout 3000 ms, heartbeat 500 ms)",
        args.cluster_rounds,
        args.failover_rounds,
        args.records,
        args.record_size,
        args.partitions,
        args.linger_ms
    );
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut cluster = Cluster::start_in(&cwd, 3, &[]).context("cannot start the cluster")?;
    let bootstrap = cluster.bootstrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let create = |topic: &str| -> Result<()> {
        runtime.block_on(async {
            use rdkafka::admin::{NewTopic, TopicReplication};
            let admin = sluice_tests::admin_client(&bootstrap)?;
            let t = NewTopic::new(topic, args.partitions, TopicReplication::Fixed(3))
                .set("min.insync.replicas", "2");
            for r in admin
                .create_topics([&t], &sluice_tests::admin_opts())
                .await?
            {
                r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
            }
            Ok(())
        })
    };
    // Per acks setting, per round.
    let mut samples: [Vec<ClusterSample>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.cluster_rounds.max(1) {
        for (i, acks) in ["1", "all"].iter().enumerate() {
            let topic = format!("sluice-bench-cluster-{}-{round}-{acks}", std::process::id());
            create(&topic)?;
            let brokers: Vec<&Broker> = cluster.brokers.iter().collect();
            let measured = Round::prepare(&runtime, &bootstrap, &brokers, &topic, args.partitions)?;
            let mut a = args.clone();
            a.acks = acks.to_string();
            let r = produce(&a, &base_config(&bootstrap), &topic)?;
            let cpu = measured.finish(&runtime)?;
            if r.failed > 0 {
                eprintln!("warning: acks={acks}: {} records failed delivery", r.failed);
            }
            let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
            let cpu_us = cpu.as_secs_f64() * 1e6 / r.acked.max(1) as f64;
            println!(
                "round {round}: acks={acks}: {} acked in {:.3} s, broker CPU {:.3} s ({cpu_us:.2} µs/record)",
                r.acked,
                r.elapsed.as_secs_f64(),
                cpu.as_secs_f64()
            );
            samples[i].push(ClusterSample {
                records_per_s: rate(r.acked as f64, r.elapsed),
                mb_per_s: rate((r.acked * args.record_size as u64) as f64 / MB, r.elapsed),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                cpu_us_per_record: cpu_us,
            });
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Each column's median over the rounds.
    let rows: Vec<ClusterSample> = samples
        .iter()
        .map(|s| ClusterSample {
            records_per_s: median(s.iter().map(|x| x.records_per_s).collect()),
            mb_per_s: median(s.iter().map(|x| x.mb_per_s).collect()),
            p50_ms: median(s.iter().map(|x| x.p50_ms).collect()),
            p99_ms: median(s.iter().map(|x| x.p99_ms).collect()),
            cpu_us_per_record: median(s.iter().map(|x| x.cpu_us_per_record).collect()),
        })
        .collect();

    let topic = format!("sluice-bench-failover-{}", std::process::id());
    create(&topic)?;
    let mut failovers = Vec::new();
    for round in 0..args.failover_rounds.max(1) {
        let took = runtime.block_on(time_failover(&mut cluster, &topic))?;
        println!("failover {round}: {:.0} ms", took.as_secs_f64() * 1000.0);
        failovers.push(took.as_secs_f64() * 1000.0);
    }

    println!();
    println!(
        "| acks (RF 3) | produce rec/s | MB/s | p50 ms | p99 ms | brokers' CPU µs/record | throughput vs acks=1 | p99 vs acks=1 | CPU vs acks=1 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = &rows[0];
    for (label, r) in ["1", "all"].iter().zip(&rows) {
        println!(
            "| {label} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.records_per_s,
            r.mb_per_s,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us_per_record,
            r.records_per_s / base.records_per_s,
            r.p99_ms / base.p99_ms.max(1e-9),
            r.cpu_us_per_record / base.cpu_us_per_record.max(1e-9)
        );
    }
    let mut sorted = failovers.clone();
    sorted.sort_by(f64::total_cmp);
    println!();
    println!(
        "failover (SIGKILL of the leader → next acks=all ack of a record sent after it): median {:.0} ms, min {:.0} ms, max {:.0} ms over {} kills",
        median(failovers),
        sorted.first().copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
        sorted.len()
    );
    Ok(())
}

/// One measured round on a fresh topic, isolated from the rounds around
/// it. Before: one acks=all record per partition (a fresh topic's
/// followers start fetching once they applied its creation; that start-up
/// is not throughput) and an idle cluster. After: the replicas converged
/// (acks=1 returns before the followers have the data; the next round must
/// not pay for this one's replication), the topic deleted and the page
/// cache written out. Without the delete, each round runs slower than the
/// one before on these VMs: writing to memory the guest has not touched
/// yet costs more than reusing freed pages, whatever the broker does.
struct Round<'a> {
    bootstrap: &'a str,
    brokers: &'a [&'a Broker],
    topic: &'a str,
    partitions: i32,
    /// The brokers' CPU time when the round started.
    cpu_at_start: Duration,
}

impl<'a> Round<'a> {
    fn prepare(
        runtime: &tokio::runtime::Runtime,
        bootstrap: &'a str,
        brokers: &'a [&'a Broker],
        topic: &'a str,
        partitions: i32,
    ) -> Result<Round<'a>> {
        let mut round = Round {
            bootstrap,
            brokers,
            topic,
            partitions,
            cpu_at_start: Duration::ZERO,
        };
        runtime.block_on(round.warm_up())?;
        round.settle()?;
        round.cpu_at_start = brokers_cpu(brokers)?;
        Ok(round)
    }

    /// Returns the brokers' CPU time from the start until every replica had
    /// the round's records (the replication an acks=1 producer does not
    /// wait for is part of the round's cost).
    fn finish(self, runtime: &tokio::runtime::Runtime) -> Result<Duration> {
        self.converge()?;
        let cpu = brokers_cpu(self.brokers)?.saturating_sub(self.cpu_at_start);
        runtime.block_on(async {
            let admin = sluice_tests::admin_client(self.bootstrap)?;
            for r in admin
                .delete_topics(&[self.topic], &sluice_tests::admin_opts())
                .await?
            {
                r.map_err(|(n, e)| anyhow::anyhow!("delete {n}: {e:?}"))?;
            }
            anyhow::Ok(())
        })?;
        let give_up = Instant::now() + Duration::from_secs(60);
        while self
            .brokers
            .iter()
            .any(|b| b.partition_dir(self.topic, 0).exists())
        {
            if Instant::now() > give_up {
                bail!(
                    "{}: partition directories not removed after delete",
                    self.topic
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        sync_disks()?;
        Ok(cpu)
    }

    async fn warm_up(&self) -> Result<()> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = sluice_tests::producer_config(self.bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .context("producer")?;
        for p in 0..self.partitions {
            producer
                .send(
                    FutureRecord::<[u8], [u8]>::to(self.topic)
                        .payload(b"warm-up")
                        .partition(p),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("warm-up write to {}-{p}: {e}", self.topic))?;
        }
        Ok(())
    }

    /// The replicas converged and the dirty pages written out.
    fn settle(&self) -> Result<()> {
        self.converge()?;
        sync_disks()
    }

    /// Waits until every replica of every partition stores as many bytes
    /// as the others.
    fn converge(&self) -> Result<()> {
        let stored = |b: &Broker, p: i32| -> Result<u64> {
            let mut total = 0;
            for seg in sluice_tests::segment_files(&b.partition_dir(self.topic, p))? {
                total += fs::metadata(&seg)?.len();
            }
            Ok(total)
        };
        let give_up = Instant::now() + Duration::from_secs(120);
        for p in 0..self.partitions {
            loop {
                let sizes: Vec<u64> = self
                    .brokers
                    .iter()
                    .map(|b| stored(b, p))
                    .collect::<Result<_>>()?;
                if sizes.windows(2).all(|w| w[0] == w[1]) {
                    break;
                }
                if Instant::now() > give_up {
                    bail!(
                        "{}-{p}: replicas did not converge: {sizes:?} bytes",
                        self.topic
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// User plus system CPU time of the broker processes so far (all their
/// threads, exited ones included), from `/proc/PID/stat`.
fn brokers_cpu(brokers: &[&Broker]) -> Result<Duration> {
    let mut ticks = 0u64;
    for b in brokers {
        let pid = b.pid().context("broker not running")?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces), from 3:
        // utime and stime are fields 14 and 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .context("malformed /proc/PID/stat")?;
        }
    }
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second()?,
    ))
}

fn clock_ticks_per_second() -> Result<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("cannot run getconf CLK_TCK")?;
    let t: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")?;
    Ok(*TICKS.get_or_init(|| t))
}

fn sync_disks() -> Result<()> {
    let synced = std::process::Command::new("sync")
        .status()
        .context("cannot run sync")?;
    anyhow::ensure!(synced.success(), "sync failed: {synced}");
    Ok(())
}

/// One cluster-mode round's figures.
struct ClusterSample {
    records_per_s: f64,
    mb_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The brokers' CPU time per acknowledged record.
    cpu_us_per_record: f64,
}

/// One leader kill under a steady trickle of acks=all records; returns the
/// time from the kill to the first ack of a record enqueued after it. The
/// killed broker is restarted and the ISR made whole before returning.
async fn time_failover(
    cluster: &mut sluice_tests::cluster::Cluster,
    topic: &str,
) -> Result<Duration> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    cluster.wait_until("a full ISR", Duration::from_secs(60), |c| {
        Ok(c.leader_and_isr(0, topic, 0)
            .map(|(l, isr)| l >= 0 && isr.len() == 3)
            .unwrap_or(false))
    })?;
    let producer: FutureProducer = sluice_tests::producer_config(&cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "60000")
        .create()
        .context("producer")?;
    // Warm up: metadata and connections in place before the kill.
    producer
        .send(
            FutureRecord::<[u8], [u8]>::to(topic)
                .payload(b"warm")
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("warm-up write: {e}"))?;
    let victim = usize::try_from(cluster.leader_and_isr(0, topic, 0)?.0)?;
    let killed_at = Instant::now();
    cluster.kill(victim);
    let mut pending = tokio::task::JoinSet::new();
    let recovered = loop {
        let fut = producer.send_result(
            FutureRecord::<[u8], [u8]>::to(topic)
                .payload(b"probe")
                .partition(0),
        );
        if let Ok(fut) = fut {
            pending
                .spawn(async move { fut.await.ok().and_then(|r| r.ok()).map(|_| Instant::now()) });
        }
        tokio::select! {
            Some(done) = pending.join_next() => {
                if let Ok(Some(at)) = done {
                    break at;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
        if killed_at.elapsed() > Duration::from_secs(60) {
            bail!("produce did not recover within 60 s");
        }
    };
    let took = recovered.duration_since(killed_at);
    pending.abort_all();
    cluster.restart(victim)?;
    Ok(took)
}

// ---------------------------------------------------------------------------
// --mode tls

/// Rounds of the TLS comparison (medians reported).
const TLS_ROUNDS: usize = 3;
/// Connections opened per transport for the set-up time.
const CONNECTS: usize = 50;

fn tls_main(args: &Args) -> Result<()> {
    use sluice_tests::cluster::{Cluster, SplitListeners};
    if args.brokers < 1 || args.partitions < 1 || args.records == 0 {
        bail!("--brokers, --partitions and --records must be positive");
    }
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: brokers={} records={} record_size={} partitions={} acks={} rounds={TLS_ROUNDS}",
        args.brokers, args.records, args.record_size, args.partitions, args.acks
    );
    let pki = sluice_tests::tls::TestPki::generate()?;
    let keystore = pki.broker_keystore.to_string_lossy().to_string();
    let ca = pki.ca.to_string_lossy().to_string();
    // Clients on CLIENT (SSL); the INTERNAL listener (PLAINTEXT, the
    // brokers' own) serves the plaintext clients of the comparison.
    let split = SplitListeners {
        client: "SSL",
        internal: "PLAINTEXT",
    };
    let cluster =
        Cluster::start_split(args.brokers, split, &["--ssl-keystore-location", &keystore])?;
    // A second cluster alike whose client listener is SASL_SSL, with one
    // SCRAM-SHA-512 user.
    let sasl_split = SplitListeners {
        client: "SASL_SSL",
        internal: "PLAINTEXT",
    };
    let sasl_cluster = Cluster::start_split(
        args.brokers,
        sasl_split,
        &["--ssl-keystore-location", &keystore],
    )?;
    let plain = base_config(&cluster.internal_bootstrap());
    let mut tls = base_config(&cluster.bootstrap());
    tls.set("security.protocol", "ssl")
        .set("ssl.ca.location", &ca);
    let mut sasl = base_config(&sasl_cluster.bootstrap());
    sasl.set("security.protocol", "sasl_ssl")
        .set("ssl.ca.location", &ca)
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "bench")
        .set("sasl.password", "bench-secret");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let admin = sluice_client::Connection::connect(
            sasl_cluster.internal_addr(0),
            "sluice-bench",
            Duration::from_secs(10),
        )
        .await?;
        sluice_tests::sasl::set_password(
            &admin,
            "bench",
            "bench-secret",
            sluice_tests::sasl::SCRAM_SHA_512,
        )
        .await
    })?;
    let rf = args.brokers.min(3) as i32;
    let mut rates: [[Vec<f64>; 3]; 2] = Default::default();
    // The brokers' own CPU per record in each phase: what TLS costs the
    // broker, apart from what it costs the client sharing these cores.
    let mut broker_cpu_us: [[Vec<f64>; 3]; 2] = Default::default();
    for round in 0..TLS_ROUNDS {
        for (i, (label, client, bootstrap)) in [
            ("PLAINTEXT", &plain, cluster.internal_bootstrap()),
            ("SSL", &tls, cluster.internal_bootstrap()),
            ("SASL_SSL", &sasl, sasl_cluster.internal_bootstrap()),
        ]
        .into_iter()
        .enumerate()
        {
            let topic = format!("sluice-bench-tls-{}-{round}-{i}", std::process::id());
            runtime.block_on(create_replicated_topic(
                &bootstrap,
                &topic,
                args.partitions,
                rf,
                &[],
            ))?;
            let serving: Vec<&Broker> = if i == 2 {
                sasl_cluster.brokers.iter().collect()
            } else {
                cluster.brokers.iter().collect()
            };
            let cpu_at_start = brokers_cpu(&serving)?;
            let p = produce(args, client, &topic)?;
            if p.failed > 0 {
                eprintln!("warning: {label}: {} records failed delivery", p.failed);
            }
            let cpu_produced = brokers_cpu(&serving)?;
            let c = consume(args, client, &topic)?;
            let cpu_consumed = brokers_cpu(&serving)?;
            // Nine topics of `--records` records, three times over on
            // three brokers, would fill a small disk: each goes when done.
            runtime.block_on(async {
                let admin = sluice_tests::admin_client(&bootstrap)?;
                for r in admin
                    .delete_topics(&[&topic], &sluice_tests::admin_opts())
                    .await?
                {
                    r.map_err(|(n, e)| anyhow::anyhow!("delete {n}: {e:?}"))?;
                }
                anyhow::Ok(())
            })?;
            let produce_rps = rate(p.acked as f64, p.elapsed);
            let consume_rps = rate(c.records as f64, c.elapsed);
            println!(
                "round {round}: {label}: produce {produce_rps:.0} rec/s, consume {consume_rps:.0} rec/s"
            );
            rates[0][i].push(produce_rps);
            rates[1][i].push(consume_rps);
            let per_record =
                |cpu: Duration, records: u64| cpu.as_secs_f64() * 1e6 / records.max(1) as f64;
            broker_cpu_us[0][i].push(per_record(
                cpu_produced.saturating_sub(cpu_at_start),
                p.acked,
            ));
            broker_cpu_us[1][i].push(per_record(
                cpu_consumed.saturating_sub(cpu_produced),
                c.records,
            ));
        }
    }
    let plain_transport = sluice_client::Transport::Plain;
    let tls_transport = sluice_client::Transport::tls(sluice_client::tls::ClientTls {
        truststore: pki.ca.clone(),
        keystore: None,
        verify_hostname: true,
    })?;
    let plain_connect = runtime.block_on(connect_times(
        cluster.internal_addr(0),
        &plain_transport,
        None,
    ))?;
    let tls_connect = runtime.block_on(connect_times(cluster.addr(0), &tls_transport, None))?;
    let sasl_connect = runtime.block_on(connect_times(
        sasl_cluster.addr(0),
        &tls_transport,
        Some(("bench", "bench-secret")),
    ))?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    println!(
        "| | PLAINTEXT rec/s | SSL rec/s | SASL_SSL rec/s | SSL / PLAINTEXT | SASL_SSL / PLAINTEXT |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, rates) in ["produce", "consume"].iter().zip(rates.iter_mut()) {
        let [p, t, s] = rates;
        let (p, t, s) = (median(p), median(t), median(s));
        println!(
            "| {what} | {p:.0} | {t:.0} | {s:.0} | {:.2} | {:.2} |",
            t / p,
            s / p
        );
    }
    println!();
    println!(
        "| brokers' CPU µs per record | PLAINTEXT | SSL | SASL_SSL | PLAINTEXT / SSL | PLAINTEXT / SASL_SSL |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, costs) in ["produce", "consume"].iter().zip(broker_cpu_us.iter_mut()) {
        let [p, t, s] = costs;
        let (p, t, s) = (median(p), median(t), median(s));
        // Inverted, so that like the throughput ratios it reads as the
        // share of PLAINTEXT's records the same broker CPU serves.
        println!(
            "| {what} | {p:.2} | {t:.2} | {s:.2} | {:.2} | {:.2} |",
            p / t.max(1e-9),
            p / s.max(1e-9)
        );
    }
    println!();
    println!(
        "| connection set-up (connect, handshakes, one ApiVersions) | PLAINTEXT ms | SSL ms | SASL_SSL (PLAIN login) ms |"
    );
    println!("|---|---:|---:|---:|");
    for q in [0.5, 0.99] {
        let ms = |h: &Histogram<u64>| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| p{} | {:.3} | {:.3} | {:.3} |",
            q * 100.0,
            ms(&plain_connect),
            ms(&tls_connect),
            ms(&sasl_connect)
        );
    }
    Ok(())
}

/// Opens `CONNECTS` connections one after another, each until its first
/// answer (ApiVersions), in microseconds; with `login`, a SASL PLAIN login
/// (user, password) first.
async fn connect_times(
    addr: &str,
    transport: &sluice_client::Transport,
    login: Option<(&str, &str)>,
) -> Result<Histogram<u64>> {
    use kafka_protocol::messages::ApiVersionsRequest;
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..CONNECTS {
        let start = Instant::now();
        let conn = sluice_client::Connection::open(
            addr,
            "sluice-bench",
            Duration::from_secs(10),
            transport,
        )
        .await?;
        if let Some((user, password)) = login {
            sluice_tests::sasl::login_plain(&conn, user, password).await?;
        }
        conn.send(&ApiVersionsRequest::default(), 0, Duration::from_secs(10))
            .await?;
        h.record(start.elapsed().as_micros() as u64)?;
    }
    Ok(h)
}

/// Reassign mode: one partition (replicas [0, 1]) filled with `--records`
/// records, then moved to [0, 2]: the time from the AlterPartitionReassignments
/// answer until no move is listed, as MB/s of the partition's stored bytes;
/// once on a cluster without a throttle and once on one with
/// `--follower-replication-throttled-rate`.
fn reassign_main(args: &Args) -> Result<()> {
    use sluice_client::admin::Admin;
    use sluice_tests::cluster::Cluster;
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: mode=reassign brokers=3 records={} record_size={} throttle={} MB/s",
        args.records, args.record_size, args.throttle_mb
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let throttle = (args.throttle_mb * 1_000_000).to_string();
    let mut results = Vec::new();
    for (name, extra) in [
        ("unthrottled", vec![]),
        (
            "throttled",
            vec!["--follower-replication-throttled-rate", throttle.as_str()],
        ),
    ] {
        let cluster = Cluster::start_in(&cwd, 3, &extra).context("cannot start the cluster")?;
        let bootstrap = cluster.bootstrap();
        let topic = format!("sluice-bench-reassign-{}", std::process::id());
        runtime.block_on(async {
            use rdkafka::admin::{NewTopic, TopicReplication};
            let admin = sluice_tests::admin_client(&bootstrap)?;
            let t = NewTopic::new(&topic, 1, TopicReplication::Fixed(2));
            for r in admin
                .create_topics([&t], &sluice_tests::admin_opts())
                .await?
            {
                r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
            }
            anyhow::Ok(())
        })?;
        let mut a = args.clone();
        a.partitions = 1;
        a.acks = "all".into();
        let produced = produce(&a, &base_config(&bootstrap), &topic)?;
        let bytes: u64 = sluice_tests::segment_files(&cluster.brokers[0].partition_dir(&topic, 0))?
            .iter()
            .map(|f| fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        let elapsed = runtime.block_on(async {
            let admin = Admin::open(
                cluster.addr(0),
                "sluice-bench",
                &sluice_client::Transport::Plain,
            )
            .await?;
            let start = Instant::now();
            admin
                .alter_reassignments(&[sluice_client::admin::PartitionMove {
                    topic: topic.clone(),
                    partition: 0,
                    target: Some(vec![0, 2]),
                }])
                .await?;
            while !admin.list_reassignments(None).await?.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if start.elapsed() > Duration::from_secs(600) {
                    bail!("the move did not finish in 10 minutes");
                }
            }
            anyhow::Ok(start.elapsed())
        })?;
        let mb_s = rate(bytes as f64 / MB, elapsed);
        println!(
            "{name}: {} records acked, {:.1} MB moved in {:.2} s: {mb_s:.1} MB/s",
            produced.acked,
            bytes as f64 / MB,
            elapsed.as_secs_f64()
        );
        results.push((name, mb_s));
    }
    println!("\n| run | reassignment MB/s |\n|---|---:|");
    for (name, mb_s) in &results {
        println!("| {name} | {mb_s:.1} |");
    }
    Ok(())
}
