//! Kafka transactions on a three-broker cluster, through librdkafka's
//! transactional producer and read_committed / read_uncommitted consumers:
//! commits and aborts across topics and partitions, a transaction left
//! open (it holds read_committed consumers back until it ends), fencing of
//! an old producer instance, the coordinator SIGKILLed mid-transaction,
//! and a transaction aborted by the coordinator when it times out.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rdkafka::Message;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::Offset;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER};
use sluice_tests::load::{id_in, tenant_json, tenant_of, tenant_partition};
use sluice_tests::raw_client::{
    Idempotent, add_partitions_to_txn, init_transactional, produce_idempotent,
    produce_in_transaction, write_txn_markers,
};
use sluice_tests::{
    admin_client, admin_opts, assign, await_deliveries, consume_n, drain_extra, enqueue,
    example_plugin, future_producer, stream_consumer, unique_name,
};

const WAIT: Duration = Duration::from_secs(30);

/// One 3-broker cluster at a time: six at once on two cores starve the
/// brokers of CPU until their sessions expire (spurious failovers).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Broker flags: quick failover and quick aborts of timed-out transactions.
fn args() -> Vec<&'static str> {
    let mut a = FAST_FAILOVER.to_vec();
    a.extend([
        "--transaction-abort-timed-out-transaction-cleanup-interval-ms",
        "200",
    ]);
    a
}

async fn create(cluster: &Cluster, topics: &[(&str, i32)]) -> Result<()> {
    let admin = admin_client(&cluster.bootstrap())?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| {
            NewTopic::new(t, *p, TopicReplication::Fixed(3)).set("min.insync.replicas", "2")
        })
        .collect();
    for r in admin.create_topics(&new, &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    await_leaders(cluster, topics)
}

/// Waits until broker 0's metadata (which the tests query) has a leader
/// for every partition of each topic: a creation reaches the brokers'
/// views shortly after CreateTopics answers.
fn await_leaders(cluster: &Cluster, topics: &[(&str, i32)]) -> Result<()> {
    cluster.wait_until("the topics' leaders in metadata", WAIT, |c| {
        Ok(topics
            .iter()
            .all(|(t, n)| (0..*n).all(|p| c.leader_and_isr(0, t, p).is_ok_and(|(l, _)| l >= 0))))
    })
}

fn transactional(cluster: &Cluster, id: &str, timeout_ms: &str) -> Result<FutureProducer> {
    let p = future_producer(
        &cluster.bootstrap(),
        &[
            ("transactional.id", id),
            ("enable.idempotence", "true"),
            ("transaction.timeout.ms", timeout_ms),
            ("message.timeout.ms", timeout_ms),
            // librdkafka: at most the transaction timeout.
            ("socket.timeout.ms", timeout_ms),
        ],
    )?;
    tokio::task::block_in_place(|| p.init_transactions(WAIT)).context("init_transactions")?;
    Ok(p)
}

/// Sends `<prefix>-<partition>-<i>` for `n` records to each partition.
async fn send(p: &FutureProducer, targets: &[(&str, i32)], prefix: &str, n: usize) -> Result<()> {
    let mut pending = Vec::new();
    for (topic, partition) in targets {
        for i in 0..n {
            let v = format!("{prefix}-{partition}-{i}");
            pending.push(
                enqueue(
                    p,
                    FutureRecord::to(topic)
                        .payload(v.as_bytes())
                        .partition(*partition),
                )
                .await?,
            );
        }
    }
    await_deliveries(pending).await?;
    Ok(())
}

/// Values per prefix that a consumer with `isolation` reads from the
/// start of `parts`, waiting for at least `expected`, then a quiet second.
async fn read(
    cluster: &Cluster,
    parts: &[(&str, i32)],
    isolation: &str,
    expected: usize,
) -> Result<BTreeMap<String, usize>> {
    let mut by_prefix = BTreeMap::new();
    for v in read_values(cluster, parts, isolation, expected).await? {
        let prefix = v.split('-').next().unwrap_or_default().to_string();
        *by_prefix.entry(prefix).or_insert(0) += 1;
    }
    Ok(by_prefix)
}

