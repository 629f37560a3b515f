//! Partition replication across three broker processes: acks=all waits for
//! the ISR, followers hold the data when the leader dies, a restarted
//! broker catches up and rejoins the ISR, leadership returns to the
//! preferred replica, and too few in-sync replicas refuse acks=all.

use std::time::Duration;

use anyhow::{Result, bail};
use rdkafka::Message;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::Offset;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::{
    admin_client, admin_opts, assign, await_deliveries, consume_n, enqueue, future_producer,
    stream_consumer, unique_name,
};

const REPLICATION: &[&str] = &[
    "--replica-lag-time-max-ms",
    "2000",
    "--leader-imbalance-check-interval-ms",
    "500",
];

fn args() -> Vec<&'static str> {
    FAST_FAILOVER.iter().chain(REPLICATION).copied().collect()
}

async fn create(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    rf: i32,
    configs: &[(&str, &str)],
) -> Result<()> {
    let admin = admin_client(&cluster.bootstrap())?;
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(rf));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    for r in admin.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    Ok(())
}

/// Writes `record-<i>` for each `i` to partition 0 and waits for every ack.
async fn write_records(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    seqs: std::ops::Range<u32>,
) -> Result<()> {
    let mut pending = Vec::new();
    for i in seqs {
        let payload = format!("record-{i}");
        let record = FutureRecord::to(topic)
            .payload(payload.as_bytes())
            .partition(0);
        pending.push(enqueue(producer, record).await?);
    }
    await_deliveries(pending).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_writes_survive_the_leader_and_the_old_leader_rejoins() -> Result<()> {
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("replicated");
    create(&cluster, &topic, 1, 3, &[("min.insync.replicas", "2")]).await?;
    let producer = future_producer(
        &cluster.bootstrap(),
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
        ],
    )?;
    write_records(&producer, &topic, 0..300).await?;

    let (leader, isr) = cluster.leader_and_isr(0, &topic, 0)?;
    assert_eq!(isr.len(), 3, "all replicas in sync: {isr:?}");
    let leader = usize::try_from(leader)?;
    cluster.kill(leader);
    let other = (leader + 1) % 3;
    cluster.wait_until("a new leader", Duration::from_secs(20), |c| {
        let (l, _) = c.leader_and_isr(other, &topic, 0)?;
        Ok(l >= 0 && l != leader as i32)
    })?;

    // Everything acknowledged is on the new leader, once, in order.
    let live: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.addr(i).to_string())
        .collect();
    let consumer = stream_consumer(&live.join(","), &[])?;
    assign(&consumer, &[(&topic, 0, Offset::Beginning)])?;
    let got = consume_n(&consumer, 300, Duration::from_secs(30)).await?;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.offset(), i as i64);
        assert_eq!(m.payload(), Some(format!("record-{i}").as_bytes()));
    }

    // More writes while the old leader is down, then it comes back,
    // catches up, rejoins the ISR and (as preferred replica, if it was)
    // gets leadership back.
    write_records(&producer, &topic, 300..400).await?;
    cluster.restart(leader)?;
    cluster.wait_until(
        "the restarted broker rejoins the ISR",
        Duration::from_secs(30),
        |c| {
            let (_, isr) = c.leader_and_isr(other, &topic, 0)?;
            Ok(isr.contains(&(leader as i32)))
        },
    )?;
    // Leaders counted the ISR expansion and their elections (the dead
    // leader left the ISR by fencing, a controller action, not a shrink).
    let events = |event: &str| -> f64 {
        (0..3)
            .filter_map(|i| {
                cluster
                    .metric(
                        i,
                        &format!("sluice_replication_events_total{{event=\"{event}\"}}"),
                    )
                    .ok()
            })
            .sum()
    };
    assert!(events("isr_expands") >= 1.0, "expand counted");
    assert!(
        events("leader_elections") >= 1.0,
        "the new leader counted its election"
    );
    let md = cluster.metadata(other, Some(&topic))?;
    let preferred = md.topics()[0].partitions()[0].replicas()[0];
    cluster.wait_until(
        "leadership returns to the preferred replica",
        Duration::from_secs(30),
        |c| Ok(c.leader_and_isr(other, &topic, 0)?.0 == preferred),
    )?;
    let consumer = stream_consumer(&cluster.bootstrap(), &[])?;
    assign(&consumer, &[(&topic, 0, Offset::Beginning)])?;
    let got = consume_n(&consumer, 400, Duration::from_secs(30)).await?;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(
            m.payload(),
            Some(format!("record-{i}").as_bytes()),
            "offset {i}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_in_sync_replicas_refuse_acks_all_but_not_acks_1() -> Result<()> {
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("min-isr");
    // Partition 0 lives on brokers 0 and 1.
    let admin = admin_client(&cluster.bootstrap())?;
    let t = NewTopic::new(&topic, 1, TopicReplication::Variable(&[&[0, 1]]))
        .set("min.insync.replicas", "2");
    for r in admin.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    cluster.kill(1);
    cluster.wait_until("broker 1 leaves the ISR", Duration::from_secs(20), |c| {
        Ok(c.leader_and_isr(0, &topic, 0)? == (0, vec![0]))
    })?;
    let strict = future_producer(
        cluster.addr(0),
        // No retries: the broker's first answer is the delivery result.
        &[
            ("acks", "all"),
            ("retries", "0"),
            ("message.timeout.ms", "5000"),
        ],
    )?;
    let refused = strict
        .send(
            FutureRecord::<[u8], [u8]>::to(&topic)
                .payload(b"x")
                .partition(0),
            Duration::from_secs(5),
        )
        .await;
    match refused {
        Err((e, _)) => assert!(
            format!("{e:?}").contains("NotEnoughReplicas"),
            "expected NOT_ENOUGH_REPLICAS, got {e:?}"
        ),
        Ok(d) => bail!("acks=all was acknowledged with one in-sync replica: {d:?}"),
    }
    let relaxed = future_producer(cluster.addr(0), &[("acks", "1")])?;
    relaxed
        .send(
            FutureRecord::<[u8], [u8]>::to(&topic)
                .payload(b"y")
                .partition(0),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("acks=1 refused: {e}"))?;
    Ok(())
}

