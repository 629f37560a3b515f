//! Listeners and TLS on a 3-broker cluster: clients on a CLIENT listener,
//! the brokers' own traffic (controller quorum, follower fetches,
//! forwarded produce, transaction markers) on an INTERNAL one. Real
//! clients work end to end on the client listener and are told client
//! addresses; brokers' requests sent to the client listener are refused,
//! change nothing and are counted; over TLS, the brokers authenticate one
//! another with certificates (mutual TLS) and clients verify the brokers'.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, DescribeUserScramCredentialsRequest,
    FetchRequest, ListPartitionReassignmentsRequest, MetadataRequest, ProducerId,
    SaslAuthenticateRequest, SaslHandshakeRequest, TopicName, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_client::Connection;
use sluice_tests::cluster::{Cluster, FAST_FAILOVER, SplitListeners};
use sluice_tests::sasl::{SCRAM_SHA_256, SCRAM_SHA_512, set_password};
use sluice_tests::tls::TestPki;
use sluice_tests::{admin_opts, await_deliveries, base_config, enqueue, unique_name};

const WAIT: Duration = Duration::from_secs(30);
const RECORDS: usize = 300;

fn config(bootstrap: &str, security: &[(&str, &str)]) -> ClientConfig {
    let mut c = base_config(bootstrap);
    for (k, v) in security {
        c.set(*k, *v);
    }
    c
}

/// What every client does on every listener setup: create a topic (of
/// `replicas` replicas, 3 on a cluster),
/// produce acks=all (idempotent), consume it all in a group, commit, and
/// read the commit back; every record must arrive exactly once. Returns the
/// broker addresses the client was told.
async fn workload(
    bootstrap: &str,
    replicas: i32,
    security: &[(&str, &str)],
) -> Result<Vec<String>> {
    let topic = unique_name("secure");
    let admin: AdminClient<DefaultClientContext> = config(bootstrap, security).create()?;
    let min_insync = (replicas - 1).max(1).to_string();
    let new = NewTopic::new(&topic, 3, TopicReplication::Fixed(replicas))
        .set("min.insync.replicas", &min_insync);
    for r in admin.create_topics([&new], &admin_opts()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e:?}"))?;
    }
    let producer: FutureProducer = config(bootstrap, security)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?;
    let mut sent = Vec::new();
    for i in 0..RECORDS {
        let key = format!("k{i}");
        let value = format!("v{i}");
        sent.push(
            enqueue(
                &producer,
                FutureRecord::to(&topic)
                    .key(key.as_bytes())
                    .payload(value.as_bytes()),
            )
            .await?,
        );
    }
    await_deliveries(sent).await.context("acks=all produce")?;
    let group = unique_name("secure-group");
    let consumer: StreamConsumer = config(bootstrap, security)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < RECORDS {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("consumed {} of {RECORDS}", seen.len()))??;
        use rdkafka::Message;
        let value = String::from_utf8_lossy(msg.payload().unwrap_or_default()).to_string();
        ensure!(seen.insert(value.clone()), "{value} delivered twice");
    }
    consumer.commit_consumer_state(CommitMode::Sync)?;
    let committed = consumer.committed(WAIT)?;
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0))
        .sum();
    ensure!(
        total == RECORDS as i64,
        "committed offsets add up to {total}"
    );
    let md = admin
        .inner()
        .fetch_metadata(Some(&topic), WAIT)
        .context("metadata")?;
    Ok(md
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A quorum frame (private API 32101, request header v0, JSON body).
async fn quorum_frame(addr: &str, json: &str) -> Result<Bytes, sluice_client::ClientError> {
    let conn = Connection::connect(addr, "anonymous", Duration::from_secs(5)).await?;
    conn.send_raw(
        32_101,
        0,
        0,
        Bytes::copy_from_slice(json.as_bytes()),
        Duration::from_secs(10),
    )
    .await
}

fn follower_fetch(topic: &str) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions.push(p);
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(1);
    req.max_bytes = 1 << 20;
    req.topics.push(t);
    req
}

fn marker(topic: &str) -> WriteTxnMarkersRequest {
    let mut t = WritableTxnMarkerTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_indexes.push(0);
    let mut m = WritableTxnMarker::default();
    m.producer_id = ProducerId(4242);
    m.producer_epoch = 0;
    m.transaction_result = false;
    m.topics.push(t);
    let mut req = WriteTxnMarkersRequest::default();
    req.markers.push(m);
    req
}

fn topic_exists(bootstrap: &str, topic: &str) -> Result<bool> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap, &[]).create()?;
    let md = admin.inner().fetch_metadata(None, WAIT)?;
    Ok(md.topics().iter().any(|t| t.name() == topic))
}

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;

#[test]
fn brokers_own_requests_are_served_only_on_the_inter_broker_listener() -> Result<()> {
    let split = SplitListeners {
        client: "PLAINTEXT",
        internal: "PLAINTEXT",
    };
    let cluster = Cluster::start_split(3, split, FAST_FAILOVER)?;
    let rt = runtime()?;
    // Real clients on the client listener, told client addresses only.
    let told = rt.block_on(workload(&cluster.bootstrap(), 3, &[]))?;
    let client_addrs: Vec<String> = (0..3).map(|i| cluster.addr(i).to_string()).collect();
    assert_eq!(sorted(told), sorted(client_addrs));

    let victim = unique_name("victim");
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> =
            config(&cluster.bootstrap(), &[]).create()?;
        let t = NewTopic::new(&victim, 1, TopicReplication::Fixed(3));
        for r in admin.create_topics([&t], &admin_opts()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e:?}"))?;
        }
        anyhow::Ok(())
    })?;
    let delete = format!(r#"{{"Propose":{{"type":"delete_topic","name":"{victim}"}}}}"#);
    let vote = r#"{"Vote":{"vote":{"leader_id":{"term":1000,"node_id":7},"committed":false},"last_log_id":null}}"#;
    for id in 0..3 {
        for frame in [delete.as_str(), vote] {
            let answer = rt.block_on(quorum_frame(cluster.addr(id), frame));
            let Err(e) = answer else {
                bail!("broker {id}'s client listener answered a quorum frame: {answer:?}");
            };
            assert!(!e.to_string().contains("malformed"), "{e}");
        }
        let refused = cluster.metric(
            id,
            r#"sluice_listener_inter_broker_requests_refused_total{listener="CLIENT",request="Quorum"}"#,
        )?;
        assert_eq!(refused, 2.0, "broker {id}");
    }
    // Kafka's brokers-only APIs get authorization errors there.
    rt.block_on(async {
        let conn = Connection::connect(cluster.addr(0), "anonymous", WAIT).await?;
        let fetch = conn.send(&follower_fetch(&victim), 12, WAIT).await?;
        assert_eq!(
            fetch.responses[0].partitions[0].error_code,
            TOPIC_AUTHORIZATION_FAILED
        );
        let markers = conn.send(&marker(&victim), 1, WAIT).await?;
        assert_eq!(
            markers.markers[0].topics[0].partitions[0].error_code,
            CLUSTER_AUTHORIZATION_FAILED
        );
        // The same follower fetch on the inter-broker listener is served.
        let internal = Connection::connect(cluster.internal_addr(0), "peer", WAIT).await?;
        let fetch = internal.send(&follower_fetch(&victim), 12, WAIT).await?;
        assert_ne!(
            fetch.responses[0].partitions[0].error_code,
            TOPIC_AUTHORIZATION_FAILED
        );
        let quorum = internal.send(&describe_quorum(), 1, WAIT).await?;
        assert_eq!(quorum.error_code, 0);
        assert!(
            quorum.topics[0].partitions[0].leader_id.0 >= 0,
            "{quorum:?}"
        );
        anyhow::Ok(())
    })?;
    for (request, n) in [("FollowerFetch", 1.0), ("WriteTxnMarkers", 1.0)] {
        let series = format!(
            r#"sluice_listener_inter_broker_requests_refused_total{{listener="CLIENT",request="{request}"}}"#
        );
        assert_eq!(cluster.metric(0, &series)?, n, "{series}");
    }
    // Nothing changed: the topic is there, the cluster still works.
    assert!(topic_exists(&cluster.bootstrap(), &victim)?);
    rt.block_on(workload(&cluster.bootstrap(), 3, &[]))?;
    // The frame itself was a real proposal: on the inter-broker listener
    // (of the controller, or forwarded by a follower) it deletes the topic.
    let answer = (0..3).find_map(|id| {
        rt.block_on(quorum_frame(cluster.internal_addr(id), &delete))
            .ok()
            .filter(|a| String::from_utf8_lossy(a).contains("Ok"))
    });
    ensure!(answer.is_some(), "no broker committed the proposal");
    cluster.wait_until("the victim topic deleted", WAIT, |c| {
        Ok(!topic_exists(&c.bootstrap(), &victim)?)
    })?;
    Ok(())
}