/// The values themselves, in the order read.
async fn read_values(
    cluster: &Cluster,
    parts: &[(&str, i32)],
    isolation: &str,
    expected: usize,
) -> Result<Vec<String>> {
    Ok(read_placed(cluster, parts, isolation, expected)
        .await?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// The values with the partition each was read from.
async fn read_placed(
    cluster: &Cluster,
    parts: &[(&str, i32)],
    isolation: &str,
    expected: usize,
) -> Result<Vec<(i32, String)>> {
    let consumer = stream_consumer(&cluster.bootstrap(), &[("isolation.level", isolation)])?;
    let assignment: Vec<(&str, i32, Offset)> = parts
        .iter()
        .map(|(t, p)| (*t, *p, Offset::Beginning))
        .collect();
    assign(&consumer, &assignment)?;
    let mut got = consume_n(&consumer, expected, WAIT).await?;
    got.extend(drain_extra(&consumer, Duration::from_secs(1)).await);
    Ok(got
        .iter()
        .map(|m| {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            (m.partition(), v)
        })
        .collect())
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_aborts_and_open_transactions_across_topics() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, &args())?;
    let (a, b) = (unique_name("txn-a"), unique_name("txn-b"));
    create(&cluster, &[(&a, 2), (&b, 1)]).await?;
    let parts = [(a.as_str(), 0), (a.as_str(), 1), (b.as_str(), 0)];
    let tid = unique_name("tid");
    let p = transactional(&cluster, &tid, "60000")?;

    p.begin_transaction()?;
    send(&p, &parts, "committed", 10).await?;
    tokio::task::block_in_place(|| p.commit_transaction(WAIT))?;
    p.begin_transaction()?;
    send(&p, &parts, "aborted", 10).await?;
    tokio::task::block_in_place(|| p.abort_transaction(WAIT))?;
    p.begin_transaction()?;
    send(&p, &parts, "open", 5).await?;

    // The open transaction holds read_committed consumers at its start.
    assert_eq!(
        read(&cluster, &parts, "read_committed", 30).await?,
        counts(&[("committed", 30)])
    );
    assert_eq!(
        read(&cluster, &parts, "read_uncommitted", 75).await?,
        counts(&[("aborted", 30), ("committed", 30), ("open", 15)])
    );
    // The metrics say so too: one open transaction at its coordinator, and
    // the partition's leader reports the 5 records held back.
    let coordinator = usize::try_from(cluster.transaction_coordinator(&tid)?)?;
    let leader = usize::try_from(cluster.leader_and_isr(0, &b, 0)?.0)?;
    let lag = format!("sluice_partition_last_stable_offset_lag{{partition=\"0\",topic=\"{b}\"}}");
    let event = |e: &str| {
        cluster.metric(
            coordinator,
            &format!("sluice_transaction_events_total{{event=\"{e}\"}}"),
        )
    };
    assert_eq!(
        cluster.metric(coordinator, "sluice_transactions{state=\"Ongoing\"}")?,
        1.0
    );
    assert_eq!((event("commit")?, event("abort")?), (1.0, 1.0));
    assert_eq!(cluster.metric(leader, &lag)?, 5.0);
    tokio::task::block_in_place(|| p.commit_transaction(WAIT))?;
    assert_eq!(
        read(&cluster, &parts, "read_committed", 45).await?,
        counts(&[("committed", 30), ("open", 15)])
    );
    assert_eq!(
        cluster.metric(coordinator, "sluice_transactions{state=\"Ongoing\"}")?,
        0.0
    );
    assert_eq!(event("commit")?, 2.0);
    assert_eq!(cluster.metric(leader, &lag)?, 0.0);
    Ok(())
}

/// Records a partitioner plugin routes to other partitions belong to the
/// producer's transaction: read_committed consumers see a committed
/// transaction's records where the plugin put them and never an aborted
/// one's, and nothing holds the partitions back once the transactions
/// ended, also when a target partition's leader was SIGKILLed before the
/// commit (its successor ends the routed records from its own log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_partitioner_routes_belong_to_the_transaction() -> Result<()> {
    const PARTITIONS: i32 = 6;
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, &args())?;
    cluster.upload_plugin(
        "tenant-router",
        "partitioner",
        &example_plugin("tenant_router.wasm")?,
    )?;
    let topic = unique_name("txn-routed");
    let admin = admin_client(&cluster.bootstrap())?;
    let new = NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2")
        .set("sluice.partitioner", "tenant-router");
    for r in admin.create_topics([&new], &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    await_leaders(&cluster, &[(&topic, PARTITIONS)])?;
    let tid = unique_name("tid");
    let p = transactional(&cluster, &tid, "60000")?;
    // Each transaction addresses one partition; the plugin spreads the
    // records over all six by tenant.
    let run = |prefix: &'static str, partition: i32| {
        let (p, topic) = (&p, &topic);
        async move {
            p.begin_transaction()?;
            let mut pending = Vec::new();
            for i in 0..60 {
                let value = tenant_json(&format!("{prefix}{i}"));
                pending.push(
                    enqueue(
                        p,
                        FutureRecord::to(topic)
                            .payload(value.as_bytes())
                            .partition(partition),
                    )
                    .await?,
                );
            }
            await_deliveries(pending).await?;
            anyhow::Ok(())
        }
    };
    run("c", 0).await?;
    tokio::task::block_in_place(|| p.commit_transaction(WAIT))?;
    run("a", 1).await?;
    tokio::task::block_in_place(|| p.abort_transaction(WAIT))?;
    run("k", 2).await?;
    // The leader of a partition the plugin routed to dies before the commit.
    let target = tenant_partition(&tenant_of("k0"), PARTITIONS);
    let leader = usize::try_from(cluster.leader_and_isr(0, &topic, target)?.0)?;
    let coordinator = usize::try_from(cluster.transaction_coordinator(&tid)?)?;
    if leader != coordinator {
        cluster.kill(leader);
    }
    tokio::task::block_in_place(|| p.commit_transaction(WAIT))?;
    if leader != coordinator {
        cluster.restart(leader)?;
    }

    let parts: Vec<(&str, i32)> = (0..PARTITIONS).map(|i| (topic.as_str(), i)).collect();
    let committed = read_placed(&cluster, &parts, "read_committed", 120).await?;
    let mut seen = BTreeMap::new();
    for (partition, value) in &committed {
        let id = id_in(value);
        ensure!(!id.starts_with('a'), "aborted record {id} read committed");
        ensure!(
            *partition == tenant_partition(&tenant_of(&id), PARTITIONS),
            "{id} in partition {partition}, not where the plugin put it"
        );
        *seen.entry(id).or_insert(0) += 1;
    }
    ensure!(
        seen.len() == 120 && seen.values().all(|n| *n == 1),
        "every committed record once: {} distinct of {} read",
        seen.len(),
        committed.len()
    );
    let everything = read_values(&cluster, &parts, "read_uncommitted", 180).await?;
    assert_eq!(
        everything.len(),
        180,
        "read_uncommitted sees the aborted too"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_fences_the_old_one_and_aborts_its_transaction() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, &args())?;
    let topic = unique_name("txn-fence");
    create(&cluster, &[(&topic, 1)]).await?;
    let parts = [(topic.as_str(), 0)];
    let id = unique_name("tid");
    let old = transactional(&cluster, &id, "60000")?;
    old.begin_transaction()?;
    send(&old, &parts, "zombie", 5).await?;

    let new = transactional(&cluster, &id, "60000")?;
    new.begin_transaction()?;
    send(&new, &parts, "new", 5).await?;
    tokio::task::block_in_place(|| new.commit_transaction(WAIT))?;

    let fenced = tokio::task::block_in_place(|| old.commit_transaction(WAIT));
    let e = format!(
        "{:?}",
        fenced
            .err()
            .context("the old instance's commit must fail")?
    );
    ensure!(e.contains("fenced"), "fenced, not {e}");
    assert_eq!(
        read(&cluster, &parts, "read_committed", 5).await?,
        counts(&[("new", 5)])
    );
    let coordinator = usize::try_from(cluster.transaction_coordinator(&id)?)?;
    assert_eq!(
        cluster.metric(
            coordinator,
            "sluice_transaction_events_total{event=\"fenced\"}"
        )?,
        1.0,
        "one new instance fenced the old one"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_survives_the_coordinator_being_killed_mid_transaction() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, &args())?;
    let topic = unique_name("txn-coord");
    create(&cluster, &[(&topic, 3)]).await?;
    let parts = [
        (topic.as_str(), 0),
        (topic.as_str(), 1),
        (topic.as_str(), 2),
    ];
    let id = unique_name("tid");
    let p = transactional(&cluster, &id, "60000")?;
    p.begin_transaction()?;
    send(&p, &parts, "before", 5).await?;

    let coordinator = cluster.transaction_coordinator(&id)?;
    cluster.kill(coordinator as usize);
    send(&p, &parts, "after", 5).await?;
    tokio::task::block_in_place(|| p.commit_transaction(WAIT))?;
    cluster.restart(coordinator as usize)?;
    assert_eq!(
        read(&cluster, &parts, "read_committed", 30).await?,
        counts(&[("after", 15), ("before", 15)])
    );
    Ok(())
}

