//! Partition reassignment (KIP-455) on a three-broker cluster, through the
//! same admin calls (`sluice_client::admin`) the operator and the CLI use:
//! every replica moved under idempotent acks=all load, checked by the
//! history checker (nothing lost, duplicated or reordered); a move that
//! cannot finish is listed and cancelled; bad requests get Kafka's errors.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rdkafka::admin::{NewTopic, TopicReplication};
use sluice_client::Transport;
use sluice_client::admin::{Admin, AdminError, PartitionMove};
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::load::{Load, plain, read_all, replicas_identical};
use sluice_tests::{admin_client, admin_opts, unique_name};

const PARTITIONS: i32 = 6;

fn args() -> Vec<&'static str> {
    let mut a: Vec<&str> = FAST_FAILOVER.to_vec();
    a.extend(["--replica-lag-time-max-ms", "3000"]);
    a
}

async fn create(cluster: &Cluster, topic: &str, replicas: i32) -> Result<()> {
    let admin = admin_client(&cluster.bootstrap())?;
    let t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(replicas))
        .set("min.insync.replicas", "2");
    for r in admin.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    Ok(())
}

async fn admin(cluster: &Cluster, via: usize) -> Result<Admin> {
    Ok(Admin::open(cluster.addr(via), "reassignment-test", &Transport::Plain).await?)
}

