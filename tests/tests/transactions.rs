//! Transactions on a three-broker cluster, as far as they go today (issue
//! #15): the partition side (last stable offset, aborted-transaction index,
//! read_committed fetches) is built and unit-tested in `sluice-storage`;
//! the transaction coordinator is not. Until it is, a transactional batch
//! is refused at once with a non-retriable error (nothing could end its
//! transaction, and an open one would hold read_committed consumers back
//! for good), and WriteTxnMarkers (what a coordinator sends each partition
//! leader) writes a marker that both kinds of consumer step over.

use std::time::Duration;

use anyhow::Result;
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

/// The raw client blocks; the consumers and the admin client are async.
#[test]
fn transactional_batches_fail_fast_and_markers_are_invisible_to_consumers() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let topic = unique_name("txn");
    let admin = admin_client(&cluster.bootstrap())?;
    let t = NewTopic::new(&topic, 1, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    for r in rt.block_on(admin.create_topics([&t], &admin_opts()))? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    let (leader, _) = cluster.leader_and_isr(0, &topic, 0)?;
    let addr = cluster.addr(leader as usize).to_string();
    produce_once(&addr, &topic, 0, -1, &[b"plain".to_vec()], 5_000)?;

    let producer = Idempotent {
        producer_id: 1001,
        producer_epoch: 0,
        first_sequence: 0,
        transactional: true,
    };
    let resp = produce_idempotent(&addr, &topic, 0, producer, &[b"in-a-txn".to_vec()])?;
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 48, "INVALID_TXN_STATE: {:?}", p.error_message);
    assert!(
        p.error_message
            .as_ref()
            .is_some_and(|m| m.contains("no transaction coordinator")),
        "{:?}",
        p.error_message
    );

    // A marker for a producer with nothing open here: written (acks=all),
    // ends nothing, and no consumer sees it.
    assert_eq!(
        write_txn_markers(&addr, (1001, 0), false, &topic, &[0])?,
        vec![(0, 0)]
    );
    produce_once(&addr, &topic, 0, -1, &[b"after".to_vec()], 5_000)?;
    let bootstrap = cluster.bootstrap();
    for isolation in ["read_committed", "read_uncommitted"] {
        assert_eq!(
            rt.block_on(values(&bootstrap, &topic, isolation, 2))?,
            vec!["plain", "after"],
            "{isolation}"
        );
    }
    // Markers go to partition leaders only.
    let follower = (0..3).find(|&i| i != leader).expect("three brokers") as usize;
    assert_eq!(
        write_txn_markers(cluster.addr(follower), (1001, 0), true, &topic, &[0])?,
        vec![(0, 6)],
        "NOT_LEADER_OR_FOLLOWER"
    );
    Ok(())
}