/// The coordinator changes *after* the decision: the commit is durable
/// (EndTxn answered) but one partition's marker cannot be written yet (its
/// only replica's broker is down), and then the coordinator is SIGKILLed.
/// The next coordinator finds the decision in the state partition and
/// writes the missing marker once the partition is back: the transaction
/// is committed everywhere. Five brokers, so the quorum and the state
/// partition survive two of them being down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_coordinator_finishes_a_commit_its_predecessor_decided() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(5, &args())?;
    let (single, replicated) = (unique_name("txn-rf1"), unique_name("txn-rf3"));
    let admin = admin_client(&cluster.bootstrap())?;
    let topics = [
        NewTopic::new(&single, 5, TopicReplication::Fixed(1)),
        NewTopic::new(&replicated, 1, TopicReplication::Fixed(3)).set("min.insync.replicas", "2"),
    ];
    for r in admin.create_topics(&topics, &admin_opts()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    await_leaders(&cluster, &[(&single, 5), (&replicated, 1)])?;
    // Broker 0 answers the metadata queries: the partition's broker and
    // the coordinator are two others.
    let (partition, holder) = (0..5)
        .find_map(|p| {
            let l = cluster.leader_and_isr(0, &single, p).ok()?.0;
            (l > 0).then_some((p, l as usize))
        })
        .context("a partition away from broker 0")?;
    let (tid, coordinator) = (0..200)
        .map(|_| unique_name("tid"))
        .find_map(|tid| {
            let c = usize::try_from(cluster.transaction_coordinator(&tid).ok()?).ok()?;
            (c != 0 && c != holder).then_some((tid, c))
        })
        .context("a transactional id coordinated elsewhere")?;
    let parts = [(single.as_str(), partition), (replicated.as_str(), 0)];
    let p = transactional(&cluster, &tid, "60000")?;
    p.begin_transaction()?;
    send(&p, &parts, "decided", 5).await?;
    cluster.kill(holder);
    tokio::task::block_in_place(|| p.commit_transaction(WAIT))?;
    // Decided; the marker for the partition on the dead broker is pending.
    assert_eq!(
        cluster.metric(coordinator, "sluice_transactions{state=\"PrepareCommit\"}")?,
        1.0
    );
    cluster.kill(coordinator);
    cluster.wait_until("another broker coordinates the id", WAIT, |c| {
        Ok(c.transaction_coordinator(&tid)? != coordinator as i32)
    })?;
    cluster.restart(holder)?;
    assert_eq!(
        read(&cluster, &parts, "read_committed", 10).await?,
        counts(&[("decided", 10)])
    );
    cluster.restart(coordinator)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_aborts_a_transaction_that_outlives_its_timeout() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, &args())?;
    let topic = unique_name("txn-timeout");
    create(&cluster, &[(&topic, 1)]).await?;
    let parts = [(topic.as_str(), 0)];
    let tid = unique_name("tid");
    let p = transactional(&cluster, &tid, "3000")?;
    p.begin_transaction()?;
    send(&p, &parts, "abandoned", 5).await?;
    // A plain producer's record after it stays invisible to read_committed
    // consumers until the coordinator aborts the transaction.
    let plain = future_producer(&cluster.bootstrap(), &[])?;
    send(&plain, &parts, "later", 1).await?;
    assert_eq!(
        read(&cluster, &parts, "read_committed", 1).await?,
        counts(&[("later", 1)])
    );
    // The producer was fenced (the abort bumped its epoch): its commit fails.
    let fenced = tokio::task::block_in_place(|| p.commit_transaction(WAIT));
    let e = format!(
        "{:?}",
        fenced.err().context("a commit after the abort must fail")?
    );
    ensure!(e.contains("fenced"), "fenced, not {e}");
    let coordinator = usize::try_from(cluster.transaction_coordinator(&tid)?)?;
    assert_eq!(
        cluster.metric(
            coordinator,
            "sluice_transaction_events_total{event=\"timeout_abort\"}"
        )?,
        1.0
    );
    Ok(())
}