/// Three brokers whose client listener is of protocol `client` and whose
/// inter-broker listener is SSL (mutual: `pki`'s CA signs every party).
/// The key and the chain are in two files, as a Kubernetes TLS Secret
/// mounts them.
fn mtls_cluster(pki: &TestPki, client: &'static str) -> Result<Cluster> {
    mtls_cluster_with(pki, client, &[])
}

fn mtls_cluster_with(pki: &TestPki, client: &'static str, extra: &[&str]) -> Result<Cluster> {
    let chain = pki.broker_cert.to_string_lossy().to_string();
    let key = pki.broker_key.to_string_lossy().to_string();
    let truststore = pki.ca.to_string_lossy().to_string();
    let ssl = [
        "--ssl-keystore-location",
        chain.as_str(),
        "--ssl-keystore-key-location",
        key.as_str(),
        "--ssl-truststore-location",
        truststore.as_str(),
    ];
    let split = SplitListeners {
        client,
        internal: "SSL",
    };
    Cluster::start_split(3, split, &[FAST_FAILOVER, &ssl, extra].concat())
}

#[test]
fn tls_for_clients_and_mutual_tls_between_brokers() -> Result<()> {
    let pki = TestPki::generate()?;
    let truststore = pki.ca.to_string_lossy().to_string();
    let cluster = mtls_cluster(&pki, "SSL")?;
    let rt = runtime()?;
    let ssl = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", truststore.as_str()),
    ];
    let told = rt.block_on(workload(&cluster.bootstrap(), 3, &ssl))?;
    let client_addrs: Vec<String> = (0..3).map(|i| cluster.addr(i).to_string()).collect();
    assert_eq!(sorted(told), sorted(client_addrs));
    // Replication ran over the mutual-TLS inter-broker listener: every
    // partition has all three replicas in sync.
    let admin: AdminClient<DefaultClientContext> = config(&cluster.bootstrap(), &ssl).create()?;
    let md = admin.inner().fetch_metadata(None, WAIT)?;
    for t in md
        .topics()
        .iter()
        .filter(|t| t.name().starts_with("secure"))
    {
        for p in t.partitions() {
            assert_eq!(
                p.isr().len(),
                3,
                "{} {}: isr {:?}",
                t.name(),
                p.id(),
                p.isr()
            );
        }
    }
    // A plaintext client on the TLS listener: a failed handshake, counted.
    let plain = rt.block_on(quorum_frame(cluster.addr(0), "{}"));
    assert!(plain.is_err(), "{plain:?}");
    // The inter-broker listener requires a client certificate: a TLS
    // client without one (a client trusting the CA) is turned away.
    let no_cert = rt.block_on(async {
        let transport = pki.transport(None)?;
        let conn = Connection::open(cluster.internal_addr(0), "anon", WAIT, &transport).await?;
        conn.send_raw(32_101, 0, 0, Bytes::from_static(b"{}"), WAIT)
            .await
            .map_err(anyhow::Error::from)
    });
    assert!(no_cert.is_err(), "{no_cert:?}");
    cluster.wait_until("handshake failures counted", WAIT, |c| {
        let client = c.metric(
            0,
            r#"sluice_listener_tls_handshake_failures_total{listener="CLIENT"}"#,
        )?;
        let internal = c.metric(
            0,
            r#"sluice_listener_tls_handshake_failures_total{listener="INTERNAL"}"#,
        )?;
        Ok(client >= 1.0 && internal >= 1.0)
    })?;
    // With the broker's certificate (as a peer broker), it is served.
    rt.block_on(async {
        let transport = pki.transport(Some(&pki.broker_keystore))?;
        let conn = Connection::open(cluster.internal_addr(0), "peer", WAIT, &transport).await?;
        let fetch = conn.send(&follower_fetch("absent"), 12, WAIT).await?;
        ensure!(fetch.responses.len() == 1, "{fetch:?}");
        anyhow::Ok(())
    })?;
    Ok(())
}

/// One broker whose client listener is SSL, with `pki`'s certificate.
fn tls_broker(pki: &TestPki, extra_args: &[&str]) -> Result<Cluster> {
    let keystore = pki.broker_keystore.to_string_lossy().to_string();
    let args = [&["--ssl-keystore-location", keystore.as_str()], extra_args].concat();
    let split = SplitListeners {
        client: "SSL",
        internal: "PLAINTEXT",
    };
    Cluster::start_split(1, split, &args)
}

#[test]
fn renewed_certificates_are_served_without_a_restart() -> Result<()> {
    let pki = TestPki::generate()?;
    let truststore = pki.ca.to_string_lossy().to_string();
    let cluster = tls_broker(&pki, &[])?;
    let old_ca = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", truststore.as_str()),
    ];
    sluice_tests::tls::check_connects(&cluster.bootstrap(), &old_ca)?;
    // A new CA issues the broker a new certificate, written in place.
    let renewed = TestPki::generate()?;
    std::fs::copy(&renewed.broker_keystore, &pki.broker_keystore)?;
    let new_ca = renewed.ca.to_string_lossy().to_string();
    let new = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", new_ca.as_str()),
    ];
    cluster.wait_until("the renewed certificate served", WAIT, |c| {
        Ok(sluice_tests::tls::check_connects(&c.bootstrap(), &new).is_ok())
    })?;
    // Clients that trust only the old CA no longer connect.
    assert!(sluice_tests::tls::check_connects(&cluster.bootstrap(), &old_ca).is_err());
    Ok(())
}

#[test]
fn client_certificates_when_the_listener_requires_them() -> Result<()> {
    let pki = TestPki::generate()?;
    let truststore = pki.ca.to_string_lossy().to_string();
    let cluster = tls_broker(
        &pki,
        &[
            "--ssl-truststore-location",
            &truststore,
            "--ssl-client-auth",
            "required",
        ],
    )?;
    let cert = pki.client_cert.to_string_lossy().to_string();
    let key = pki.client_key.to_string_lossy().to_string();
    let with_cert = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", truststore.as_str()),
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key.as_str()),
    ];
    sluice_tests::tls::check_connects(&cluster.bootstrap(), &with_cert)?;
    runtime()?.block_on(workload(&cluster.bootstrap(), 1, &with_cert))?;
    let without = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", truststore.as_str()),
    ];
    assert!(sluice_tests::tls::check_connects(&cluster.bootstrap(), &without).is_err());
    Ok(())
}

