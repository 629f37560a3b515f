//! `sluice-bench`: produce/consume throughput and produce latency against a
//! Sluice (or any Kafka) broker, next to the machine's sequential-write
//! baseline on the same filesystem.
//!
//! Without `--bootstrap` it spawns its own `sluice-broker` with a data dir
//! under `--data-dir` (default: a temporary directory in the current
//! working directory, so the baseline measures the same filesystem).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use sluice_tests::{Broker, base_config, create_topic, pseudo_random_bytes};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    about = "Produce/consume throughput and latency benchmark for Sluice"
)]
struct Args {
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
    /// Topic name (default: a fresh unique name).
    #[arg(long)]
    topic: Option<String>,
}

const MB: f64 = 1_000_000.0;

struct Stats {
    latency_us: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    failed: AtomicU64,
    last_ack: Mutex<Option<Instant>>,
}

struct BenchContext(Arc<Stats>);

impl ClientContext for BenchContext {}

impl ProducerContext for BenchContext {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at: Box<Instant>) {
        let now = Instant::now();
        match result {
            Ok(_) => {
                let us = now.duration_since(*sent_at).as_micros() as u64;
                if let Ok(mut h) = self.0.latency_us.lock() {
                    h.saturating_record(us.max(1));
                }
                self.0.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(mut last) = self.0.last_ack.lock() {
            *last = Some(now);
        }
    }
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

fn produce(args: &Args, bootstrap: &str, topic: &str) -> Result<ProduceResult> {
    let stats = Arc::new(Stats {
        latency_us: Mutex::new(
            Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")?,
        ),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        last_ack: Mutex::new(None),
    });
    let mut cfg: ClientConfig = base_config(bootstrap);
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
    let start = Instant::now();
    for seq in 0..args.records {
        let value = &pool[(seq % pool.len() as u64) as usize];
        let partition = (seq % args.partitions as u64) as i32;
        let mut record =
            BaseRecord::<[u8], [u8], Box<Instant>>::with_opaque_to(topic, Box::new(Instant::now()))
                .partition(partition)
                .payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), mut r)) => {
                    std::thread::sleep(Duration::from_micros(200));
                    // Latency is measured from the successful enqueue.
                    r.delivery_opaque = Box::new(Instant::now());
                    record = r;
                }
                Err((e, _)) => bail!("cannot enqueue record {seq}: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("producer flush timed out")?;
    let end = stats
        .last_ack
        .lock()
        .ok()
        .and_then(|l| *l)
        .unwrap_or_else(Instant::now);
    let latency = stats
        .latency_us
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    Ok(ProduceResult {
        acked: stats.acked.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        elapsed: end.duration_since(start),
        latency,
    })
}

struct ConsumeResult {
    records: u64,
    bytes: u64,
    elapsed: Duration,
}

fn consume(args: &Args, bootstrap: &str, topic: &str) -> Result<ConsumeResult> {
    let mut cfg = base_config(bootstrap);
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
    if args.partitions < 1 || args.records == 0 || args.record_size == 0 {
        bail!("--partitions, --records and --record-size must be positive");
    }
    let argv: Vec<String> = std::env::args().collect();
    println!("command: {}", argv.join(" "));
    println!(
        "settings: records={} record_size={} partitions={} acks={} compression={} linger_ms={} batch_size={} bootstrap={}",
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
    runtime
        .block_on(create_topic(&bootstrap, &topic, args.partitions, &[]))
        .with_context(|| format!("cannot create topic {topic}"))?;

    let produced = produce(&args, &bootstrap, &topic)?;
    if produced.failed > 0 {
        eprintln!("warning: {} records failed delivery", produced.failed);
    }
    let produced_bytes = produced.acked * args.record_size as u64;
    let consumed = consume(&args, &bootstrap, &topic)?;

    if let Some(b) = broker.as_mut() {
        b.kill();
    }
    let volume = args.records * args.record_size as u64;
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
    println!(
        "Latency is open-loop: records are enqueued as fast as librdkafka accepts them, \
         so it includes time queued in the client behind earlier records."
    );
    Ok(())
}