/// Markers go to partition leaders only: a follower answers
/// NOT_LEADER_OR_FOLLOWER to WriteTxnMarkers.
#[test]
fn write_txn_markers_to_a_follower_is_refused() -> Result<()> {
    let _alone = ONE_AT_A_TIME.blocking_lock();
    let rt = tokio::runtime::Runtime::new()?;
    let cluster = Cluster::start(3, FAST_FAILOVER)?;
    let topic = unique_name("txn-markers");
    rt.block_on(create(&cluster, &[(&topic, 1)]))?;
    let (leader, _) = cluster.leader_and_isr(0, &topic, 0)?;
    let follower = (0..3).find(|&i| i != leader).expect("three brokers") as usize;
    assert_eq!(
        write_txn_markers(cluster.addr(follower), (1001, 0), true, &topic, &[0])?,
        vec![(0, 6)]
    );
    Ok(())
}

/// KIP-890: a transactional batch for a partition that is not in its
/// producer's open transaction (a zombie's, or a retry that arrives after
/// its transaction ended) is refused with INVALID_TXN_STATE instead of
/// opening a transaction no marker would end, which would hold
/// read_committed consumers back; once the partition is added, the same
/// batch is stored. Sent to the partition's leader while another broker
/// coordinates the transaction, so the check crosses brokers.
#[test]
fn a_transactional_batch_outside_its_transaction_is_refused() -> Result<()> {
    const INVALID_TXN_STATE: i16 = 48;
    let _alone = ONE_AT_A_TIME.blocking_lock();
    let rt = tokio::runtime::Runtime::new()?;
    let cluster = Cluster::start(3, &args())?;
    let topic = unique_name("txn-stray");
    rt.block_on(create(&cluster, &[(&topic, 1)]))?;
    let leader = usize::try_from(cluster.leader_and_isr(0, &topic, 0)?.0)?;
    // A transactional id another broker coordinates.
    let (tid, coordinator) = (0..100)
        .map(|_| unique_name("tid"))
        .find_map(|tid| {
            let c = usize::try_from(cluster.transaction_coordinator(&tid).ok()?).ok()?;
            (c != leader).then_some((tid, c))
        })
        .context("no transactional id coordinated away from the leader")?;
    let (producer_id, producer_epoch) = init_transactional(cluster.addr(coordinator), &tid)?;
    let producer = Idempotent {
        producer_id,
        producer_epoch,
        first_sequence: 0,
        transactional: true,
    };
    let code = |r: &kafka_protocol::messages::ProduceResponse| {
        r.responses[0].partition_responses[0].error_code
    };
    let stray = produce_in_transaction(
        cluster.addr(leader),
        &topic,
        0,
        &tid,
        producer,
        &[b"stray".to_vec()],
    )?;
    assert_eq!(code(&stray), INVALID_TXN_STATE, "{stray:?}");
    // The same through a produce plugin: its records would join the
    // producer's transaction wherever the plugin puts them.
    cluster.upload_plugin(
        "tenant-router",
        "partitioner",
        &example_plugin("tenant_router.wasm")?,
    )?;
    let routed = unique_name("txn-stray-routed");
    let admin = admin_client(&cluster.bootstrap())?;
    let new = NewTopic::new(&routed, 1, TopicReplication::Fixed(3))
        .set("sluice.partitioner", "tenant-router");
    for r in rt.block_on(admin.create_topics([&new], &admin_opts()))? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e:?}"))?;
    }
    await_leaders(&cluster, &[(&routed, 1)])?;
    let routed_leader = usize::try_from(cluster.leader_and_isr(0, &routed, 0)?.0)?;
    let stray_routed = produce_in_transaction(
        cluster.addr(routed_leader),
        &routed,
        0,
        &tid,
        producer,
        &[tenant_json("stray").into_bytes()],
    )?;
    assert_eq!(code(&stray_routed), INVALID_TXN_STATE, "{stray_routed:?}");
    // Without the transactional id the partition cannot ask: refused too.
    let anonymous =
        produce_idempotent(cluster.addr(leader), &topic, 0, producer, &[b"x".to_vec()])?;
    assert_eq!(code(&anonymous), INVALID_TXN_STATE, "{anonymous:?}");
    // Nothing was stored, nothing holds read_committed consumers back.
    assert_eq!(
        cluster.metric(
            leader,
            &format!(
                "sluice_partition_last_stable_offset_lag{{partition=\"0\",topic=\"{topic}\"}}"
            )
        )?,
        0.0
    );
    assert_eq!(
        add_partitions_to_txn(
            cluster.addr(coordinator),
            &tid,
            (producer_id, producer_epoch),
            &topic,
            &[0]
        )?,
        vec![(0, 0)]
    );
    let added = produce_in_transaction(
        cluster.addr(leader),
        &topic,
        0,
        &tid,
        producer,
        &[b"in".to_vec()],
    )?;
    assert_eq!(code(&added), 0, "{added:?}");
    Ok(())
}