/// With ACLs on and client certificates required: a client certificate
/// names the principal (`User:CN=client`, Kafka's default mapping), which
/// ACLs then govern; the same certificate does not get it into the
/// trusted inter-broker listener, where only the brokers' own certificate
/// (and super users) are let in.
#[test]
fn certificate_principals_meet_acls_and_only_brokers_pass_the_inter_broker_listener() -> Result<()>
{
    use sluice_tests::sasl::{codes as c, create_acls};
    let pki = TestPki::generate()?;
    let ca = pki.ca.to_string_lossy().to_string();
    let cluster = mtls_cluster_with(
        &pki,
        "SSL",
        &[
            "--ssl-client-auth",
            "required",
            "--authorizer-class-name",
            "StandardAuthorizer",
        ],
    )?;
    let rt = runtime()?;
    let transport = |keystore: &std::path::Path| pki.transport(Some(keystore));
    let (allowed, other) = (unique_name("cert-allowed"), unique_name("cert-other"));
    // An operator on the inter-broker listener with the brokers'
    // certificate: trusted; it makes the topics and the client's ACLs.
    rt.block_on(async {
        let conn = Connection::open(
            cluster.internal_addr(0),
            "ops",
            WAIT,
            &transport(&pki.broker_keystore)?,
        )
        .await?;
        let mut create = kafka_protocol::messages::CreateTopicsRequest::default();
        for name in [&allowed, &other] {
            let mut t = kafka_protocol::messages::create_topics_request::CreatableTopic::default();
            t.name = TopicName(StrBytes::from_string(name.clone()));
            t.num_partitions = 1;
            t.replication_factor = 3;
            create.topics.push(t);
        }
        create.timeout_ms = 30_000;
        let created = conn.send(&create, 7, WAIT).await?;
        ensure!(
            created.topics.iter().all(|t| t.error_code == 0),
            "create topics: {:?}",
            created
                .topics
                .iter()
                .map(|t| t.error_code)
                .collect::<Vec<_>>()
        );
        create_acls(
            &conn,
            &[
                (
                    c::TOPIC,
                    &allowed,
                    c::LITERAL,
                    "User:CN=client",
                    c::WRITE,
                    c::ALLOW,
                ),
                (
                    c::TOPIC,
                    &allowed,
                    c::LITERAL,
                    "User:CN=client",
                    c::DESCRIBE,
                    c::ALLOW,
                ),
            ],
        )
        .await
    })?;
    let cert = pki.client_cert.to_string_lossy().to_string();
    let key = pki.client_key.to_string_lossy().to_string();
    let client = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key.as_str()),
    ];
    let produce = |topic: &str| {
        rt.block_on(async {
            let producer: FutureProducer = config(&cluster.bootstrap(), &client)
                .set("message.timeout.ms", "10000")
                .create()?;
            let delivered = producer
                .send(FutureRecord::<str, str>::to(topic).payload("x"), WAIT)
                .await;
            anyhow::Ok(delivered.map(|_| ()).map_err(|(e, _)| format!("{e:?}")))
        })
    };
    produce(&allowed)?.map_err(|e| anyhow::anyhow!("User:CN=client may write: {e}"))?;
    let refused = produce(&other)?;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("TopicAuthorizationFailed")),
        "{refused:?}"
    );
    // DescribeQuorum needs Describe on the cluster, which the client's
    // principal lacks and the brokers' own certificate has.
    rt.block_on(async {
        let client = Connection::open(
            cluster.addr(1),
            "client",
            WAIT,
            &transport(&pki.client_keystore)?,
        )
        .await?;
        let denied = client.send(&describe_quorum(), 1, WAIT).await?;
        ensure!(
            denied.error_code == CLUSTER_AUTHORIZATION_FAILED,
            "{denied:?}"
        );
        let ops = Connection::open(
            cluster.internal_addr(1),
            "ops",
            WAIT,
            &transport(&pki.broker_keystore)?,
        )
        .await?;
        let described = ops.send(&describe_quorum(), 1, WAIT).await?;
        ensure!(described.error_code == 0, "{described:?}");
        let p = &described.topics[0].partitions[0];
        ensure!(
            p.error_code == 0 && p.current_voters.len() == 3,
            "{described:?}"
        );
        // Moving replicas needs Alter on the cluster, listing the moves
        // Describe: refused for the client, served for the brokers' own.
        let listing = ListPartitionReassignmentsRequest::default();
        let listed = client.send(&listing, 0, WAIT).await?;
        ensure!(
            listed.error_code == CLUSTER_AUTHORIZATION_FAILED,
            "{listed:?}"
        );
        let listed = ops.send(&listing, 0, WAIT).await?;
        ensure!(
            listed.error_code == 0 && listed.topics.is_empty(),
            "{listed:?}"
        );
        let mut moving = AlterPartitionReassignmentsRequest::default();
        let mut t = ReassignableTopic::default();
        t.name = TopicName(StrBytes::from_static_str("anything"));
        let mut part = ReassignablePartition::default();
        part.replicas = Some(vec![BrokerId(0)]);
        t.partitions = vec![part];
        moving.topics = vec![t];
        let refused = client.send(&moving, 1, WAIT).await?;
        ensure!(
            refused.error_code == CLUSTER_AUTHORIZATION_FAILED,
            "{refused:?}"
        );
        anyhow::Ok(())
    })?;
    // The client's certificate chains to the same CA, but the inter-broker
    // listener does not let it in.
    let sneaking = rt.block_on(async {
        let conn = Connection::open(
            cluster.internal_addr(0),
            "sneak",
            WAIT,
            &transport(&pki.client_keystore)?,
        )
        .await?;
        conn.send_raw(32_101, 0, 0, Bytes::from_static(b"{}"), WAIT)
            .await
            .map_err(anyhow::Error::from)
    });
    assert!(sneaking.is_err(), "{sneaking:?}");
    cluster.wait_until("the untrusted certificate counted", WAIT, |c| {
        Ok(c.metric(
            0,
            r#"sluice_listener_inter_broker_requests_refused_total{listener="INTERNAL",request="UntrustedCertificate"}"#,
        )? >= 1.0)
    })?;
    Ok(())
}

