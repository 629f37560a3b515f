//! Transactions, partition side, on a three-broker cluster: a producer's
//! transactional batches hold read_committed consumers at the last stable
//! offset until WriteTxnMarkers (what a transaction coordinator sends to
//! each partition leader) ends the transaction; an aborted transaction's
//! records never reach a read_committed consumer, also from a new leader
//! after the old one is killed. Raw requests stand in for the
//! transactional producer and its coordinator (issue #15 builds those).

use std::time::Duration;

use anyhow::{Result, ensure};
use rdkafka::Message;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::topic_partition_list::Offset;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::raw_client::{Idempotent, produce_idempotent, produce_once, write_txn_markers};
use sluice_tests::{
    admin_client, admin_opts, assign, consume_n, drain_extra, stream_consumer, unique_name,
};

const WAIT: Duration = Duration::from_secs(20);

/// The values a consumer with `isolation` reads from the start of the
/// partition: `expected` of them, then nothing more for a second.
async fn values(
    bootstrap: &str,
    topic: &str,
    isolation: &str,
    expected: usize,
) -> Result<Vec<String>> {
    let consumer = stream_consumer(bootstrap, &[("isolation.level", isolation)])?;
    assign(&consumer, &[(topic, 0, Offset::Beginning)])?;
    let mut got = consume_n(&consumer, expected, WAIT).await?;
    got.extend(drain_extra(&consumer, Duration::from_secs(1)).await);
    Ok(got
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect())
}

fn txn_batch(addr: &str, topic: &str, producer_id: i64, values: &[&str]) -> Result<()> {
    let producer = Idempotent {
        producer_id,
        producer_epoch: 0,
        first_sequence: 0,
        transactional: true,
    };
    let values: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
    let resp = produce_idempotent(addr, topic, 0, producer, &values)?;
    let p = &resp.responses[0].partition_responses[0];
    ensure!(
        p.error_code == 0,
        "transactional batch refused: {} {:?}",
        p.error_code,
        p.error_message
    );
    Ok(())
}

/// The raw client blocks; the consumers and the admin client are async.
#[test]
fn markers_end_transactions_for_read_committed_consumers_on_every_leader() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let mut cluster = Cluster::start(3, FAST_FAILOVER)?;
    let topic = unique_name("txn");
    let admin = admin_client(&cluster.bootstrap())?;
    let t = NewTopic::new(&topic, 1, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    for r in rt.block_on(admin.create_topics([&t], &admin_opts()))? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    let (leader, _) = cluster.leader_and_isr(0, &topic, 0)?;
    let addr = cluster.addr(leader as usize).to_string();

    txn_batch(
        &addr,
        &topic,
        1001,
        &["aborted-1", "aborted-2", "aborted-3"],
    )?;
    txn_batch(&addr, &topic, 1002, &["committed-1", "committed-2"])?;
    produce_once(&addr, &topic, 0, -1, &[b"plain".to_vec()], 5_000)?;
    let bootstrap = cluster.bootstrap();
    // Both transactions are open: read_committed stops at the first one.
    assert_eq!(
        rt.block_on(values(&bootstrap, &topic, "read_committed", 0))?,
        Vec::<String>::new()
    );
    assert_eq!(
        rt.block_on(values(&bootstrap, &topic, "read_uncommitted", 6))?
            .len(),
        6
    );

    assert_eq!(
        write_txn_markers(&addr, (1001, 0), false, &topic, &[0])?,
        vec![(0, 0)]
    );
    assert_eq!(
        write_txn_markers(&addr, (1002, 0), true, &topic, &[0])?,
        vec![(0, 0)]
    );
    let committed = vec!["committed-1", "committed-2", "plain"];
    assert_eq!(
        rt.block_on(values(&bootstrap, &topic, "read_committed", 3))?,
        committed
    );
    // read_uncommitted sees the aborted records too, never the markers.
    assert_eq!(
        rt.block_on(values(&bootstrap, &topic, "read_uncommitted", 6))?
            .len(),
        6
    );

    // The followers have the markers and index the aborted transaction
    // themselves: the next leader answers the same.
    cluster.kill(leader as usize);
    let via = (leader as usize + 1) % 3;
    cluster.wait_until("a new leader", WAIT, |c| {
        let now = c.leader_and_isr(via, &topic, 0)?.0;
        Ok(now >= 0 && now != leader)
    })?;
    assert_eq!(
        rt.block_on(values(&bootstrap, &topic, "read_committed", 3))?,
        committed
    );
    Ok(())
}
