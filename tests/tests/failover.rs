//! Faults under load on a three-broker cluster, checked by the history
//! checker (`sluice_tests::history`): every record acknowledged with
//! acks=all by an idempotent producer is read back exactly once, at the
//! offset it was acknowledged with, in per-partition order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::Message;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::Offset;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::history::{History, Read, payload};
use sluice_tests::{
    admin_client, admin_opts, assign, enqueue, future_producer, stream_consumer, unique_name,
};

const PARTITIONS: i32 = 6;

fn args() -> Vec<&'static str> {
    let mut a: Vec<&str> = FAST_FAILOVER.to_vec();
    a.extend([
        "--replica-lag-time-max-ms",
        "3000",
        "--leader-imbalance-check-interval-ms",
        "1000",
    ]);
    a
}

async fn create(cluster: &Cluster, topic: &str) -> Result<()> {
    let admin = admin_client(&cluster.bootstrap())?;
    let t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2");
    for r in admin.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    Ok(())
}

/// Writes `<partition>-<seq>` round-robin over the partitions until
/// stopped, recording every delivery report in the history.
fn start_load(
    producer: Arc<FutureProducer>,
    topic: String,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut waiters = tokio::task::JoinSet::new();
        let mut seq = 0u64;
        while !stop.load(Ordering::Acquire) {
            for p in 0..PARTITIONS {
                let value = payload(p, seq);
                let fut = enqueue(
                    &producer,
                    FutureRecord::to(&topic)
                        .payload(value.as_bytes())
                        .partition(p),
                )
                .await?;
                let history = history.clone();
                waiters.spawn(async move {
                    let outcome = fut.await;
                    let mut h = history.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(Ok(d)) => h.acked(value, d.partition, d.offset),
                        _ => h.failed(),
                    }
                });
            }
            seq += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        while waiters.join_next().await.is_some() {}
        Ok(())
    })
}

/// A running load and its history.
struct Load {
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Load {
    fn start(cluster: &Cluster, topic: &str) -> Result<Load> {
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = idempotent_producer(&cluster.bootstrap())?;
        let task = start_load(producer, topic.to_string(), history.clone(), stop.clone());
        Ok(Load {
            history,
            stop,
            task,
        })
    }

    /// Stops the load, waits for every delivery report, reads everything
    /// back and asserts a clean history of more than `min_acked` records.
    async fn finish_and_check(
        self,
        cluster: &Cluster,
        topic: &str,
        min_acked: usize,
    ) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        self.task.await??;
        let reads = read_all(&cluster.bootstrap(), topic).await?;
        let report = self
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&reads);
        eprintln!("history: {report}");
        assert!(report.acked > min_acked, "the load ran: {report}");
        assert!(report.is_clean(), "{report}");
        Ok(())
    }
}

/// Reads every partition from the start until nothing new arrives.
async fn read_all(bootstrap: &str, topic: &str) -> Result<Vec<Read>> {
    let consumer = stream_consumer(bootstrap, &[])?;
    let parts: Vec<(&str, i32, Offset)> = (0..PARTITIONS)
        .map(|p| (topic, p, Offset::Beginning))
        .collect();
    assign(&consumer, &parts)?;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(m)) => out.push(Read {
                partition: m.partition(),
                offset: m.offset(),
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            }),
            Ok(Err(e)) => eprintln!("consumer error (retried): {e}"),
            Err(_) => return Ok(out),
        }
    }
}

/// acks=all, idempotent, and patient enough to ride through failovers.
fn idempotent_producer(bootstrap: &str) -> Result<Arc<FutureProducer>> {
    Ok(Arc::new(future_producer(
        bootstrap,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "60000"),
            ("request.timeout.ms", "5000"),
            ("retry.backoff.ms", "100"),
        ],
    )?))
}

fn all_in_sync(c: &Cluster, via: usize, topic: &str) -> Result<bool> {
    let md = c.metadata(via, Some(topic))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic")?;
    Ok(t.partitions()
        .iter()
        .all(|p| p.isr().len() == 3 && p.leader() >= 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_then_the_controller_under_load_loses_nothing() -> Result<()> {
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("failover");
    create(&cluster, &topic).await?;
    let load = Load::start(&cluster, &topic)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The leader of partition 0 dies and comes back.
    let victim = usize::try_from(cluster.leader_and_isr(0, &topic, 0)?.0)?;
    cluster.kill(victim);
    let survivor = (victim + 1) % 3;
    cluster.wait_until("partition 0 fails over", Duration::from_secs(20), |c| {
        let l = c.leader_and_isr(survivor, &topic, 0)?.0;
        Ok(l >= 0 && l != victim as i32)
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(victim)?;
    cluster.wait_until("all replicas back in sync", Duration::from_secs(30), |c| {
        all_in_sync(c, survivor, &topic)
    })?;

    // Then the controller.
    let controller = usize::try_from(cluster.controller(survivor)?)?;
    cluster.kill(controller);
    let other = (controller + 1) % 3;
    cluster.wait_until("a new controller", Duration::from_secs(20), |c| {
        let now = c.controller(other)?;
        Ok(now >= 0 && now != controller as i32)
    })?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(controller)?;
    cluster.wait_until("all replicas back in sync", Duration::from_secs(30), |c| {
        all_in_sync(c, other, &topic)
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    load.finish_and_check(&cluster, &topic, 1000).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() -> Result<()> {
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("rolling");
    create(&cluster, &topic).await?;
    let load = Load::start(&cluster, &topic)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        cluster.restart(i)?;
        let via = (i + 1) % 3;
        cluster.wait_until("all replicas back in sync", Duration::from_secs(30), |c| {
            all_in_sync(c, via, &topic)
        })?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish_and_check(&cluster, &topic, 500).await
}