/// Security under faults: a SASL_SSL (SCRAM) user whose ACLs allow one
/// topic writes with an idempotent acks=all producer while partition
/// leaders are SIGKILLed and restarted on a 3-broker cluster whose
/// brokers replicate over mutual TLS; every acknowledged record is read
/// back exactly once, in order (history checker).
#[test]
fn acknowledged_records_survive_leader_kills_over_sasl_ssl_with_acls() -> Result<()> {
    use sluice_tests::load::{Load, plain, read_all_with};
    use sluice_tests::sasl::{codes as c, create_acls};
    let pki = TestPki::generate()?;
    let ca = pki.ca.to_string_lossy().to_string();
    let mut cluster = mtls_cluster_with(
        &pki,
        "SASL_SSL",
        &["--authorizer-class-name", "StandardAuthorizer"],
    )?;
    let topic = unique_name("secure-faults");
    let rt = runtime()?;
    // Set up on the inter-broker listener with the brokers' certificate.
    rt.block_on(async {
        let transport = pki.transport(Some(&pki.broker_keystore))?;
        let conn = Connection::open(cluster.internal_addr(0), "ops", WAIT, &transport).await?;
        set_password(&conn, "writer", "writer-secret", SCRAM_SHA_512).await?;
        let mut create = kafka_protocol::messages::CreateTopicsRequest::default();
        let mut t = kafka_protocol::messages::create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.clone()));
        t.num_partitions = 3;
        t.replication_factor = 3;
        let mut min_isr =
            kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default();
        min_isr.name = StrBytes::from_static_str("min.insync.replicas");
        min_isr.value = Some(StrBytes::from_static_str("2"));
        t.configs.push(min_isr);
        create.topics.push(t);
        create.timeout_ms = 30_000;
        let created = conn.send(&create, 7, WAIT).await?;
        ensure!(created.topics[0].error_code == 0, "create topic");
        const IDEMPOTENT_WRITE: i8 = 12;
        create_acls(
            &conn,
            &[
                (
                    c::TOPIC,
                    &topic,
                    c::LITERAL,
                    "User:writer",
                    c::WRITE,
                    c::ALLOW,
                ),
                (
                    c::TOPIC,
                    &topic,
                    c::LITERAL,
                    "User:writer",
                    c::READ,
                    c::ALLOW,
                ),
                (c::GROUP, "*", c::LITERAL, "User:writer", c::READ, c::ALLOW),
                (
                    c::CLUSTER,
                    "kafka-cluster",
                    c::LITERAL,
                    "User:writer",
                    IDEMPOTENT_WRITE,
                    c::ALLOW,
                ),
            ],
        )
        .await
    })?;
    let security = sasl_ssl(&ca, "SCRAM-SHA-512", "writer", "writer-secret");
    let bootstrap = cluster.bootstrap();
    let leader_of = |p: i32| -> Result<usize> {
        let admin: AdminClient<DefaultClientContext> = config(&bootstrap, &security).create()?;
        let md = admin.inner().fetch_metadata(Some(&topic), WAIT)?;
        let leader = md
            .topics()
            .first()
            .and_then(|t| t.partitions().iter().find(|x| x.id() == p))
            .map(|x| x.leader())
            .context("partition in metadata")?;
        Ok(usize::try_from(leader)?)
    };
    let load =
        rt.block_on(async { Load::start_with(&cluster.bootstrap(), &security, &topic, 3, plain) })?;
    std::thread::sleep(Duration::from_secs(2));
    for p in [0, 1] {
        let victim = leader_of(p)?;
        cluster.kill(victim);
        std::thread::sleep(Duration::from_secs(3));
        cluster.restart(victim)?;
        std::thread::sleep(Duration::from_secs(2));
    }
    let history = rt.block_on(load.stop())?;
    let reads = rt.block_on(read_all_with(
        &cluster.bootstrap(),
        &security,
        &topic,
        3,
        plain,
    ))?;
    let report = history.check(&reads);
    ensure!(report.is_clean(), "{report:?}");
    ensure!(
        history.acked_count() > 100,
        "only {} records acknowledged",
        history.acked_count()
    );
    Ok(())
}

/// librdkafka settings for a SASL_SSL user.
/// `sluice-broker ARGS` against a SASL_SSL listener: TLS checked with
/// `ca`, logged in with (mechanism, user, password).
fn cli_with_sasl(
    bootstrap: &str,
    ca: &str,
    (mechanism, user, password): (&str, &str, &str),
    args: &[&str],
) -> Result<std::process::Output> {
    Ok(std::process::Command::new(sluice_tests::broker_binary()?)
        .args(args)
        .args(["--tls-ca", ca, "--sasl-mechanism", mechanism])
        .args(["--sasl-username", user])
        .env("SLUICE_BROKERS", bootstrap)
        .env("SLUICE_SASL_PASSWORD", password)
        .output()?)
}

fn sasl_ssl<'a>(
    ca: &'a str,
    mechanism: &'a str,
    user: &'a str,
    password: &'a str,
) -> [(&'a str, &'a str); 5] {
    [
        ("security.protocol", "sasl_ssl"),
        ("ssl.ca.location", ca),
        ("sasl.mechanism", mechanism),
        ("sasl.username", user),
        ("sasl.password", password),
    ]
}

/// DescribeQuorum for the metadata log, as kafka-metadata-quorum sends it.
fn describe_quorum() -> kafka_protocol::messages::DescribeQuorumRequest {
    use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
    let mut topic = TopicData::default();
    topic.topic_name = kafka_protocol::messages::TopicName("__cluster_metadata".into());
    topic.partitions = vec![PartitionData::default()];
    let mut req = kafka_protocol::messages::DescribeQuorumRequest::default();
    req.topics = vec![topic];
    req
}

/// (user, [(mechanism code, iterations)]) as broker `conn` describes them.
async fn described(conn: &Connection) -> Result<Vec<(String, Vec<(i8, i32)>)>> {
    let resp = conn
        .send(&DescribeUserScramCredentialsRequest::default(), 0, WAIT)
        .await?;
    Ok(resp
        .results
        .iter()
        .map(|r| {
            (
                r.user.to_string(),
                r.credential_infos
                    .iter()
                    .map(|c| (c.mechanism, c.iterations))
                    .collect(),
            )
        })
        .collect())
}

