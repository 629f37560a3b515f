//! Three-broker clusters of real processes: the controller quorum, default
//! placement, broker fencing and controller failover, seen through a real
//! Kafka client's metadata.

use std::time::Duration;

use anyhow::Result;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::metadata::Metadata;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::{admin_client, admin_opts, unique_name};

/// (leader, replicas, isr) of every partition of `topic`, by partition id.
fn layout(md: &Metadata, topic: &str) -> Vec<(i32, Vec<i32>, Vec<i32>)> {
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic in metadata");
    let mut parts: Vec<_> = t
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader(), p.replicas().to_vec(), p.isr().to_vec()))
        .collect();
    parts.sort_by_key(|p| p.0);
    parts.into_iter().map(|(_, l, r, i)| (l, r, i)).collect()
}

fn create(cluster: &Cluster, via: usize, topic: NewTopic<'_>) -> Result<()> {
    let admin = admin_client(cluster.addr(via))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(admin.create_topics(&[topic], &admin_opts()))?;
    for r in results {
        r.map_err(|(name, code)| anyhow::anyhow!("creating {name}: {code:?}"))?;
    }
    Ok(())
}

#[test]
fn default_placement_is_i_plus_j_mod_n_and_explicit_assignments_are_honoured() -> Result<()> {
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let md = cluster.metadata(2, None)?;
    let mut ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2], "every broker is advertised");

    let topic = unique_name("placed");
    create(
        &cluster,
        1,
        NewTopic::new(&topic, 6, TopicReplication::Fixed(3)),
    )?;
    // Seen identically through every broker.
    for via in 0..3 {
        let got = layout(&cluster.metadata(via, Some(&topic))?, &topic);
        for (i, (leader, replicas, isr)) in got.iter().enumerate() {
            let expected: Vec<i32> = (0..3).map(|j| ((i + j) % 3) as i32).collect();
            assert_eq!(replicas, &expected, "partition {i} via broker {via}");
            assert_eq!(*leader, expected[0], "preferred leader leads");
            assert_eq!(isr, &expected);
        }
    }

    let explicit = unique_name("explicit");
    create(
        &cluster,
        0,
        NewTopic::new(
            &explicit,
            2,
            TopicReplication::Variable(&[&[2, 0], &[1, 2]]),
        ),
    )?;
    let got = layout(&cluster.metadata(1, Some(&explicit))?, &explicit);
    assert_eq!(got[0].1, vec![2, 0]);
    assert_eq!(got[1], (1, vec![1, 2], vec![1, 2]));

    let bad = create(
        &cluster,
        0,
        NewTopic::new(
            &unique_name("bad"),
            1,
            TopicReplication::Variable(&[&[0, 7]]),
        ),
    );
    assert!(
        bad.is_err(),
        "an assignment naming an unknown broker is refused"
    );
    Ok(())
}

#[test]
fn a_killed_broker_is_fenced_its_partitions_move_and_it_rejoins() -> Result<()> {
    let mut cluster = Cluster::start(3, FAST_FAILOVER)?;
    let topic = unique_name("failover");
    create(
        &cluster,
        0,
        NewTopic::new(&topic, 3, TopicReplication::Fixed(3)),
    )?;
    let victim = 1usize;
    cluster.kill(victim);
    cluster.wait_until(
        "leadership moves off the killed broker",
        Duration::from_secs(20),
        |c| {
            let md = c.metadata(0, Some(&topic))?;
            let ok = layout(&md, &topic).iter().all(|(leader, _, isr)| {
                *leader != victim as i32 && !isr.contains(&(victim as i32))
            });
            // Fenced (it stays listed to clients: it leads nothing).
            let fenced = c.metric(0, "sluice_brokers{state=\"fenced\"}")? == 1.0;
            Ok(ok && fenced)
        },
    )?;
    // Partition 1 preferred broker 1; its next in-sync replica (2) leads.
    let got = layout(&cluster.metadata(2, Some(&topic))?, &topic);
    assert_eq!(got[1].0, 2);

    cluster.restart(victim)?;
    cluster.wait_until(
        "the restarted broker is live again",
        Duration::from_secs(20),
        |c| {
            let md = c.metadata(0, None)?;
            Ok(md.brokers().iter().any(|b| b.id() == victim as i32)
                && c.metric(0, "sluice_brokers{state=\"fenced\"}")? == 0.0)
        },
    )?;
    Ok(())
}

