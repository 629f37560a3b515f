//! Plugins on a replicated cluster. The registry is cluster metadata: a
//! plugin uploaded to one broker is installed by every broker and runs
//! wherever a partition's leader is. Records a plugin routes to partitions
//! other brokers lead are forwarded to those leaders, and an idempotent
//! producer's acknowledged records are stored exactly once, where the
//! plugin put them, while leaders are killed and restarted.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::Offset;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::history::History;
use sluice_tests::load::{
    Load, ValueOf, all_in_sync, filtered_out, id_in, read_all, replicas_identical, tenant_json,
    tenant_json_with_debug, tenant_of, tenant_partition,
};
use sluice_tests::{
    admin_client, admin_opts, assign, await_deliveries, consume_n, enqueue, example_plugin,
    future_producer, header_pairs, http_delete, http_get, http_post, stream_consumer, unique_name,
};

/// A `.wat` fixture from `plugins/fixtures` (the broker compiles text too).
fn fixture(name: &str) -> Result<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/fixtures")
        .join(format!("{name}.wat"));
    std::fs::read(&path).with_context(|| path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_to_one_broker_runs_on_every_leader() -> Result<()> {
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let wasm = example_plugin("stamp_header.wasm")?;
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

const PARTITIONS: i32 = 6;

fn fault_args() -> Vec<&'static str> {
    let mut a: Vec<&str> = FAST_FAILOVER.to_vec();
    a.extend([
        "--replica-lag-time-max-ms",
        "3000",
        "--leader-imbalance-check-interval-ms",
        "1000",
    ]);
    a
}

/// 6 partitions, RF 3, min.insync.replicas 2, plus `configs`.
async fn create_replicated(cluster: &Cluster, topic: &str, configs: &[(&str, &str)]) -> Result<()> {
    let admin = admin_client(&cluster.bootstrap())?;
    let mut t = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2");
    for (k, v) in configs {
        t = t.set(k, v);
    }
    for r in admin.create_topics([&t], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    Ok(())
}

/// Kills the leader of `partition`, waits for the failover, restarts it
/// and waits until every replica is back in sync.
fn kill_and_restart_leader(cluster: &mut Cluster, topic: &str, partition: i32) -> Result<()> {
    let leader = usize::try_from(cluster.leader_and_isr(0, topic, partition)?.0)?;
    let via = (leader + 1) % 3;
    eprintln!("killing broker {leader}, leader of {topic}-{partition}");
    cluster.kill(leader);
    cluster.wait_until("the partition fails over", Duration::from_secs(20), |c| {
        let l = c.leader_and_isr(via, topic, partition)?.0;
        Ok(l >= 0 && l != leader as i32)
    })?;
    std::thread::sleep(Duration::from_millis(700));
    cluster.restart(leader)?;
    cluster.wait_until("all replicas back in sync", Duration::from_secs(30), |c| {
        all_in_sync(c, via, topic)
    })
}

/// Runs the tenant workload (values from `value`) into `topic` while the
/// leaders of partitions 0 and 1 are SIGKILLed and restarted one after the
/// other; returns the history once every delivery report is in.
async fn tenant_load_through_two_leader_kills(
    cluster: &mut Cluster,
    topic: &str,
    value: ValueOf,
) -> Result<History> {
    let load = Load::start(&cluster.bootstrap(), topic, PARTITIONS, value)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in [0, 1] {
        kill_and_restart_leader(cluster, topic, p)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let history = load.stop().await?;
    anyhow::ensure!(
        history.acked_count() > 300,
        "the load ran: {} acked",
        history.acked_count()
    );
    Ok(history)
}

fn routed_by_tenant(id: &str) -> i32 {
    tenant_partition(&tenant_of(id), PARTITIONS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_records_survive_leader_kills_exactly_once_where_the_partitioner_put_them()
-> Result<()> {
    let mut cluster = Cluster::start(3, &fault_args())?;
    cluster.upload_plugin(
        "tenant-router",
        "partitioner",
        &example_plugin("tenant_router.wasm")?,
    )?;
    let topic = unique_name("routed");
    create_replicated(&cluster, &topic, &[("sluice.partitioner", "tenant-router")]).await?;
    let history = tenant_load_through_two_leader_kills(&mut cluster, &topic, tenant_json).await?;
    let reads = read_all(&cluster.bootstrap(), &topic, PARTITIONS, id_in).await?;
    let report = history.check_routed(&reads, routed_by_tenant);
    eprintln!("history: {report}");
    assert!(report.is_clean(), "{report}");
    replicas_identical(&cluster, &topic, PARTITIONS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interceptor_chain_a_filter_and_a_partitioner_keep_exactly_once_through_leader_kills()
-> Result<()> {
    let mut cluster = Cluster::start(3, &fault_args())?;
    for (name, kind, file) in [
        ("tenant-router", "partitioner", "tenant_router.wasm"),
        ("stamp", "interceptor", "stamp_header.wasm"),
        ("redact", "interceptor", "redact.wasm"),
        ("keep", "filter", "keep_filter.wasm"),
    ] {
        cluster.upload_plugin(name, kind, &example_plugin(file)?)?;
    }
    let topic = unique_name("chained");
    create_replicated(
        &cluster,
        &topic,
        &[
            ("sluice.partitioner", "tenant-router"),
            ("sluice.interceptors", "stamp,redact"),
            ("sluice.filters", "keep"),
        ],
    )
    .await?;
    let history =
        tenant_load_through_two_leader_kills(&mut cluster, &topic, tenant_json_with_debug).await?;
    let reads = read_all(&cluster.bootstrap(), &topic, PARTITIONS, id_in).await?;
    // Debug records are dropped by the filter: none may be read.
    let report = history.check_routed(&reads, |id| {
        if filtered_out(id) {
            -1
        } else {
            routed_by_tenant(id)
        }
    });
    eprintln!("history: {report}");
    assert!(report.is_clean(), "{report}");
    // Every stored record went through both interceptors.
    let consumer = stream_consumer(&cluster.bootstrap(), &[])?;
    let parts: Vec<(&str, i32, Offset)> = (0..PARTITIONS)
        .map(|p| (topic.as_str(), p, Offset::Beginning))
        .collect();
    assign(&consumer, &parts)?;
    for m in consume_n(&consumer, 60, Duration::from_secs(20)).await? {
        let value =
            String::from_utf8_lossy(rdkafka::Message::payload(&m).unwrap_or_default()).into_owned();
        assert!(!value.contains("@example.com"), "not redacted: {value}");
        assert!(
            header_pairs(&m).iter().any(|(k, _)| k == "stamped"),
            "not stamped: {value}"
        );
    }
    replicas_identical(&cluster, &topic, PARTITIONS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_batches_land_exactly_once_through_leader_kills() -> Result<()> {
    let mut cluster = Cluster::start(3, &fault_args())?;
    cluster.upload_plugin("trap", "partitioner", &fixture("trap")?)?;
    let topic = unique_name("poisoned");
    let dlt = unique_name("dead-letters");
    create_replicated(&cluster, &dlt, &[]).await?;
    create_replicated(
        &cluster,
        &topic,
        &[
            ("sluice.partitioner", "trap"),
            ("sluice.plugin.failure.policy", "dead-letter"),
            ("sluice.plugin.dead.letter.topic", &dlt),
        ],
    )
    .await?;
    let history = tenant_load_through_two_leader_kills(&mut cluster, &topic, tenant_json).await?;
    // Every batch failed the partitioner: all of it is in the dead-letter
    // partition matching the one the client addressed.
    let reads = read_all(&cluster.bootstrap(), &dlt, PARTITIONS, id_in).await?;
    let report = history.check_routed(&reads, |id| {
        id.split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1)
    });
    eprintln!("history: {report}");
    assert!(report.is_clean(), "{report}");
    let stored = read_all(&cluster.bootstrap(), &topic, PARTITIONS, id_in).await?;
    assert!(
        stored.is_empty(),
        "{} records in the poisoned topic",
        stored.len()
    );
    replicas_identical(&cluster, &dlt, PARTITIONS)?;
    replicas_identical(&cluster, &topic, PARTITIONS)
}