#[test]
fn scram_and_plain_users_over_sasl_ssl_on_a_cluster() -> Result<()> {
    let pki = TestPki::generate()?;
    let ca = pki.ca.to_string_lossy().to_string();
    let cluster = mtls_cluster(&pki, "SASL_SSL")?;
    let rt = runtime()?;
    // Users are made over the inter-broker listener with a certificate
    // from the cluster's CA, as Kafka's admin tools on a broker listener.
    let admin_tls = pki.transport(Some(&pki.client_keystore))?;
    rt.block_on(async {
        let conn = Connection::open(cluster.internal_addr(0), "admin", WAIT, &admin_tls).await?;
        set_password(&conn, "alice", "alice-secret", SCRAM_SHA_512).await?;
        set_password(&conn, "bob", "bob-secret", SCRAM_SHA_256).await?;
        // Every broker knows them before clients try.
        for id in 0..3 {
            let c = Connection::open(cluster.internal_addr(id), "admin", WAIT, &admin_tls).await?;
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let users = described(&c).await?;
                if users
                    == [
                        ("alice".to_string(), vec![(SCRAM_SHA_512, 4096)]),
                        ("bob".to_string(), vec![(SCRAM_SHA_256, 4096)]),
                    ]
                {
                    break;
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "broker {id}: {users:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        anyhow::Ok(())
    })?;
    let alice = sasl_ssl(&ca, "SCRAM-SHA-512", "alice", "alice-secret");
    let told = rt.block_on(workload(&cluster.bootstrap(), 3, &alice))?;
    let client_addrs: Vec<String> = (0..3).map(|i| cluster.addr(i).to_string()).collect();
    assert_eq!(sorted(told), sorted(client_addrs));
    // PLAIN checks a password against the SCRAM store.
    sluice_tests::tls::check_connects(
        &cluster.bootstrap(),
        &sasl_ssl(&ca, "PLAIN", "bob", "bob-secret"),
    )?;
    sluice_tests::tls::check_connects(
        &cluster.bootstrap(),
        &sasl_ssl(&ca, "SCRAM-SHA-256", "bob", "bob-secret"),
    )?;
    // The command line logs in too, on every broker it asks.
    for (mechanism, user, password) in [
        ("SCRAM-SHA-512", "alice", "alice-secret"),
        ("SCRAM-SHA-256", "bob", "bob-secret"),
        ("PLAIN", "bob", "bob-secret"),
    ] {
        let out = cli_with_sasl(
            &cluster.bootstrap(),
            &ca,
            (mechanism, user, password),
            &["group", "list"],
        )?;
        assert!(out.status.success(), "{mechanism} {user}: {out:?}");
    }
    let wrong = cli_with_sasl(
        &cluster.bootstrap(),
        &ca,
        ("SCRAM-SHA-512", "alice", "wrong"),
        &["topic", "list"],
    )?;
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("SASL_AUTHENTICATION_FAILED"), "{said}");
    for (mechanism, user, password) in [
        ("SCRAM-SHA-512", "alice", "wrong"),
        ("SCRAM-SHA-512", "carol", "alice-secret"),
        ("SCRAM-SHA-256", "alice", "alice-secret"),
        ("PLAIN", "bob", "wrong"),
    ] {
        let refused = sluice_tests::tls::check_connects(
            &cluster.bootstrap(),
            &sasl_ssl(&ca, mechanism, user, password),
        );
        assert!(refused.is_err(), "{mechanism} {user}/{password} was let in");
    }
    let failures = |mechanism: &str| -> Result<f64> {
        let series = format!(
            r#"sluice_sasl_authentications_total{{listener="CLIENT",mechanism="{mechanism}",result="failure"}}"#
        );
        (0..3)
            .map(|id| Ok(cluster.metric(id, &series).unwrap_or(0.0)))
            .sum()
    };
    assert!(failures("SCRAM-SHA-512")? >= 2.0);
    assert!(failures("SCRAM-SHA-256")? >= 1.0);
    assert!(failures("PLAIN")? >= 1.0);
    Ok(())
}

const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;

async fn handshake(conn: &Connection, mechanism: &str) -> Result<i16> {
    let mut req = SaslHandshakeRequest::default();
    req.mechanism = StrBytes::from_string(mechanism.to_string());
    Ok(conn.send(&req, 1, WAIT).await?.error_code)
}

async fn sasl_authenticate(conn: &Connection, bytes: &[u8]) -> Result<(i16, Option<String>)> {
    let mut req = SaslAuthenticateRequest::default();
    req.auth_bytes = Bytes::copy_from_slice(bytes);
    let resp = conn.send(&req, 2, WAIT).await?;
    Ok((resp.error_code, resp.error_message.map(|m| m.to_string())))
}

/// Is the connection closed (a Metadata request gets no answer)?
async fn closed(conn: &Connection) -> bool {
    conn.send(&MetadataRequest::default(), 12, Duration::from_secs(5))
        .await
        .is_err()
}

#[test]
fn bad_sasl_exchanges_are_refused_and_close_only_their_connection() -> Result<()> {
    let split = SplitListeners {
        client: "SASL_PLAINTEXT",
        internal: "PLAINTEXT",
    };
    let cluster = Cluster::start_split(1, split, &[])?;
    let client = cluster.addr(0).to_string();
    let rt = runtime()?;
    rt.block_on(async {
        let admin = Connection::connect(cluster.internal_addr(0), "admin", WAIT).await?;
        set_password(&admin, "alice", "pw", SCRAM_SHA_512).await?;
        let open = || Connection::connect(&client, "raw", WAIT);
        // A good PLAIN login; this connection must survive the rest.
        let good = open().await?;
        assert_eq!(handshake(&good, "PLAIN").await?, 0);
        assert_eq!(sasl_authenticate(&good, b"\0alice\0pw").await?.0, 0);
        assert!(!closed(&good).await);
        // A request before authenticating.
        let c = open().await?;
        assert!(closed(&c).await);
        // A frame over 512 KiB before authenticating (Kafka's
        // sasl.server.max.receive.size): closed unread.
        let c = open().await?;
        let big = c
            .send_raw(18, 3, 2, Bytes::from(vec![0u8; 600 * 1024]), WAIT)
            .await;
        assert!(big.is_err(), "a 600 KiB frame before SASL was read");
        // SaslAuthenticate before SaslHandshake.
        let c = open().await?;
        assert!(sasl_authenticate(&c, b"\0alice\0pw").await.is_err() || closed(&c).await);
        // A mechanism not offered.
        let c = open().await?;
        assert_eq!(handshake(&c, "GSSAPI").await?, UNSUPPORTED_SASL_MECHANISM);
        assert!(closed(&c).await);
        // Wrong password, unknown user, garbage: one answer, one message.
        let mut messages = Vec::new();
        for (mechanism, token) in [
            ("PLAIN", &b"\0alice\0nope"[..]),
            ("PLAIN", b"\0mallory\0pw"),
            ("SCRAM-SHA-512", b"\xff\x00garbage"),
        ] {
            let c = open().await?;
            assert_eq!(handshake(&c, mechanism).await?, 0);
            let (code, message) = sasl_authenticate(&c, token).await?;
            assert_eq!(code, SASL_AUTHENTICATION_FAILED, "{mechanism} {token:?}");
            messages.push(message.unwrap_or_default());
            assert!(closed(&c).await);
        }
        assert_eq!(
            messages[0], messages[1],
            "the answer tells which part was wrong"
        );
        assert!(!messages[0].contains("mallory"), "{}", messages[0]);
        // A SCRAM exchange abandoned half way.
        let c = open().await?;
        assert_eq!(handshake(&c, "SCRAM-SHA-512").await?, 0);
        let (code, _) = sasl_authenticate(&c, b"n,,n=alice,r=abcdef").await?;
        assert_eq!(code, 0);
        drop(c);
        // None of it touched the good connection.
        assert!(!closed(&good).await);
        anyhow::Ok(())
    })?;
    let failures = cluster.metric(
        0,
        r#"sluice_sasl_authentications_total{listener="CLIENT",mechanism="PLAIN",result="failure"}"#,
    )?;
    assert_eq!(failures, 2.0);
    Ok(())
}

/// SaslHandshake(PLAIN) and SaslAuthenticate v1: (error code, session
/// lifetime in ms).
async fn plain_login(conn: &Connection, token: &[u8]) -> Result<(i16, i64)> {
    let mut hs = SaslHandshakeRequest::default();
    hs.mechanism = StrBytes::from_static_str("PLAIN");
    ensure!(conn.send(&hs, 1, WAIT).await?.error_code == 0, "handshake");
    let mut req = SaslAuthenticateRequest::default();
    req.auth_bytes = Bytes::copy_from_slice(token);
    let resp = conn.send(&req, 1, WAIT).await?;
    Ok((resp.error_code, resp.session_lifetime_ms))
}

/// KIP-368: with `--connections-max-reauth-ms` a SASL session has a
/// lifetime (told in SaslAuthenticate v1+); the client renews it on the
/// same connection, as the same principal; a connection that lets it
/// expire gets nothing but re-authentication (anything else closes it).
#[test]
fn sasl_sessions_expire_and_are_renewed_on_the_same_connection() -> Result<()> {
    let split = SplitListeners {
        client: "SASL_PLAINTEXT",
        internal: "PLAINTEXT",
    };
    let lifetime = Duration::from_millis(1500);
    let ms = lifetime.as_millis().to_string();
    let cluster = Cluster::start_split(1, split, &["--connections-max-reauth-ms", &ms])?;
    let client = cluster.addr(0).to_string();
    runtime()?.block_on(async {
        let admin = Connection::connect(cluster.internal_addr(0), "admin", WAIT).await?;
        set_password(&admin, "alice", "pw", SCRAM_SHA_512).await?;
        set_password(&admin, "bob", "pw", SCRAM_SHA_512).await?;
        let login = plain_login;
        // Renewed before it runs out: the connection keeps working.
        let renewing = Connection::connect(&client, "renewing", WAIT).await?;
        assert_eq!(
            login(&renewing, b"\0alice\0pw").await?,
            (0, lifetime.as_millis() as i64)
        );
        // Let two more connections' sessions run out.
        let lapsing = Connection::connect(&client, "lapsing", WAIT).await?;
        assert_eq!(login(&lapsing, b"\0alice\0pw").await?.0, 0);
        let lapsing_quietly = Connection::connect(&client, "lapsing", WAIT).await?;
        assert_eq!(login(&lapsing_quietly, b"\0alice\0pw").await?.0, 0);
        tokio::time::sleep(lifetime / 2).await;
        assert_eq!(login(&renewing, b"\0alice\0pw").await?.0, 0);
        tokio::time::sleep(lifetime * 3 / 4).await;
        assert!(!closed(&renewing).await, "renewed in time");
        assert!(closed(&lapsing).await, "expired and not renewed");
        // Even ApiVersions: after expiry only a re-authentication is heard.
        let versions = lapsing_quietly
            .send(
                &kafka_protocol::messages::ApiVersionsRequest::default(),
                3,
                Duration::from_secs(5),
            )
            .await;
        assert!(versions.is_err(), "ApiVersions answered after expiry");
        // Re-authenticating as someone else fails and closes.
        let (code, _) = login(&renewing, b"\0bob\0pw").await?;
        assert_eq!(code, SASL_AUTHENTICATION_FAILED);
        assert!(closed(&renewing).await);
        anyhow::Ok(())
    })?;
    Ok(())
}

const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const UNKNOWN_TOPIC_ID: i16 = 100;
const SECURITY_DISABLED: i16 = 54;

/// Topic names in a Metadata answer for every topic.
async fn listed_topics(conn: &Connection) -> Result<Vec<String>> {
    let mut req = MetadataRequest::default();
    req.topics = None;
    let md = conn.send(&req, 12, WAIT).await?;
    let mut names: Vec<String> = md
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .filter(|n| !n.starts_with("__"))
        .collect();
    names.sort();
    Ok(names)
}

fn fetch_request(topic: &str) -> FetchRequest {
    let mut req = follower_fetch(topic);
    req.replica_id = BrokerId(-1);
    req
}

#[test]
fn acls_allow_one_topic_and_group_and_refuse_everything_else() -> Result<()> {
    use sluice_tests::sasl::codes::*;
    use sluice_tests::sasl::{create_acls, login_plain};
    let split = SplitListeners {
        client: "SASL_PLAINTEXT",
        internal: "PLAINTEXT",
    };
    let acl_args = [
        "--authorizer-class-name",
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--super-users",
        "User:admin",
    ];
    let cluster = Cluster::start_split(3, split, &[FAST_FAILOVER, &acl_args].concat())?;
    let rt = runtime()?;
    let topics = ["allowed", "other", "pre-data", "pre-secret"];
    let acls: Vec<sluice_tests::sasl::Acl> = vec![
        (TOPIC, "allowed", LITERAL, "User:alice", WRITE, ALLOW),
        (TOPIC, "allowed", LITERAL, "User:alice", READ, ALLOW),
        (GROUP, "g-allowed", LITERAL, "User:alice", READ, ALLOW),
        (TOPIC, "pre-", PREFIXED, "User:alice", READ, ALLOW),
        (TOPIC, "pre-secret", LITERAL, "User:alice", READ, DENY),
    ];
    rt.block_on(async {
        // Set-up on the inter-broker listener (trusted).
        let internal = Connection::connect(cluster.internal_addr(0), "setup", WAIT).await?;
        set_password(&internal, "alice", "alice-pw", SCRAM_SHA_512).await?;
        set_password(&internal, "admin", "admin-pw", SCRAM_SHA_512).await?;
        let admin: AdminClient<DefaultClientContext> =
            config(&cluster.internal_bootstrap(), &[]).create()?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(3)))
            .collect();
        for r in admin.create_topics(&new, &admin_opts()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e:?}"))?;
        }
        create_acls(&internal, &acls).await?;
        // Every broker has the users and the ACLs.
        for id in 0..3 {
            let c = Connection::connect(cluster.internal_addr(id), "setup", WAIT).await?;
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let listed = c.send(&describe_all_acls(), 3, WAIT).await?;
                let n: usize = listed.resources.iter().map(|r| r.acls.len()).sum();
                if n == acls.len() && described(&c).await?.len() == 2 {
                    break;
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "broker {id}: {n} ACLs"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        anyhow::Ok(())
    })?;

    // A real client as alice: the allowed topic and group work.
    let alice = [
        ("security.protocol", "sasl_plaintext"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", "alice"),
        ("sasl.password", "alice-pw"),
    ];
    rt.block_on(async {
        let producer: FutureProducer = config(&cluster.bootstrap(), &alice)
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()?;
        let ok = producer
            .send(FutureRecord::to("allowed").key("k").payload("v"), WAIT)
            .await;
        ensure!(ok.is_ok(), "produce to the allowed topic: {ok:?}");
        let denied = producer
            .send(FutureRecord::to("other").key("k").payload("v"), WAIT)
            .await;
        let Err((e, _)) = denied else {
            bail!("produce to another topic was accepted");
        };
        ensure!(
            e.to_string().contains("authoriz"),
            "produce to another topic failed with {e}"
        );
        let consumer: StreamConsumer = config(&cluster.bootstrap(), &alice)
            .set("group.id", "g-allowed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&["allowed"])?;
        let msg = tokio::time::timeout(WAIT, consumer.recv()).await??;
        use rdkafka::Message;
        ensure!(msg.payload() == Some(&b"v"[..]));
        consumer.commit_message(&msg, CommitMode::Sync)?;
        anyhow::Ok(())
    })?;

    // The same user, request by request.
    rt.block_on(async {
        let conn = Connection::connect(cluster.addr(1), "alice", WAIT).await?;
        login_plain(&conn, "alice", "alice-pw").await?;
        // Metadata shows what alice may describe: READ/WRITE imply
        // DESCRIBE; a DENY of READ does not deny DESCRIBE.
        assert_eq!(
            listed_topics(&conn).await?,
            ["allowed", "pre-data", "pre-secret"]
        );
        let fetch_code = |topic: &'static str| {
            let conn = &conn;
            async move {
                let r = conn.send(&fetch_request(topic), 12, WAIT).await?;
                anyhow::Ok(r.responses[0].partitions[0].error_code)
            }
        };
        assert_ne!(
            fetch_code("pre-data").await?,
            TOPIC_AUTHORIZATION_FAILED,
            "prefixed ALLOW"
        );
        assert_eq!(
            fetch_code("pre-secret").await?,
            TOPIC_AUTHORIZATION_FAILED,
            "DENY wins"
        );
        assert_eq!(
            fetch_code("other").await?,
            TOPIC_AUTHORIZATION_FAILED,
            "no ACL"
        );
        // Creating topics, joining other groups, changing ACLs: refused.
        let mut create = kafka_protocol::messages::CreateTopicsRequest::default();
        let mut t = kafka_protocol::messages::create_topics_request::CreatableTopic::default();
        t.name = TopicName(StrBytes::from_static_str("alice-new"));
        t.num_partitions = 1;
        t.replication_factor = 1;
        create.topics.push(t);
        let created = conn.send(&create, 7, WAIT).await?;
        assert_eq!(created.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
        let mut join = kafka_protocol::messages::JoinGroupRequest::default();
        join.group_id = kafka_protocol::messages::GroupId(StrBytes::from_static_str("g-other"));
        join.session_timeout_ms = 10_000;
        join.rebalance_timeout_ms = 10_000;
        join.protocol_type = StrBytes::from_static_str("consumer");
        let joined = conn.send(&join, 5, WAIT).await?;
        assert_eq!(joined.error_code, GROUP_AUTHORIZATION_FAILED);
        let acl_change = create_acls(
            &conn,
            &[(TOPIC, "other", LITERAL, "User:alice", WRITE, ALLOW)],
        )
        .await;
        ensure!(
            acl_change
                .as_ref()
                .is_err_and(|e| e.to_string().contains("error 31")),
            "alice changed ACLs: {acl_change:?}"
        );
        // Metadata v0's "all topics" (an empty list) is filtered too.
        let mut all_v0 = MetadataRequest::default();
        all_v0.topics = Some(Vec::new());
        let v0 = conn.send(&all_v0, 0, WAIT).await?;
        ensure!(
            v0.topics
                .iter()
                .all(|t| t.name.as_ref().is_some_and(|n| n.as_str() != "other")),
            "v0 metadata shows a topic alice may not describe"
        );
        // Topics named by id: no DELETE, no deletion (UNKNOWN_TOPIC_ID for
        // a topic she may not even describe).
        let mut by_name = MetadataRequest::default();
        by_name.topics = None;
        let ids: std::collections::BTreeMap<String, uuid::Uuid> =
            Connection::connect(cluster.internal_addr(0), "setup", WAIT)
                .await?
                .send(&by_name, 12, WAIT)
                .await?
                .topics
                .iter()
                .filter_map(|t| Some((t.name.as_ref()?.to_string(), t.topic_id)))
                .collect();
        let mut delete_ids = kafka_protocol::messages::DeleteTopicsRequest::default();
        for name in ["allowed", "other"] {
            let mut t =
                kafka_protocol::messages::delete_topics_request::DeleteTopicState::default();
            t.name = None;
            t.topic_id = ids[name];
            delete_ids.topics.push(t);
        }
        delete_ids.timeout_ms = 10_000;
        let deleted = conn.send(&delete_ids, 6, WAIT).await?;
        let code_of = |name: &str| {
            deleted
                .responses
                .iter()
                .find(|r| r.topic_id == ids[name])
                .map(|r| r.error_code)
        };
        assert_eq!(code_of("allowed"), Some(TOPIC_AUTHORIZATION_FAILED));
        assert_eq!(code_of("other"), Some(UNKNOWN_TOPIC_ID));
        // The super user may do anything.
        let admin = Connection::connect(cluster.addr(2), "admin", WAIT).await?;
        login_plain(&admin, "admin", "admin-pw").await?;
        assert_eq!(
            listed_topics(&admin).await?,
            ["allowed", "other", "pre-data", "pre-secret"]
        );
        assert_ne!(
            admin
                .send(&fetch_request("other"), 12, WAIT)
                .await?
                .responses[0]
                .partitions[0]
                .error_code,
            TOPIC_AUTHORIZATION_FAILED
        );
        // Deleting alice's READ on `allowed` takes it away everywhere.
        let mut delete = kafka_protocol::messages::DeleteAclsRequest::default();
        let mut f = kafka_protocol::messages::delete_acls_request::DeleteAclsFilter::default();
        f.resource_type_filter = TOPIC;
        f.resource_name_filter = Some(StrBytes::from_static_str("allowed"));
        f.pattern_type_filter = LITERAL;
        f.principal_filter = Some(StrBytes::from_static_str("User:alice"));
        f.host_filter = None;
        f.operation = READ;
        f.permission_type = ALLOW;
        delete.filters.push(f);
        let deleted = admin.send(&delete, 3, WAIT).await?;
        assert_eq!(deleted.filter_results[0].matching_acls.len(), 1);
        let deadline = tokio::time::Instant::now() + WAIT;
        while fetch_code("allowed").await? != TOPIC_AUTHORIZATION_FAILED {
            ensure!(tokio::time::Instant::now() < deadline, "READ still allowed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    })?;
    let denied: f64 = (0..3)
        .map(|id| {
            cluster
                .metric(
                    id,
                    r#"sluice_authorization_denied_total{operation="Read",resource_type="Topic"}"#,
                )
                .unwrap_or(0.0)
        })
        .sum();
    assert!(denied >= 3.0, "{denied}");
    Ok(())
}

fn describe_all_acls() -> kafka_protocol::messages::DescribeAclsRequest {
    let mut req = kafka_protocol::messages::DescribeAclsRequest::default();
    req.resource_type_filter = 1;
    req.resource_name_filter = None;
    req.principal_filter = None;
    req.host_filter = None;
    req.pattern_type_filter = 1;
    req.operation = 1;
    req.permission_type = 1;
    req
}

#[test]
fn acl_apis_without_an_authorizer_say_security_disabled() -> Result<()> {
    let cluster = Cluster::start(1, &[])?;
    runtime()?.block_on(async {
        let conn = Connection::connect(cluster.addr(0), "t", WAIT).await?;
        let described = conn.send(&describe_all_acls(), 3, WAIT).await?;
        assert_eq!(described.error_code, SECURITY_DISABLED);
        let created =
            sluice_tests::sasl::create_acls(&conn, &[(2, "t", 3, "User:alice", 3, 3)]).await;
        ensure!(
            created
                .as_ref()
                .is_err_and(|e| e.to_string().contains("error 54")),
            "{created:?}"
        );
        anyhow::Ok(())
    })
}

/// One broker with ACLs on, a SASL client listener and a PLAINTEXT
/// inter-broker one, whose admin API takes the tokens in `tokens`.
fn admin_token_broker(tokens: &std::path::Path, extra: &[&str]) -> Result<Cluster> {
    let tokens = tokens.to_string_lossy().to_string();
    let split = SplitListeners {
        client: "SASL_PLAINTEXT",
        internal: "PLAINTEXT",
    };
    let args = [
        "--authorizer-class-name",
        "StandardAuthorizer",
        "--admin-auth-tokens-file",
        tokens.as_str(),
    ];
    Cluster::start_split(1, split, &[&args[..], extra].concat())
}

#[test]
fn the_admin_api_wants_a_token_and_plugin_changes_an_acl() -> Result<()> {
    use sluice_tests::http_as;
    use sluice_tests::sasl::codes::*;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("admin-tokens");
    let ops = "ops-token-0123456789abcdef";
    let viewer = "viewer-token-0123456789abcdef";
    std::fs::write(
        &tokens,
        format!("# principal token\nUser:ops {ops}\nUser:viewer {viewer}\n"),
    )?;
    let cluster = admin_token_broker(&tokens, &[])?;
    let admin = cluster.brokers[0].admin_addr();
    // Probes stay open; everything else needs a token.
    assert_eq!(http_as(admin, "GET", "/healthz", None, b"")?.status, 200);
    assert_eq!(http_as(admin, "GET", "/readyz", None, b"")?.status, 200);
    for path in ["/metrics", "/v1/plugins"] {
        assert_eq!(
            http_as(admin, "GET", path, None, b"")?.status,
            401,
            "{path}"
        );
        assert_eq!(
            http_as(admin, "GET", path, Some("wrong-token-0123456789"), b"")?.status,
            401,
            "{path}"
        );
    }
    assert_eq!(
        http_as(admin, "GET", "/metrics", Some(viewer), b"")?.status,
        200
    );
    // Plugins: DESCRIBE to read, ALTER to change, as ACLs on the cluster.
    let wasm = sluice_tests::example_plugin("keep_filter.wasm")?;
    let upload = "/v1/plugins/keep?kind=filter";
    assert_eq!(
        http_as(admin, "POST", upload, Some(ops), &wasm)?.status,
        403
    );
    assert_eq!(
        http_as(admin, "GET", "/v1/plugins", Some(viewer), b"")?.status,
        403
    );
    runtime()?.block_on(async {
        let internal = Connection::connect(cluster.internal_addr(0), "setup", WAIT).await?;
        sluice_tests::sasl::create_acls(
            &internal,
            &[
                (CLUSTER, "kafka-cluster", LITERAL, "User:ops", ALTER, ALLOW),
                (
                    CLUSTER,
                    "kafka-cluster",
                    LITERAL,
                    "User:viewer",
                    DESCRIBE,
                    ALLOW,
                ),
            ],
        )
        .await
    })?;
    let uploaded = http_as(admin, "POST", upload, Some(ops), &wasm)?;
    ensure!(
        uploaded.status / 100 == 2,
        "{} {}",
        uploaded.status,
        uploaded.body
    );
    let listed = http_as(admin, "GET", "/v1/plugins", Some(viewer), b"")?;
    ensure!(
        listed.status == 200 && listed.body.contains("keep"),
        "{}",
        listed.body
    );
    assert_eq!(
        http_as(admin, "DELETE", "/v1/plugins/keep", Some(viewer), b"")?.status,
        403
    );
    // The CLI takes the token.
    let cli = |token: Option<&str>| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new(sluice_tests::broker_binary()?);
        cmd.args(["plugin", "list", "--admin", &admin.to_string()]);
        cmd.env_remove("SLUICE_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        Ok(cmd.output()?)
    };
    let with = cli(Some(viewer))?;
    ensure!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    ensure!(String::from_utf8_lossy(&with.stdout).contains("keep"));
    let without = cli(None)?;
    ensure!(!without.status.success());
    ensure!(
        String::from_utf8_lossy(&without.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    // A rewritten tokens file (a renewed Kubernetes Secret) is read again
    // without a restart: the new token works, the dropped one stops.
    let renewed = "renewed-token-0123456789abcdef";
    std::fs::write(&tokens, format!("User:viewer {renewed}\n"))?;
    cluster.wait_until("the renewed token accepted", WAIT, |_| {
        Ok(http_as(admin, "GET", "/metrics", Some(renewed), b"")?.status == 200)
    })?;
    assert_eq!(
        http_as(admin, "GET", "/metrics", Some(viewer), b"")?.status,
        401
    );
    Ok(())
}

/// `--admin-tls`: the admin API (probes and `/metrics` included) is HTTPS
/// with the broker's certificate; a client certificate (with
/// `--admin-ssl-client-auth requested`) names the caller as a token does;
/// the CLI connects with `--ca`.
#[test]
fn the_admin_api_over_tls_with_tokens_or_client_certificates() -> Result<()> {
    use sluice_tests::sasl::codes::*;
    use sluice_tests::tls::https_as;
    let pki = TestPki::generate()?;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("admin-tokens");
    let ops = "ops-token-0123456789abcdef";
    // The client certificate's principal is one the admin API knows (it
    // has a token, unused here); the broker's certificate, from the same
    // CA, names one it does not.
    std::fs::write(
        &tokens,
        format!("User:ops {ops}\nUser:CN=client client-token-0123456789abcdef\n"),
    )?;
    let s = |p: &std::path::Path| p.to_string_lossy().to_string();
    let (chain, key, ca) = (s(&pki.broker_cert), s(&pki.broker_key), s(&pki.ca));
    let cluster = admin_token_broker(
        &tokens,
        &[
            "--admin-tls",
            "--admin-ssl-client-auth",
            "requested",
            "--ssl-keystore-location",
            &chain,
            "--ssl-keystore-key-location",
            &key,
            "--ssl-truststore-location",
            &ca,
        ],
    )?;
    let admin = cluster.brokers[0].admin_addr();
    // Plain HTTP gets no HTTP answer.
    let plain = sluice_tests::http_as(admin, "GET", "/healthz", None, b"");
    assert!(plain.as_ref().is_err(), "{:?}", plain.map(|r| r.status));
    assert_eq!(
        https_as(admin, &pki, None, "GET", "/readyz", None)?.status,
        200
    );
    assert_eq!(
        https_as(admin, &pki, None, "GET", "/metrics", None)?.status,
        401
    );
    assert_eq!(
        https_as(admin, &pki, None, "GET", "/metrics", Some(ops))?.status,
        200
    );
    // A certificate from the truststore's CA is not enough: its principal
    // must be one the admin API knows.
    let stranger = Some((pki.broker_cert.as_path(), pki.broker_key.as_path()));
    assert_eq!(
        https_as(admin, &pki, stranger, "GET", "/metrics", None)?.status,
        401
    );
    // The client certificate is `User:CN=client`: authenticated, and
    // authorized once an ACL says so.
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    assert_eq!(
        https_as(admin, &pki, client, "GET", "/metrics", None)?.status,
        200
    );
    assert_eq!(
        https_as(admin, &pki, client, "GET", "/v1/plugins", None)?.status,
        403
    );
    runtime()?.block_on(async {
        let internal = Connection::connect(cluster.internal_addr(0), "setup", WAIT).await?;
        sluice_tests::sasl::create_acls(
            &internal,
            &[
                (
                    CLUSTER,
                    "kafka-cluster",
                    LITERAL,
                    "User:CN=client",
                    DESCRIBE,
                    ALLOW,
                ),
                (
                    CLUSTER,
                    "kafka-cluster",
                    LITERAL,
                    "User:ops",
                    DESCRIBE,
                    ALLOW,
                ),
            ],
        )
        .await
    })?;
    assert_eq!(
        https_as(admin, &pki, client, "GET", "/v1/plugins", None)?.status,
        200
    );
    // The CLI over TLS.
    let cli = |ca: Option<&str>| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new(sluice_tests::broker_binary()?);
        cmd.args([
            "plugin",
            "list",
            "--admin",
            &admin.to_string(),
            "--token",
            ops,
        ]);
        cmd.env_remove("SLUICE_ADMIN_CA");
        if let Some(ca) = ca {
            cmd.args(["--ca", ca]);
        }
        Ok(cmd.output()?)
    };
    let with = cli(Some(&ca))?;
    ensure!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    ensure!(
        !cli(None)?.status.success(),
        "plain HTTP to a TLS admin API"
    );
    Ok(())
}
