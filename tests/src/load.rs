//! Load for fault tests: an idempotent acks=all producer writing unique
//! records to every partition of a topic until stopped, every delivery
//! report kept in a [`History`], and the readers and checks that follow.
//!
//! A record's identity is `<partition>-<seq>` (see `history::payload`):
//! the partition the producer addressed and its sequence there. Topics
//! with a partitioner plugin get a JSON value carrying that id and a
//! tenant, so the test can compute where the plugin must have put it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::Offset;

use crate::cluster::Cluster;
use crate::history::{History, Read, payload};
use crate::{assign, enqueue, future_producer, segment_files, stream_consumer};

/// What the producer sends as a record's value, given its id.
pub type ValueOf = fn(&str) -> String;

/// The id itself.
pub fn plain(id: &str) -> String {
    id.to_string()
}

/// Tenant of a record in the tenant-routed workload (11 tenants).
pub fn tenant_of(id: &str) -> String {
    let sum: u64 = id.bytes().map(u64::from).sum();
    format!("t{}", sum % 11)
}

/// `{"tenant":..,"id":..,"email":..}`: routed by the `tenant-router`
/// example, masked by `redact`.
pub fn tenant_json(id: &str) -> String {
    format!(
        r#"{{"tenant":"{}","id":"{id}","email":"{id}@example.com"}}"#,
        tenant_of(id)
    )
}

/// The id inside a value written by [`tenant_json`] (or the value itself).
pub fn id_in(value: &str) -> String {
    match value.split_once(r#""id":""#) {
        Some((_, rest)) => rest.split('"').next().unwrap_or_default().to_string(),
        None => value.to_string(),
    }
}

/// Like [`tenant_json`], with `"level":"debug"` on every seventh record,
/// which the `keep-filter` example drops.
pub fn tenant_json_with_debug(id: &str) -> String {
    let level = if filtered_out(id) { "debug" } else { "info" };
    format!(
        r#"{{"tenant":"{}","id":"{id}","level":"{level}","email":"{id}@example.com"}}"#,
        tenant_of(id)
    )
}

/// Whether [`tenant_json_with_debug`] marks `id` for the filter to drop.
pub fn filtered_out(id: &str) -> bool {
    id.rsplit('-')
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|seq| seq % 7 == 3)
}

/// Where the `tenant-router` example puts a tenant (FNV-1a, like the plugin).
pub fn tenant_partition(tenant: &str, partitions: i32) -> i32 {
    let h = tenant.bytes().fold(0x811c_9dc5u32, |h, x| {
        (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
    });
    (h % partitions as u32) as i32
}

/// acks=all, idempotent, and patient enough to ride through failovers.
pub fn idempotent_producer(bootstrap: &str) -> Result<Arc<FutureProducer>> {
    idempotent_producer_with(bootstrap, &[])
}

/// [`idempotent_producer`] with client settings added (security).
pub fn idempotent_producer_with(
    bootstrap: &str,
    client: &[(&str, &str)],
) -> Result<Arc<FutureProducer>> {
    let settings = [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("message.timeout.ms", "60000"),
        ("request.timeout.ms", "5000"),
        ("retry.backoff.ms", "100"),
    ];
    Ok(Arc::new(future_producer(
        bootstrap,
        &[&settings[..], client].concat(),
    )?))
}

/// A running load and its history.
pub struct Load {
    history: Arc<Mutex<History>>,
    gaps: Arc<Mutex<AckGaps>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// Per partition: when its last acknowledgement arrived, and the longest
/// time it went without one (how long it was unavailable to the producer)
/// with the wall-clock time that gap ended (to find it in broker logs).
#[derive(Default)]
struct AckGaps {
    last: HashMap<i32, Instant>,
    longest: HashMap<i32, (Duration, SystemTime)>,
}

impl AckGaps {
    fn acked(&mut self, partition: i32) {
        let now = Instant::now();
        if let Some(last) = self.last.insert(partition, now) {
            let gap = now.duration_since(last);
            let longest = self
                .longest
                .entry(partition)
                .or_insert((Duration::ZERO, UNIX_EPOCH));
            if gap > longest.0 {
                *longest = (gap, SystemTime::now());
            }
        }
    }
}

/// The longest a partition went without an acknowledgement.
#[derive(Clone, Copy)]
pub struct AckGap {
    pub partition: i32,
    pub length: Duration,
    /// When it ended (now, if it has not).
    pub ended: SystemTime,
}

impl std::fmt::Debug for AckGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unix = self.ended.duration_since(UNIX_EPOCH).unwrap_or_default();
        write!(
            f,
            "{:?} on partition {} (ended at unix time {}.{:03})",
            self.length,
            self.partition,
            unix.as_secs(),
            unix.subsec_millis()
        )
    }
}

impl Load {
    /// Writes ids `<p>-<seq>` round-robin over `partitions` partitions of
    /// `topic` (values from `value`) until stopped.
    pub fn start(bootstrap: &str, topic: &str, partitions: i32, value: ValueOf) -> Result<Load> {
        Self::start_with(bootstrap, &[], topic, partitions, value)
    }