/// Each partition's replicas, from broker `via`'s metadata.
fn replicas(cluster: &Cluster, via: usize, topic: &str) -> Result<Vec<Vec<i32>>> {
    let md = cluster.metadata(via, Some(topic))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic")?;
    let mut parts: Vec<_> = t.partitions().iter().collect();
    parts.sort_by_key(|p| p.id());
    Ok(parts.iter().map(|p| p.replicas().to_vec()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_every_replica_and_leader_under_load_loses_nothing() -> Result<()> {
    let cluster = Cluster::start(3, &args())?;
    let topic = unique_name("moving");
    create(&cluster, &topic, 2).await?;
    let before = replicas(&cluster, 0, &topic)?;
    let load = Load::start(&cluster.bootstrap(), &topic, PARTITIONS, plain)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Partition i sits on [i, i+1] (mod 3) and moves to [i+1, i+2]: its
    // leader leaves, a broker that never had it joins.
    let target: Vec<Vec<i32>> = (0..PARTITIONS)
        .map(|i| vec![(i + 1) % 3, (i + 2) % 3])
        .collect();
    for (i, r) in before.iter().enumerate() {
        ensure!(
            *r == vec![i as i32 % 3, (i as i32 + 1) % 3],
            "placement {before:?}"
        );
    }
    let moves: Vec<PartitionMove> = target
        .iter()
        .enumerate()
        .map(|(i, t)| PartitionMove {
            topic: topic.clone(),
            partition: i as i32,
            target: Some(t.clone()),
        })
        .collect();
    admin(&cluster, 1)
        .await?
        .alter_reassignments(&moves)
        .await?;
    // Every broker applies the completed moves: replicas, leaders inside
    // the targets, the old replicas' logs gone and the new ones' there.
    cluster.wait_until("every move done", Duration::from_secs(60), |c| {
        for via in 0..3 {
            if replicas(c, via, &topic)? != target {
                return Ok(false);
            }
            let md = c.metadata(via, Some(&topic))?;
            let led_inside = md.topics()[0]
                .partitions()
                .iter()
                .all(|p| target[p.id() as usize].contains(&p.leader()));
            if !led_inside {
                return Ok(false);
            }
        }
        for (p, (old, new)) in before.iter().zip(&target).enumerate() {
            let p = p as i32;
            for gone in old.iter().filter(|b| !new.contains(b)) {
                if c.brokers[*gone as usize].partition_dir(&topic, p).exists() {
                    return Ok(false);
                }
            }
            for here in new {
                if !c.brokers[*here as usize].partition_dir(&topic, p).exists() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    let ongoing = admin(&cluster, 0).await?.list_reassignments(None).await?;
    ensure!(ongoing.is_empty(), "still moving: {ongoing:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let history = load.stop().await?;
    let reads = read_all(&cluster.bootstrap(), &topic, PARTITIONS, plain).await?;
    let report = history.check(&reads);
    eprintln!("history: {report}");
    if !report.is_clean() {
        for b in &cluster.brokers {
            b.dump_log();
        }
    }
    ensure!(report.acked > 500, "the load ran: {report}");
    ensure!(report.is_clean(), "{report}");
    replicas_identical(&cluster, &topic, PARTITIONS)
}

/// The Kafka error code of a refused admin call.
fn refused(result: Result<(), AdminError>) -> Result<i16> {
    match result {
        Err(e) => e.code().context(e.to_string()),
        Ok(()) => anyhow::bail!("accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_cannot_finish_is_listed_and_cancelled() -> Result<()> {
    // New replicas may fetch 1 byte/s: one fetch (64 KiB) and they stall.
    let mut slow = args();
    slow.extend(["--follower-replication-throttled-rate", "1"]);
    let cluster = Cluster::start(3, &slow)?;
    let topic = unique_name("stuck");
    create(&cluster, &topic, 2).await?;
    let a = admin(&cluster, 0).await?;

    // Bad requests: Kafka's error codes, nothing changes.
    let one = |t: &str, p: i32, r: Option<Vec<i32>>| {
        vec![PartitionMove {
            topic: t.to_string(),
            partition: p,
            target: r,
        }]
    };
    ensure!(refused(a.alter_reassignments(&one("nope", 0, Some(vec![0]))).await)? == 3);
    ensure!(refused(a.alter_reassignments(&one(&topic, 99, Some(vec![0]))).await)? == 3);
    ensure!(
        refused(
            a.alter_reassignments(&one(&topic, 0, Some(vec![0, 7])))
                .await
        )? == 39
    );
    ensure!(
        refused(
            a.alter_reassignments(&one(&topic, 0, Some(vec![1, 1])))
                .await
        )? == 39
    );
    ensure!(refused(a.alter_reassignments(&one(&topic, 0, None)).await)? == 85);

    // Partition 0 ([0, 1]) holds more than a throttled fetch brings, and
    // moves to [0, 2]: broker 2 starts following, then stalls.
    let producer = sluice_tests::future_producer(&cluster.bootstrap(), &[])?;
    let value = "x".repeat(1024);
    for _ in 0..200 {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to(&topic)
                    .partition(0)
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    }
    a.alter_reassignments(&one(&topic, 0, Some(vec![0, 2])))
        .await?;
    let listed = a.list_reassignments(Some(&[topic.as_str()])).await?;
    ensure!(listed.len() == 1, "{listed:?}");
    let m = &listed[0];
    ensure!(
        (
            m.partition,
            m.replicas.clone(),
            m.adding.clone(),
            m.removing.clone()
        ) == (0, vec![0, 2, 1], vec![2], vec![1]),
        "{m:?}"
    );
    let dir = cluster.brokers[2].partition_dir(&topic, 0);
    cluster.wait_until("broker 2 follows", Duration::from_secs(30), |c| {
        Ok(dir.exists() && replicas(c, 2, &topic)?[0] == vec![0, 2, 1])
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        a.list_reassignments(None).await?.len() == 1,
        "a move at 1 byte/s finished"
    );

    // Cancelled: back to [0, 1] everywhere, and broker 2's copy is gone.
    a.alter_reassignments(&one(&topic, 0, None)).await?;
    ensure!(a.list_reassignments(None).await?.is_empty());
    cluster.wait_until("cancelled everywhere", Duration::from_secs(30), |c| {
        Ok(
            (0..3).all(|via| replicas(c, via, &topic).is_ok_and(|r| r[0] == vec![0, 1]))
                && !dir.exists(),
        )
    })?;
    Ok(())
}