/// An idle transactional id is forgotten after
/// transactional.id.expiration.ms, with a tombstone in its state
/// partition: after its coordinator is SIGKILLed, the next coordinator
/// does not know it either, and InitProducerId for it starts afresh with a
/// new producer id (a known id would keep its producer id and get the next
/// epoch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transactional_id_expires_on_every_coordinator() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut flags = args();
    flags.extend([
        "--transactional-id-expiration-ms",
        "1000",
        "--transaction-remove-expired-transaction-cleanup-interval-ms",
        "200",
    ]);
    let mut cluster = Cluster::start(3, &flags)?;
    // Coordinated away from broker 0, which answers the metadata queries.
    let (tid, coordinator) = (0..100)
        .map(|_| unique_name("tid"))
        .find_map(|tid| {
            let c = usize::try_from(cluster.transaction_coordinator(&tid).ok()?).ok()?;
            (c != 0).then_some((tid, c))
        })
        .context("no transactional id coordinated away from broker 0")?;
    let (first, _) =
        tokio::task::block_in_place(|| init_transactional(cluster.addr(coordinator), &tid))?;
    cluster.wait_until("the id expires", WAIT, |c| {
        Ok(c.metric(
            coordinator,
            "sluice_transaction_events_total{event=\"expired\"}",
        )? >= 1.0)
    })?;
    cluster.kill(coordinator);
    cluster.wait_until("another broker coordinates the id", WAIT, |c| {
        Ok(c.transaction_coordinator(&tid)? != coordinator as i32)
    })?;
    let next = usize::try_from(cluster.transaction_coordinator(&tid)?)?;
    let again = tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match init_transactional(cluster.addr(next), &tid) {
                Ok(p) => return Ok(p),
                // Loading the partition, or not coordinating it yet.
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => return Err(e),
            }
        }
    })?;
    assert_ne!(again.0, first, "a new producer id: the id was forgotten");
    assert_eq!(again.1, 0, "a fresh id starts at epoch 0");
    Ok(())
}

