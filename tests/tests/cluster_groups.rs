//! Consumer groups in a three-broker cluster: the coordinator is the
//! leader of the group's offsets partition, and committed offsets survive
//! that broker's death (the new coordinator loads them from its replica).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use rdkafka::Message;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::{
    admin_client, admin_opts, await_deliveries, consume_n, drain_extra, enqueue, future_producer,
    stream_consumer, unique_name,
};

/// Kafka's group → offsets partition mapping (Java `String.hashCode`).
fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (h.unsigned_abs() % partitions as u32) as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_the_coordinator() -> Result<()> {
    let mut args = FAST_FAILOVER.to_vec();
    args.extend(["--group-initial-rebalance-delay-ms", "0"]);
    let mut cluster = Cluster::start(3, &args)?;
    let topic = unique_name("grouped");
    let admin = admin_client(&cluster.bootstrap())?;
    for r in admin
        .create_topics(
            [&NewTopic::new(&topic, 3, TopicReplication::Fixed(3))],
            &admin_opts(),
        )
        .await?
    {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    let producer = future_producer(&cluster.bootstrap(), &[("acks", "all")])?;
    let mut pending = Vec::new();
    for i in 0..300 {
        let v = format!("v{i}");
        pending.push(
            enqueue(
                &producer,
                FutureRecord::to(&topic)
                    .payload(v.as_bytes())
                    .partition(i % 3),
            )
            .await?,
        );
    }
    await_deliveries(pending).await?;

    let group = unique_name("g");
    let first = stream_consumer(&cluster.bootstrap(), &[("group.id", &group)])?;
    first.subscribe(&[&topic])?;
    let got = consume_n(&first, 150, Duration::from_secs(30)).await?;
    let mut next: HashMap<i32, i64> = HashMap::new();
    for m in &got {
        let e = next.entry(m.partition()).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &next {
        tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))?;
    }
    first.commit(&tpl, CommitMode::Sync)?;
    drop(first);

    let p = offsets_partition(&group, 16);
    let coordinator = usize::try_from(cluster.leader_and_isr(0, "__consumer_offsets", p)?.0)?;
    cluster.kill(coordinator);
    let via = (coordinator + 1) % 3;
    cluster.wait_until("coordination moves", Duration::from_secs(20), |c| {
        let l = c.leader_and_isr(via, "__consumer_offsets", p)?.0;
        Ok(l >= 0 && l != coordinator as i32)
    })?;

    let live: Vec<String> = (0..3)
        .filter(|i| *i != coordinator)
        .map(|i| cluster.addr(i).to_string())
        .collect();
    let second = stream_consumer(&live.join(","), &[("group.id", &group)])?;
    second.subscribe(&[&topic])?;
    let rest = consume_n(&second, 150, Duration::from_secs(30)).await?;
    for m in &rest {
        let committed = next.get(&m.partition()).copied().unwrap_or(0);
        assert!(
            m.offset() >= committed,
            "partition {} offset {} was already committed (next {committed})",
            m.partition(),
            m.offset()
        );
    }
    let extra = drain_extra(&second, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "{} records read twice", extra.len());
    Ok(())
}
