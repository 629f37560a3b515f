//! The plugin registry is cluster metadata: a plugin uploaded to one
//! broker is installed by every broker and runs wherever a partition's
//! leader is.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::Offset;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::{
    admin_client, admin_opts, assign, await_deliveries, consume_n, enqueue, future_producer,
    header_pairs, http_delete, http_get, http_post, stream_consumer, unique_name,
};

fn module(file: &str) -> Result<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples/target/wasm32-unknown-unknown/release")
        .join(file);
    std::fs::read(&path).with_context(|| format!("{} (run scripts/build-plugins)", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_to_one_broker_runs_on_every_leader() -> Result<()> {
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let wasm = module("stamp_header.wasm")?;
    let up = http_post(
        cluster.brokers[1].admin_addr(),
        "/v1/plugins/stamp?kind=interceptor",
        &wasm,
    )?;
    assert_eq!(up.status, 201, "{}", up.body);
    cluster.wait_until("every broker installs it", Duration::from_secs(10), |c| {
        Ok((0..3).all(|i| {
            http_get(c.brokers[i].admin_addr(), "/v1/plugins/stamp").is_ok_and(|r| r.status == 200)
        }))
    })?;

    // One partition led by each broker, all bound to the plugin.
    let topic = unique_name("stamped");
    let admin = admin_client(&cluster.bootstrap())?;
    let t =
        NewTopic::new(&topic, 3, TopicReplication::Fixed(1)).set("sluice.interceptors", "stamp");
    for r in admin.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    let producer = future_producer(&cluster.bootstrap(), &[("acks", "all")])?;
    let mut pending = Vec::new();
    for p in 0..3 {
        pending.push(
            enqueue(
                &producer,
                FutureRecord::to(&topic)
                    .payload(b"x".as_slice())
                    .partition(p),
            )
            .await?,
        );
    }
    await_deliveries(pending).await?;
    let consumer = stream_consumer(&cluster.bootstrap(), &[])?;
    let parts: Vec<(&str, i32, Offset)> = (0..3)
        .map(|p| (topic.as_str(), p, Offset::Beginning))
        .collect();
    assign(&consumer, &parts)?;
    for m in consume_n(&consumer, 3, Duration::from_secs(20)).await? {
        assert!(
            header_pairs(&m).contains(&("stamped".to_string(), Some(b"1".to_vec()))),
            "partition {} was not intercepted",
            rdkafka::Message::partition(&m)
        );
    }

    // Deleting through another broker removes it everywhere.
    let del = http_delete(
        cluster.brokers[2].admin_addr(),
        "/v1/plugins/stamp?force=true",
    )?;
    assert_eq!(del.status, 204, "{}", del.body);
    cluster.wait_until("every broker removes it", Duration::from_secs(10), |c| {
        Ok((0..3).all(|i| {
            http_get(c.brokers[i].admin_addr(), "/v1/plugins/stamp").is_ok_and(|r| r.status == 404)
        }))
    })?;
    Ok(())
}