/// Consume-transform-produce: a group consumer reads the input, a
/// transactional producer writes one output record per input record and
/// commits the consumer's positions in the same transaction. The output
/// holds every input record exactly once, and the group's committed
/// offsets move only with committed transactions: an aborted one (its
/// output and its offsets) leaves no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_commits_output_and_offsets_together() -> Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    use rdkafka::consumer::Consumer;
    let mut a = args();
    a.extend(["--group-initial-rebalance-delay-ms", "0"]);
    let cluster = Cluster::start(3, &a)?;
    let (input, output) = (unique_name("ctp-in"), unique_name("ctp-out"));
    create(&cluster, &[(&input, 2), (&output, 2)]).await?;
    let records = 200;
    let plain = future_producer(&cluster.bootstrap(), &[])?;
    send(
        &plain,
        &[(input.as_str(), 0), (input.as_str(), 1)],
        "in",
        records / 2,
    )
    .await?;

    let group = unique_name("ctp-group");
    let consumer = stream_consumer(
        &cluster.bootstrap(),
        &[
            ("group.id", group.as_str()),
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
        ],
    )?;
    consumer.subscribe(&[input.as_str()])?;
    let p = transactional(&cluster, &unique_name("tid"), "60000")?;
    let mut processed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while processed < records {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "processed only {processed} of {records}"
        );
        let batch = consume_n(&consumer, 1, WAIT).await?;
        let mut more = drain_extra(&consumer, Duration::from_millis(200)).await;
        let mut batch = batch;
        batch.append(&mut more);
        p.begin_transaction()?;
        for m in &batch {
            let v = format!(
                "out-{}",
                String::from_utf8_lossy(m.payload().unwrap_or_default())
            );
            enqueue(
                &p,
                FutureRecord::to(&output)
                    .payload(v.as_bytes())
                    .partition(m.partition()),
            )
            .await?;
        }
        let positions = consumer.position()?;
        let metadata = consumer
            .group_metadata()
            .context("the consumer is in a group")?;
        tokio::task::block_in_place(|| {
            p.send_offsets_to_transaction(&positions, &metadata, WAIT)?;
            p.commit_transaction(WAIT)
        })?;
        processed += batch.len();
    }
    assert_eq!(processed, records, "every input record read once");

    // An aborted transaction: output and offsets past the end, both dropped.
    let committed = tokio::task::block_in_place(|| consumer.committed(WAIT))?;
    p.begin_transaction()?;
    send(&p, &[(output.as_str(), 0)], "ghost", 3).await?;
    let mut beyond = rdkafka::TopicPartitionList::new();
    beyond.add_partition_offset(&input, 0, Offset::Offset(10_000))?;
    let metadata = consumer.group_metadata().context("group metadata")?;
    tokio::task::block_in_place(|| {
        p.send_offsets_to_transaction(&beyond, &metadata, WAIT)?;
        p.abort_transaction(WAIT)
    })?;
    let after = tokio::task::block_in_place(|| consumer.committed(WAIT))?;
    assert_eq!(
        after.to_topic_map(),
        committed.to_topic_map(),
        "an aborted transaction's offsets never count"
    );
    let total: i64 = after
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, records as i64, "committed offsets cover the input");

    let out = read(
        &cluster,
        &[(output.as_str(), 0), (output.as_str(), 1)],
        "read_committed",
        records,
    )
    .await?;
    assert_eq!(out, counts(&[("out", records)]), "exactly once, no ghosts");
    Ok(())
}