/// A byte flipped on disk in a follower's sealed segment: the background
/// scrub finds it, the follower cuts its log back to the damaged batch and
/// fetches the rest from the leader again, ending with the leader's exact
/// batches, while the partition stays writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_replica_repairs_itself_from_the_leader() -> Result<()> {
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("scrubbed");
    create(
        &cluster,
        &topic,
        1,
        3,
        &[("min.insync.replicas", "2"), ("segment.bytes", "2048")],
    )
    .await?;
    let producer = future_producer(&cluster.bootstrap(), &[("acks", "all"), ("linger.ms", "0")])?;
    for i in 0..60 {
        write_records(&producer, &topic, i..i + 1).await?;
    }
    let (leader, _) = cluster.leader_and_isr(0, &topic, 0)?;
    let victim = (usize::try_from(leader)? + 1) % 3;
    cluster.wait_until("replicas identical", Duration::from_secs(20), |c| {
        Ok(sluice_tests::load::replicas_identical(c, &topic, 1).is_ok())
    })?;
    cluster.kill(victim);
    let dir = cluster.brokers[victim].partition_dir(&topic, 0);
    let segments = sluice_tests::segment_files(&dir)?;
    anyhow::ensure!(segments.len() >= 3, "sealed segments: {segments:?}");
    let batches = sluice_tests::read_batches(&segments[1])?;
    let b = batches[1];
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segments[1])?;
        let at = b.position + b.size - 5;
        let mut byte = [0u8; 1];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut byte)?;
        byte[0] ^= 0x81;
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&byte)?;
        f.sync_all()?;
    }
    cluster.restart(victim)?;
    cluster.wait_until(
        "the scrub finds the damage and the replica repairs itself",
        Duration::from_secs(30),
        |c| {
            Ok(c.brokers[victim]
                .stderr_log()
                .contains("scrub: corrupt batch in a replica")
                && sluice_tests::load::replicas_identical(c, &topic, 1).is_ok())
        },
    )?;
    assert_eq!(
        cluster.metric(victim, "sluice_storage_corrupt_batches_total")?,
        1.0
    );
    // Still writable, and every record readable.
    write_records(&producer, &topic, 60..61).await?;
    let consumer = stream_consumer(&cluster.bootstrap(), &[])?;
    assign(&consumer, &[(&topic, 0, Offset::Beginning)])?;
    let got = consume_n(&consumer, 61, Duration::from_secs(20)).await?;
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload(), Some(format!("record-{i}").as_bytes()));
    }
    Ok(())
}