#[test]
fn the_cluster_outlives_its_controller() -> Result<()> {
    let mut cluster = Cluster::start(3, FAST_FAILOVER)?;
    let controller = cluster.controller(0)?;
    assert!((0..3).contains(&controller), "a controller is elected");
    for via in 1..3 {
        assert_eq!(cluster.controller(via)?, controller, "all agree");
    }
    let c = controller as usize;
    cluster.kill(c);
    let survivor = (c + 1) % 3;
    cluster.wait_until(
        "a new controller is elected",
        Duration::from_secs(20),
        |cl| {
            let now = cl.controller(survivor)?;
            Ok(now >= 0 && now != controller)
        },
    )?;
    // Metadata changes still commit, through either survivor.
    let topic = unique_name("after-controller-loss");
    create(
        &cluster,
        (c + 2) % 3,
        NewTopic::new(&topic, 3, TopicReplication::Fixed(2)),
    )?;
    let got = layout(&cluster.metadata(survivor, Some(&topic))?, &topic);
    assert_eq!(got.len(), 3);
    // The old controller comes back as a follower of the new one and
    // learns what was committed while it was down.
    cluster.restart(c)?;
    cluster.wait_until(
        "the old controller catches up",
        Duration::from_secs(20),
        |cl| Ok(layout(&cl.metadata(c, Some(&topic))?, &topic).len() == 3),
    )?;
    Ok(())
}

/// The cluster id every broker reports (Metadata and DescribeCluster),
/// asked with Sluice's internal client.
fn cluster_ids(cluster: &Cluster) -> Result<Vec<String>> {
    use kafka_protocol::messages::{DescribeClusterRequest, MetadataRequest};
    use sluice_client::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut ids = Vec::new();
        for i in 0..cluster.brokers.len() {
            let conn = Connection::connect(cluster.addr(i), "cluster-id-test", OP).await?;
            let mut req = MetadataRequest::default();
            req.topics = Some(Vec::new());
            let md = conn.send(&req, 12, OP).await?;
            let dc = conn.send(&DescribeClusterRequest::default(), 1, OP).await?;
            let id = md.cluster_id.map(|s| s.to_string()).unwrap_or_default();
            anyhow::ensure!(
                id == dc.cluster_id.as_str(),
                "broker {i}: Metadata says {id}, DescribeCluster {}",
                dc.cluster_id
            );
            ids.push(id);
        }
        Ok(ids)
    })
}

const OP: Duration = Duration::from_secs(10);

#[test]
fn every_broker_reports_the_one_cluster_id_across_restarts() -> Result<()> {
    let mut cluster = Cluster::start(3, FAST_FAILOVER)?;
    let ids = cluster_ids(&cluster)?;
    assert!(!ids[0].is_empty(), "a cluster id");
    assert!(ids.iter().all(|i| *i == ids[0]), "one id: {ids:?}");
    cluster.kill(1);
    cluster.restart(1)?;
    let again = cluster_ids(&cluster)?;
    assert_eq!(again, ids, "the id survives a restart");
    Ok(())
}

/// KIP-951: a broker that does not lead a partition answers a Produce
/// (v10+) with NOT_LEADER_OR_FOLLOWER *and* the current leader's id, epoch
/// and address, so clients retry there without asking for metadata first.
#[test]
fn a_produce_to_a_follower_names_the_current_leader() -> Result<()> {
    use sluice_tests::raw_client::produce_answer;
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let topic = unique_name("kip951");
    create(
        &cluster,
        0,
        NewTopic::new(&topic, 1, TopicReplication::Fixed(3)),
    )?;
    let (leader, _) = cluster.leader_and_isr(0, &topic, 0)?;
    let follower = (0..3).find(|&i| i != leader).expect("three brokers") as usize;
    let values = [b"v".to_vec()];
    let resp = produce_answer(cluster.addr(follower), &topic, 0, -1, &values, 5_000, 10)?;
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!(
        p.error_code, 6,
        "NOT_LEADER_OR_FOLLOWER: {:?}",
        p.error_message
    );
    assert_eq!(p.current_leader.leader_id.0, leader);
    assert!(p.current_leader.leader_epoch >= 0, "{:?}", p.current_leader);
    let endpoint = resp
        .node_endpoints
        .iter()
        .find(|e| e.node_id.0 == leader)
        .expect("the leader's endpoint is included");
    assert_eq!(
        format!("{}:{}", endpoint.host, endpoint.port),
        cluster.addr(leader as usize)
    );
    // The same request to the named leader is acknowledged.
    let resp = produce_answer(
        cluster.addr(leader as usize),
        &topic,
        0,
        -1,
        &values,
        5_000,
        10,
    )?;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
    Ok(())
}