/// ListTransactions, DescribeTransactions and DescribeProducers (KIP-664)
/// show an open transaction, then its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_apis_show_open_and_ended_transactions() -> Result<()> {
    use kafka_protocol::messages::describe_producers_request::TopicRequest;
    use kafka_protocol::messages::{
        DescribeProducersRequest, DescribeProducersResponse, DescribeTransactionsRequest,
        ListTransactionsRequest, TopicName, TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;
    use sluice_client::Connection;
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, &args())?;
    let topic = unique_name("txn-admin");
    create(&cluster, &[(&topic, 2)]).await?;
    let id = unique_name("tid");
    let p = transactional(&cluster, &id, "60000")?;
    p.begin_transaction()?;
    send(&p, &[(topic.as_str(), 0)], "open", 3).await?;

    let conn = |i: usize| Connection::connect(cluster.addr(i), "txn-admin-test", WAIT);
    let listed = |states: &[&str]| {
        let mut req = ListTransactionsRequest::default();
        req.state_filters = states
            .iter()
            .map(|s| StrBytes::from_string(s.to_string()))
            .collect();
        req
    };
    let describe = |ids: &[&str]| {
        let mut req = DescribeTransactionsRequest::default();
        req.transactional_ids = ids
            .iter()
            .map(|i| TransactionalId(StrBytes::from_string(i.to_string())))
            .collect();
        req
    };
    let producers = || {
        let mut t = TopicRequest::default();
        t.name = TopicName(StrBytes::from_string(topic.clone()));
        t.partition_indexes = vec![0];
        let mut req = DescribeProducersRequest::default();
        req.topics = vec![t];
        req
    };

    let mut found = Vec::new();
    for i in 0..3 {
        let resp = conn(i).await?.send(&listed(&[]), 1, WAIT).await?;
        assert_eq!(resp.error_code, 0);
        found.extend(
            resp.transaction_states
                .iter()
                .filter(|t| t.transactional_id.as_str() == id)
                .map(|t| (t.producer_id.0, t.transaction_state.to_string())),
        );
    }
    assert_eq!(found.len(), 1, "one coordinator lists it: {found:?}");
    let (producer_id, state) = found.remove(0);
    assert_eq!(state, "Ongoing");

    let coordinator = cluster.transaction_coordinator(&id)? as usize;
    let resp = conn(coordinator)
        .await?
        .send(&describe(&[&id]), 0, WAIT)
        .await?;
    let t = &resp.transaction_states[0];
    assert_eq!(
        (
            t.error_code,
            t.transaction_state.as_str(),
            t.producer_id.0,
            t.transaction_timeout_ms
        ),
        (0, "Ongoing", producer_id, 60_000)
    );
    assert_eq!(t.topics.len(), 1);
    assert_eq!(
        (t.topics[0].topic.as_str(), t.topics[0].partitions.clone()),
        (topic.as_str(), vec![0])
    );
    // An id nobody used, asked of its coordinator and of another broker.
    let unknown = "never-seen";
    let at = cluster.transaction_coordinator(unknown)? as usize;
    let resp = conn(at).await?.send(&describe(&[unknown]), 0, WAIT).await?;
    assert_eq!(
        resp.transaction_states[0].error_code, 105,
        "TRANSACTIONAL_ID_NOT_FOUND"
    );
    let resp = conn((at + 1) % 3)
        .await?
        .send(&describe(&[unknown]), 0, WAIT)
        .await?;
    assert_eq!(resp.transaction_states[0].error_code, 16, "NOT_COORDINATOR");

    let (leader, _) = cluster.leader_and_isr(0, &topic, 0)?;
    let txn_start = |resp: &DescribeProducersResponse| {
        resp.topics[0].partitions[0]
            .active_producers
            .iter()
            .find(|a| a.producer_id.0 == producer_id)
            .map(|a| a.current_txn_start_offset)
    };
    let resp = conn(leader as usize)
        .await?
        .send(&producers(), 0, WAIT)
        .await?;
    assert_eq!(
        txn_start(&resp),
        Some(0),
        "the open transaction starts at 0"
    );

    tokio::task::block_in_place(|| p.commit_transaction(WAIT))?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = conn(coordinator)
            .await?
            .send(&describe(&[&id]), 0, WAIT)
            .await?;
        if resp.transaction_states[0].transaction_state.as_str() == "CompleteCommit" {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = conn(leader as usize)
        .await?
        .send(&producers(), 0, WAIT)
        .await?;
    assert_eq!(txn_start(&resp), Some(-1), "nothing open after the marker");
    let resp = conn(coordinator)
        .await?
        .send(&listed(&["Ongoing", "Bogus"]), 1, WAIT)
        .await?;
    assert!(
        !resp
            .transaction_states
            .iter()
            .any(|t| t.transactional_id.as_str() == id)
    );
    assert_eq!(resp.unknown_state_filters.len(), 1, "Bogus is not a state");
    Ok(())
}

/// How a consume-transform-produce loop recovers from an error, as a real
/// application must (librdkafka's transactional API contract).
enum Recovery {
    /// Retriable: try the same call again.
    Retry,
    /// Abort the transaction and start again from the committed offsets.
    Abort,
    /// The producer is unusable (fenced, fatal): a new instance, then
    /// start again from the committed offsets.
    NewProducer,
}

fn recovery(e: &rdkafka::error::KafkaError) -> Recovery {
    match e {
        rdkafka::error::KafkaError::Transaction(t) if t.is_fatal() => Recovery::NewProducer,
        rdkafka::error::KafkaError::Transaction(t) if t.txn_requires_abort() => Recovery::Abort,
        rdkafka::error::KafkaError::Transaction(t) if t.is_retriable() => Recovery::Retry,
        _ => Recovery::Abort,
    }
}

/// Restarts the nemesis' victim once its time down is over.
fn restart_due(
    cluster: &mut Cluster,
    down: &mut Option<(usize, tokio::time::Instant)>,
    next_kill: &mut tokio::time::Instant,
) -> Result<()> {
    let now = tokio::time::Instant::now();
    if let Some((v, until)) = *down
        && now >= until
    {
        cluster.restart(v)?;
        *down = None;
        *next_kill = now + Duration::from_secs(2);
    }
    Ok(())
}

