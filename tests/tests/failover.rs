//! Faults under load on a three-broker cluster, checked by the history
//! checker (`sluice_tests::history`): every record acknowledged with
//! acks=all by an idempotent producer is read back exactly once, at the
//! offset it was acknowledged with, in per-partition order.

use std::time::Duration;

use anyhow::Result;
use rdkafka::admin::{NewTopic, TopicReplication};
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::load::{Load, all_in_sync, plain, read_all};
use sluice_tests::{admin_client, admin_opts, unique_name};

const PARTITIONS: i32 = 6;

/// The tests here run one at a time: each measures how long partitions go
/// without acknowledgements, and two 3-broker clusters under load on two
/// cores would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// Stops the load, reads everything back and asserts a clean history of
/// more than `min_acked` records.
async fn finish_and_check(
    load: Load,
    cluster: &Cluster,
    topic: &str,
    min_acked: usize,
) -> Result<()> {
    let history = load.stop().await?;
    let reads = read_all(&cluster.bootstrap(), topic, PARTITIONS, plain).await?;
    let report = history.check(&reads);
    eprintln!("history: {report}");
    assert!(report.acked > min_acked, "the load ran: {report}");
    if !report.is_clean() {
        // Every broker's log, for the post-mortem.
        for b in &cluster.brokers {
            b.dump_log();
        }
    }
    assert!(report.is_clean(), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_then_the_controller_under_load_loses_nothing() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("failover");
    create(&cluster, &topic).await?;
    let load = Load::start(&cluster.bootstrap(), &topic, PARTITIONS, plain)?;
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

    // Then the controller: partitions it only followed must not wait for
    // it long (it is fenced, and leaves their ISRs, once its port refuses).
    let controller = usize::try_from(cluster.controller(survivor)?)?;
    load.reset_ack_gaps();
    cluster.kill(controller);
    let other = (controller + 1) % 3;
    cluster.wait_until("a new controller", Duration::from_secs(20), |c| {
        let now = c.controller(other)?;
        Ok(now >= 0 && now != controller as i32)
    })?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gap = load.longest_ack_gap();
    eprintln!("controller killed: longest gap between acknowledgements {gap:?}");
    cluster.restart(controller)?;
    cluster.wait_until("all replicas back in sync", Duration::from_secs(30), |c| {
        all_in_sync(c, other, &topic)
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    finish_and_check(load, &cluster, &topic, 1000).await
}

/// A rolling restart the way Kubernetes does one: SIGTERM, wait for the
/// exit, start again, wait until in sync, next broker. Controlled shutdown
/// hands every leadership to an in-sync follower first, so no partition
/// goes without acknowledgements for long (see the bound below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_stalls_no_partition() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("rolling");
    create(&cluster, &topic).await?;
    let load = Load::start(&cluster.bootstrap(), &topic, PARTITIONS, plain)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.reset_ack_gaps();
    let mut shutdowns = Vec::new();
    let mut gaps = Vec::new();
    for i in 0..3 {
        shutdowns.push(cluster.terminate(i)?);
        // Down for a while, as a pod being replaced is.
        tokio::time::sleep(Duration::from_secs(2)).await;
        gaps.push(("down", i, load.longest_ack_gap()));
        load.reset_ack_gaps();
        cluster.start_again(i)?;
        let via = (i + 1) % 3;
        cluster.wait_until("all replicas back in sync", Duration::from_secs(30), |c| {
            all_in_sync(c, via, &topic)
        })?;
        // Its leaderships come back (preferred leader election) before the
        // next broker goes.
        cluster.wait_until("preferred leaders back", Duration::from_secs(30), |c| {
            let md = c.metadata(via, Some(&topic))?;
            Ok(md.topics()[0]
                .partitions()
                .iter()
                .all(|p| p.replicas().first() == Some(&p.leader())))
        })?;
        gaps.push(("back", i, load.longest_ack_gap()));
        load.reset_ack_gaps();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    gaps.push(("after", 3, load.longest_ack_gap()));
    eprintln!("longest gap between acknowledgements in each step: {gaps:#?}");
    let gap = gaps
        .iter()
        .map(|(_, _, gap)| *gap)
        .max_by_key(|gap| gap.length)
        .expect("steps were measured");
    eprintln!(
        "controlled shutdowns took {shutdowns:?}; longest gap between acknowledgements: {gap:?}"
    );
    // Issue #14's target. Without controlled shutdown a partition stalls
    // for as long as its leader is down (2 s here); with it, and with
    // KIP-951's current leader in NOT_LEADER answers (clients go straight
    // to the new leader), the gaps measured 0.12-0.25 s.
    assert!(
        gap.length <= Duration::from_secs(1),
        "a partition went without an acknowledgement during the rolling restart for {gap:?}"
    );
    finish_and_check(load, &cluster, &topic, 500).await
}
