//! Scaling a cluster 3 → 5 → 3 brokers under idempotent acks=all load,
//! driven by the admin calls the operator uses (`sluice_client::admin`):
//! new brokers join the controller quorum on their own and become voters;
//! `placement_moves` + AlterPartitionReassignments give them replicas;
//! before brokers go, every replica moves off them, then RemoveRaftVoter
//! and UnregisterBroker take them out. The history checker reads every
//! acknowledged record back: nothing lost, duplicated or reordered. A
//! removed broker started again on its old disk joins again.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rdkafka::admin::{NewTopic, TopicReplication};
use sluice_client::Transport;
use sluice_client::admin::{Admin, placement_moves};
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::load::{Load, plain, read_all};
use sluice_tests::{admin_client, admin_opts, unique_name};

const PARTITIONS: i32 = 6;

async fn admin(cluster: &Cluster, via: usize) -> Result<Admin> {
    Ok(Admin::open(cluster.addr(via), "scaling-test", &Transport::Plain).await?)
}

/// Sorted voter ids of the controller quorum, as broker `via` reports it.
async fn voters(cluster: &Cluster, via: usize) -> Result<Vec<i32>> {
    let q = admin(cluster, via).await?.quorum().await?;
    let mut ids: Vec<i32> = q.voters.iter().map(|v| v.id).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Moves every partition (internal topics too) onto `brokers`' placement
/// and waits until no move is left.
async fn place_on(cluster: &Cluster, via: usize, brokers: &[i32]) -> Result<usize> {
    let a = admin(cluster, via).await?;
    let moves = placement_moves(&a.cluster(None).await?, brokers)
        .map_err(|e| anyhow::anyhow!("placement: {}", e.0))?;
    a.alter_reassignments(&moves).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let left = a.list_reassignments(None).await?;
        if left.is_empty() {
            return Ok(moves.len());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "moves not done in 90 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Broker ids holding a replica of any partition, per broker `via`.
async fn holders(cluster: &Cluster, via: usize) -> Result<std::collections::BTreeSet<i32>> {
    let view = admin(cluster, via).await?.cluster(None).await?;
    Ok(view
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .flat_map(|p| p.replicas.iter().copied())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_to_five_to_three_brokers_under_load_loses_nothing() -> Result<()> {
    let mut cluster = Cluster::start(3, FAST_FAILOVER)?;
    let topic = unique_name("scaling");
    let rd = admin_client(&cluster.bootstrap())?;
    let t = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2");
    for r in rd.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    let load = Load::start(&cluster.bootstrap(), &topic, PARTITIONS, plain)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Scale up: two brokers on empty disks join and become voters.
    for _ in 0..2 {
        cluster.add_broker()?;
    }
    let all = [0, 1, 2, 3, 4];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while voters(&cluster, 0).await? != all {
        ensure!(
            std::time::Instant::now() < deadline,
            "voters: {:?}",
            voters(&cluster, 0).await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let moved = place_on(&cluster, 3, &all).await?;
    ensure!(moved > 0, "nothing moved onto the new brokers");
    let held = holders(&cluster, 4).await?;
    ensure!(
        held.contains(&3) && held.contains(&4),
        "new brokers hold no replica: {held:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Scale down: every replica off brokers 3 and 4, then they stop, leave
    // the quorum and the metadata.
    let kept = [0, 1, 2];
    place_on(&cluster, 0, &kept).await?;
    let held = holders(&cluster, 1).await?;
    ensure!(
        !held.contains(&3) && !held.contains(&4),
        "replicas left on the removed brokers: {held:?}"
    );
    for id in [4usize, 3] {
        // As a StatefulSet scales down: the pod stops (controlled
        // shutdown), then it leaves the quorum and the metadata.
        cluster.terminate(id)?;
        let a = admin(&cluster, 0).await?;
        a.remove_voter(id as i32).await?;
        // Fenced once its port refuses; then it can be unregistered.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match a.unregister_broker(id as i32).await {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("unregister {id}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    ensure!(voters(&cluster, 1).await? == kept);
    let view = admin(&cluster, 2).await?.cluster(None).await?;
    let brokers: Vec<i32> = view.brokers.iter().map(|b| b.id).collect();
    ensure!(brokers == kept, "brokers listed: {brokers:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let history = load.stop().await?;
    let live: Vec<&str> = kept.iter().map(|i| cluster.addr(*i as usize)).collect();
    let reads = read_all(&live.join(","), &topic, PARTITIONS, plain)
        .await
        .context("reading back")?;
    let report = history.check(&reads);
    eprintln!("history: {report}");
    if !report.is_clean() {
        for b in &cluster.brokers {
            b.dump_log();
        }
    }
    ensure!(report.acked > 1000, "the load ran: {report}");
    ensure!(report.is_clean(), "{report}");

    // Broker 4 back on its old disk (a scale-up onto a retained volume):
    // its log still calls it a voter, but the running quorum does not, so
    // it joins again and becomes a voter.
    cluster.start_again(4)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while voters(&cluster, 0).await? != [0, 1, 2, 4] {
        ensure!(
            std::time::Instant::now() < deadline,
            "broker 4 did not rejoin: voters {:?}",
            voters(&cluster, 0).await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let view = admin(&cluster, 0).await?.cluster(None).await?;
    ensure!(
        view.brokers.iter().any(|b| b.id == 4),
        "broker 4 registered again"
    );
    Ok(())
}
