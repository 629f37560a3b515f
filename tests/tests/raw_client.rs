//! The benchmark's raw pipelined client against a real broker: five big
//! Produce requests in flight on one connection must all be answered in
//! order, and every record must come back through Fetch. Keeps the bench's
//! broker-capacity mode honest (it cannot silently measure failures).

use sluice_tests::raw_client::{RawProduceSettings, consume, produce};
use sluice_tests::{Broker, create_topic, pseudo_random_bytes, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_then_fetch_everything() {
    let broker = Broker::start().expect("broker should start");
    let bs = broker.bootstrap();
    let topic = unique_name("raw");
    create_topic(&bs, &topic, 3, &[])
        .await
        .expect("create topic");
    let values: Vec<Vec<u8>> = (0..8).map(|i| pseudo_random_bytes(i, 700)).collect();
    let (bs2, topic2) = (bs.clone(), topic.clone());
    let (produced, consumed) = tokio::task::spawn_blocking(move || {
        let produced = produce(&RawProduceSettings {
            bootstrap: &bs2,
            topic: &topic2,
            partitions: 3,
            values: &values,
            records: 20_000,
            batch_bytes: 256 * 1024,
            acks: 1,
            max_in_flight: 5,
        })
        .expect("raw produce");
        let consumed = consume(&bs2, &topic2, 3, produced.records).expect("raw consume");
        (produced, consumed)
    })
    .await
    .expect("join");
    // 256 KiB / 700 B = 374 records per batch; 20000 rounds up to 54 batches.
    assert_eq!(produced.records, 54 * 374);
    assert_eq!(consumed.records, produced.records);
    assert_eq!(consumed.bytes, produced.bytes);
}