    /// [`Load::start`] with client settings added (security).
    pub fn start_with(
        bootstrap: &str,
        client: &[(&str, &str)],
        topic: &str,
        partitions: i32,
        value: ValueOf,
    ) -> Result<Load> {
        let history = Arc::new(Mutex::new(History::default()));
        let gaps = Arc::new(Mutex::new(AckGaps::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = idempotent_producer_with(bootstrap, client)?;
        let (h, g, s, topic) = (
            history.clone(),
            gaps.clone(),
            stop.clone(),
            topic.to_string(),
        );
        let task = tokio::spawn(async move {
            let mut waiters = tokio::task::JoinSet::new();
            let mut seq = 0u64;
            while !s.load(Ordering::Acquire) {
                for p in 0..partitions {
                    let id = payload(p, seq);
                    let v = value(&id);
                    let fut = enqueue(
                        &producer,
                        FutureRecord::to(&topic).payload(v.as_bytes()).partition(p),
                    )
                    .await?;
                    let (h, g) = (h.clone(), g.clone());
                    waiters.spawn(async move {
                        let outcome = fut.await;
                        let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                        match outcome {
                            Ok(Ok(d)) => {
                                h.acked(id, d.partition, d.offset);
                                g.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .acked(d.partition);
                            }
                            _ => h.failed(),
                        }
                    });
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            while waiters.join_next().await.is_some() {}
            Ok(())
        });
        Ok(Load {
            history,
            gaps,
            stop,
            task,
        })
    }

    /// Forgets the gaps that ended so far: `longest_ack_gap` measures from
    /// now on, except that a gap still open counts whole (a stall that
    /// spans two measured steps is not split between them).
    pub fn reset_ack_gaps(&self) {
        let mut g = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        g.longest.clear();
    }

    /// The longest time any partition went without an acknowledgement so
    /// far (counting the time since its last one).
    pub fn longest_ack_gap(&self) -> AckGap {
        let g = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        g.last
            .iter()
            .map(|(p, last)| {
                let (longest, ended) = g
                    .longest
                    .get(p)
                    .copied()
                    .unwrap_or((Duration::ZERO, UNIX_EPOCH));
                let current = now.duration_since(*last);
                let (length, ended) = if current > longest {
                    (current, SystemTime::now())
                } else {
                    (longest, ended)
                };
                AckGap {
                    partition: *p,
                    length,
                    ended,
                }
            })
            .max_by_key(|gap| gap.length)
            .unwrap_or(AckGap {
                partition: -1,
                length: Duration::ZERO,
                ended: SystemTime::now(),
            })
    }

    /// Stops the load and waits for every delivery report.
    pub async fn stop(self) -> Result<History> {
        self.stop.store(true, Ordering::Release);
        self.task.await??;
        let h = std::mem::take(&mut *self.history.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(h)
    }
}

/// Reads every partition of `topic` from the start until nothing new
/// arrives, mapping each value to its record id with `id`.
pub async fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    id: fn(&str) -> String,
) -> Result<Vec<Read>> {
    read_all_with(bootstrap, &[], topic, partitions, id).await
}

/// [`read_all`] with client settings added (security).
pub async fn read_all_with(
    bootstrap: &str,
    client: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    id: fn(&str) -> String,
) -> Result<Vec<Read>> {
    let consumer = stream_consumer(bootstrap, client)?;
    let parts: Vec<(&str, i32, Offset)> = (0..partitions)
        .map(|p| (topic, p, Offset::Beginning))
        .collect();
    assign(&consumer, &parts)?;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(m)) => out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                payload: id(&String::from_utf8_lossy(m.payload().unwrap_or_default())),
            }),
            Ok(Err(e)) => eprintln!("consumer error (retried): {e}"),
            Err(_) => return Ok(out),
        }
    }
}

/// Every partition of `topic` with RF > 1 has all its replicas in sync.
pub fn all_in_sync(c: &Cluster, via: usize, topic: &str) -> Result<bool> {
    let md = c.metadata(via, Some(topic))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic")?;
    Ok(t.partitions()
        .iter()
        .all(|p| p.isr().len() == p.replicas().len() && p.leader() >= 0))
}

/// The record batches a replica stores for a partition, as one byte
/// string (segment boundaries may differ between replicas; the batches do
/// not: followers store the leader's batches byte for byte).
pub fn stored_batches(partition_dir: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for seg in segment_files(partition_dir)? {
        out.extend(std::fs::read(&seg).with_context(|| format!("reading {}", seg.display()))?);
    }
    Ok(out)
}

/// Waits until every replica of every partition of `topic` stores the
/// same batches (after the load stopped and the cluster settled).
pub fn replicas_identical(c: &Cluster, topic: &str, partitions: i32) -> Result<()> {
    let md = c.metadata(0, Some(topic))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic")?;
    let replicas: BTreeMap<i32, Vec<i32>> = t
        .partitions()
        .iter()
        .map(|p| (p.id(), p.replicas().to_vec()))
        .collect();
    let mut last = String::new();
    for _ in 0..100 {
        let mut differing = Vec::new();
        for p in 0..partitions {
            let copies: Vec<Vec<u8>> = replicas
                .get(&p)
                .context("partition")?
                .iter()
                .map(|r| stored_batches(&c.brokers[*r as usize].partition_dir(topic, p)))
                .collect::<Result<_>>()?;
            if copies.windows(2).any(|w| w[0] != w[1]) {
                let sizes: Vec<usize> = copies.iter().map(Vec::len).collect();
                differing.push(format!("{topic}-{p}: {sizes:?} bytes"));
            }
        }
        if differing.is_empty() {
            return Ok(());
        }
        last = differing.join(", ");
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("replicas still differ: {last}")
}