/// Consume-transform-produce while a random broker is SIGKILLed every few
/// seconds (the transaction coordinator, the group coordinator and
/// partition leaders among them) and restarted: every input record's
/// output is in the output topic exactly once for read_committed
/// consumers, and the group's committed offsets cover the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_is_exactly_once_while_brokers_are_killed() -> Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3, &args())?;
    let (input, output) = (unique_name("eos-in"), unique_name("eos-out"));
    create(&cluster, &[(&input, 3), (&output, 3)]).await?;
    let parts: Vec<(&str, i32)> = (0..3).map(|p| (input.as_str(), p)).collect();
    let per_partition = 400;
    let records = per_partition * 3;
    let seeder = future_producer(
        &cluster.bootstrap(),
        &[
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "30000"),
        ],
    )?;
    send(&seeder, &parts, "in", per_partition).await?;

    let group = unique_name("eos-group");
    let consumer: StreamConsumer = stream_consumer(
        &cluster.bootstrap(),
        &[
            ("group.id", group.as_str()),
            ("isolation.level", "read_committed"),
            ("enable.auto.commit", "false"),
        ],
    )?;
    // From the committed offsets (the beginning before the first commit).
    let rewind = |consumer: &StreamConsumer| -> Result<()> {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition(&input, p);
        }
        let committed = consumer.committed_offsets(tpl, WAIT)?;
        let mut from = rdkafka::TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            from.add_partition_offset(e.topic(), e.partition(), offset)?;
        }
        consumer.unassign()?;
        consumer.assign(&from)?;
        Ok(())
    };
    rewind(&consumer)?;
    let id = unique_name("tid");
    let mut p = transactional(&cluster, &id, "60000")?;

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(150);
    let mut next_kill = started + Duration::from_secs(2);
    let mut down: Option<(usize, tokio::time::Instant)> = None;
    let mut victim = 0usize;
    let (mut kills, mut aborts, mut new_producers) = (0, 0, 0);
    let mut committed_total = 0i64;
    while committed_total < records as i64 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{committed_total} of {records} committed before the deadline ({kills} kills, {aborts} aborts)"
        );
        let now = tokio::time::Instant::now();
        restart_due(&mut cluster, &mut down, &mut next_kill)?;
        match down {
            None if now >= next_kill && kills < 8 => {
                victim = (victim + 1) % 3;
                cluster.kill(victim);
                kills += 1;
                down = Some((victim, now + Duration::from_millis(1500)));
            }
            _ => {}
        }
        // Small transactions, so the run spans several kills.
        let mut batch = Vec::new();
        while batch.len() < 10 {
            match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let attempt: Result<(), rdkafka::error::KafkaError> = async {
            p.begin_transaction()?;
            for m in &batch {
                let v = format!(
                    "out-{}",
                    String::from_utf8_lossy(m.payload().unwrap_or_default())
                );
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&output)
                    .payload(v.as_bytes())
                    .partition(m.partition());
                // Delivery failures surface in commit_transaction.
                loop {
                    match p.send_result(record) {
                        Ok(_) => break,
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull,
                            ),
                            again,
                        )) => {
                            record = again;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => return Err(e),
                    }
                }
            }
            let positions = consumer.position()?;
            let metadata = consumer
                .group_metadata()
                .ok_or(rdkafka::error::KafkaError::NoMessageReceived)?;
            tokio::task::block_in_place(|| {
                p.send_offsets_to_transaction(&positions, &metadata, WAIT)?;
                loop {
                    match p.commit_transaction(WAIT) {
                        Err(e) if matches!(recovery(&e), Recovery::Retry) => continue,
                        other => return other,
                    }
                }
            })
        }
        .await;
        match attempt {
            Ok(()) => {}
            Err(e) => {
                // A victim whose time is up comes back before recovery, not
                // only at the top of the loop: librdkafka can keep its
                // transaction coordinator pointed at a killed broker until
                // that broker returns, and these calls block meanwhile.
                restart_due(&mut cluster, &mut down, &mut next_kill)?;
                match recovery(&e) {
                    Recovery::NewProducer => {
                        new_producers += 1;
                        p = transactional(&cluster, &id, "60000")?;
                    }
                    Recovery::Abort | Recovery::Retry => {
                        aborts += 1;
                        if let Err(e) = tokio::task::block_in_place(|| p.abort_transaction(WAIT)) {
                            eprintln!("abort failed ({e}); a new producer instance");
                            restart_due(&mut cluster, &mut down, &mut next_kill)?;
                            new_producers += 1;
                            p = transactional(&cluster, &id, "60000")?;
                        }
                    }
                }
                rewind(&consumer)?;
            }
        }
        let committed = tokio::task::block_in_place(|| consumer.committed(WAIT));
        if let Ok(c) = committed {
            committed_total = c
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum();
        }
    }
    if let Some((v, _)) = down {
        cluster.restart(v)?;
    }
    eprintln!(
        "eos: {records} records in {:?}, {kills} kills, {aborts} aborted transactions, {new_producers} new producer instances",
        started.elapsed()
    );
    ensure!(kills >= 2, "the nemesis ran: {kills} kills");
    let mut out = read_values(
        &cluster,
        &[
            (output.as_str(), 0),
            (output.as_str(), 1),
            (output.as_str(), 2),
        ],
        "read_committed",
        records,
    )
    .await?;
    out.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|p| (0..per_partition).map(move |i| format!("out-in-{p}-{i}")))
        .collect();
    want.sort();
    assert!(
        out == want,
        "every input record's output exactly once: {} read, {} expected; first difference: {:?}",
        out.len(),
        want.len(),
        out.iter().zip(&want).find(|(a, b)| a != b)
    );
    Ok(())
}
