//! The exact Kubernetes API contract of the three controllers, against an
//! in-process fake API server (`support`) and a real `sluice-broker`
//! process: which requests a reconcile sends, in which order, with which
//! patch type and field manager; that a converged object gets zero writes;
//! and that the API server's answers (a failed JSON-patch test, a deletion
//! held by a finalizer) are handled.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use sluice_operator::context::{Context, Endpoints};
use sluice_operator::crd::{Plugin, Topic};
use sluice_operator::kafka_admin::KafkaAdmin;
use sluice_operator::metrics::Metrics;
use sluice_operator::{cluster_controller, plugin_controller, topic_controller};
use sluice_tests::Broker;
use support::{FakeApiServer, Request};

const NS: &str = "/apis/sluice.dev/v1alpha1/namespaces/ns";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn topics() -> String {
    format!("{NS}/topics")
}

fn context(api: &FakeApiServer, broker: &Broker, admins: usize) -> Arc<Context> {
    Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::new().expect("metrics")),
        Endpoints::Fixed {
            kafka: broker.bootstrap(),
            admin: vec![broker.admin_url(); admins],
        },
        Duration::from_secs(60),
        Some("contract-test".into()),
    ))
}

/// A real one-broker cluster, the fake API server, and a `Cluster` for it.
async fn setup() -> (Broker, FakeApiServer, Arc<Context>) {
    let broker = Broker::start().expect("broker");
    let api = FakeApiServer::start().await;
    let ctx = context(&api, &broker, 1);
    cluster_cr(&api, 1);
    (broker, api, ctx)
}

fn cluster_cr(api: &FakeApiServer, brokers: i32) {
    api.create(
        &format!("{NS}/clusters"),
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "demo" },
            "spec": { "brokers": brokers, "image": "sluice:test" },
        }),
    );
}

fn topic_cr(api: &FakeApiServer, name: &str, kafka_name: &str, partitions: i32) {
    api.create(
        &topics(),
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Topic",
            "metadata": { "name": name },
            "spec": {
                "cluster": { "name": "demo" }, "topicName": kafka_name,
                "partitions": partitions, "replicationFactor": 1,
                "config": { "retention.ms": "3600000" },
            },
        }),
    );
}

async fn reconcile_topic(api: &FakeApiServer, ctx: &Arc<Context>, name: &str) {
    let t: Topic =
        serde_json::from_value(api.get(&topics(), name).expect("topic")).expect("decode");
    topic_controller::reconcile(Arc::new(t), ctx.clone())
        .await
        .expect("reconcile");
}

/// `kubectl delete` through the API; the request itself is forgotten.
async fn kubectl_delete<K>(api: &FakeApiServer, name: &str)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(api.admin_client(), "ns")
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    api.take_requests();
}

async fn partitions(admin: &mut KafkaAdmin, topic: &str) -> i32 {
    let t = admin.describe_topic(topic).await.expect("describe");
    t.expect("the topic exists").partitions()
}

fn summaries(reqs: &[Request]) -> Vec<String> {
    reqs.iter().map(Request::summary).collect()
}

fn assert_apply(r: &Request) {
    assert_eq!(
        r.content_type,
        "application/apply-patch+yaml",
        "{}",
        r.summary()
    );
    assert!(
        r.query.contains("fieldManager=sluice-operator") && r.query.contains("force=true"),
        "apply with the one field manager: {}",
        r.query
    );
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn topic_lifecycle_sends_exactly_the_expected_requests() {
    let (broker, api, ctx) = setup().await;
    let kafka = sluice_tests::unique_name("orders");
    topic_cr(&api, "orders", &kafka, 3);
    let topic_path = format!("{NS}/topics/orders");

    // Create: finalizer, broker create, event, status.
    reconcile_topic(&api, &ctx, "orders").await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("PATCH {topic_path} (json-patch)"),
            format!("POST {EVENTS}"),
            format!("PATCH {topic_path}/status (apply)"),
        ]
    );
    assert_eq!(
        writes[0].body,
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": ["sluice.dev/topic"] },
        ])
    );
    assert_eq!(writes[1].body["reason"], "Created");
    assert_eq!(writes[1].body["regarding"]["name"], "orders");
    assert_apply(&writes[2]);
    assert_eq!(writes[2].body["apiVersion"], "sluice.dev/v1alpha1");
    assert_eq!(writes[2].body["kind"], "Topic");
    let stored = api.get(&topics(), "orders").expect("stored");
    assert_eq!(
        stored["metadata"]["generation"], 1,
        "status and finalizer writes keep the generation"
    );
    assert_eq!(condition(&stored, "Ready")["status"], "True");
    assert_eq!(stored["status"]["observedGeneration"], 1);
    let mut admin = KafkaAdmin::connect(&broker.bootstrap())
        .await
        .expect("admin");
    let ids = admin.broker_ids().await.expect("ids");
    let t = admin
        .describe_topic(&kafka)
        .await
        .expect("describe")
        .expect("created");
    assert_eq!(t.assignment, vec![ids.clone(); 3]);
    assert_eq!(stored["status"]["assignment"], json!(t.assignment));

    // Converged: reads only.
    reconcile_topic(&api, &ctx, "orders").await;
    assert_eq!(
        summaries(&api.take_writes()),
        Vec::<String>::new(),
        "a converged Topic gets zero writes"
    );

    // Grow (a spec change bumps the generation): broker write + status.
    let edited = api.edit(&topics(), "orders", |o| o["spec"]["partitions"] = json!(4));
    assert_eq!(edited["metadata"]["generation"], 2);
    reconcile_topic(&api, &ctx, "orders").await;
    assert_eq!(
        summaries(&api.take_writes()),
        vec![format!("PATCH {topic_path}/status (apply)")]
    );
    assert_eq!(partitions(&mut admin, &kafka).await, 4);
    assert_eq!(
        api.get(&topics(), "orders").expect("t")["status"]["observedGeneration"],
        2
    );

    // Drift made with another client is reverted without Kubernetes writes.
    admin
        .alter_configs(
            &kafka,
            &[("retention.ms".to_string(), "1000".to_string())].into(),
            &[],
        )
        .await
        .expect("drift");
    reconcile_topic(&api, &ctx, "orders").await;
    assert_eq!(summaries(&api.take_writes()), Vec::<String>::new());
    let t = admin.describe_topic(&kafka).await.expect("d").expect("t");
    assert_eq!(
        t.configs.get("retention.ms").map(String::as_str),
        Some("3600000")
    );

    // A shrink is refused: warning event + condition, the broker untouched.
    api.edit(&topics(), "orders", |o| o["spec"]["partitions"] = json!(2));
    reconcile_topic(&api, &ctx, "orders").await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("POST {EVENTS}"),
            format!("PATCH {topic_path}/status (apply)")
        ]
    );
    assert_eq!(writes[0].body["type"], "Warning");
    assert_eq!(writes[0].body["reason"], "NotSupported");
    let stored = api.get(&topics(), "orders").expect("t");
    assert_eq!(condition(&stored, "NotSupported")["status"], "True");
    assert_eq!(partitions(&mut admin, &kafka).await, 4);
    api.edit(&topics(), "orders", |o| o["spec"]["partitions"] = json!(4));
    reconcile_topic(&api, &ctx, "orders").await;
    api.take_requests();

    // Delete: the finalizer holds the object until the Kafka topic is gone.
    kubectl_delete::<Topic>(&api, "orders").await;
    assert!(
        api.get(&topics(), "orders").expect("held")["metadata"]["deletionTimestamp"].is_string()
    );
    reconcile_topic(&api, &ctx, "orders").await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("POST {EVENTS}"),
            format!("PATCH {topic_path} (json-patch)")
        ]
    );
    assert_eq!(
        writes[1].body,
        json!([
            { "op": "test", "path": "/metadata/finalizers/0", "value": "sluice.dev/topic" },
            { "op": "remove", "path": "/metadata/finalizers/0" },
        ])
    );
    assert!(
        api.get(&topics(), "orders").is_none(),
        "finalizer gone, object gone"
    );
    assert!(admin.describe_topic(&kafka).await.expect("d").is_none());
}

#[tokio::test]
async fn stale_finalizer_patch_fails_instead_of_overwriting() {
    let (_broker, api, ctx) = setup().await;
    topic_cr(&api, "t", &sluice_tests::unique_name("stale"), 1);
    let stale: Topic = serde_json::from_value(api.get(&topics(), "t").expect("t")).expect("decode");
    // Someone else adds a finalizer after our read.
    api.edit(&topics(), "t", |o| {
        o["metadata"]["finalizers"] = json!(["example.com/other"])
    });
    let err = topic_controller::reconcile(Arc::new(stale), ctx.clone())
        .await
        .expect_err("the test op must fail");
    assert!(err.to_string().contains("Kubernetes API"), "{err}");
    assert_eq!(
        api.get(&topics(), "t").expect("t")["metadata"]["finalizers"],
        json!(["example.com/other"]),
        "nothing overwritten"
    );
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains(
            r#"sluice_operator_reconcile_errors_total{controller="topic",error="kube_api"} 1"#
        ),
        "the failure is counted by kind:\n{metrics}"
    );
    // The next reconcile reads the fresh object and appends.
    reconcile_topic(&api, &ctx, "t").await;
    assert_eq!(
        api.get(&topics(), "t").expect("t")["metadata"]["finalizers"],
        json!(["example.com/other", "sluice.dev/topic"])
    );
    let metrics = ctx.metrics.render();
    assert!(metrics.contains(r#"sluice_operator_reconciliations_total{controller="topic"} 2"#));
    assert!(
        metrics
            .contains(r#"sluice_operator_reconcile_duration_seconds_count{controller="topic"} 2"#)
    );
}

#[tokio::test]
async fn deleting_a_topic_whose_cluster_is_gone_only_drops_the_finalizer() {
    let broker = Broker::start().expect("broker");
    let api = FakeApiServer::start().await;
    let ctx = context(&api, &broker, 1);
    topic_cr(&api, "orphan", &sluice_tests::unique_name("orphan"), 1);
    api.edit(&topics(), "orphan", |o| {
        o["metadata"]["finalizers"] = json!(["sluice.dev/topic"])
    });
    reconcile_topic(&api, &ctx, "orphan").await;
    let stored = api.get(&topics(), "orphan").expect("t");
    assert_eq!(condition(&stored, "Ready")["reason"], "ClusterNotFound");
    api.take_requests();
    kubectl_delete::<Topic>(&api, "orphan").await;
    reconcile_topic(&api, &ctx, "orphan").await;
    assert_eq!(
        summaries(&api.take_writes()),
        vec![format!("PATCH {NS}/topics/orphan (json-patch)")]
    );
    assert!(
        api.get(&topics(), "orphan").is_none(),
        "the namespace is not held"
    );
}

fn example_wasm(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/examples/target/wasm32-unknown-unknown/release")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the example plugins first (scripts/build-plugins)",
            path.display()
        )
    })
}

async fn reconcile_plugin(api: &FakeApiServer, ctx: &Arc<Context>, name: &str) {
    let p: Plugin =
        serde_json::from_value(api.get(&format!("{NS}/plugins"), name).expect("plugin"))
            .expect("decode");
    plugin_controller::reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("reconcile");
}

#[tokio::test]
async fn plugin_from_a_config_map_is_uploaded_once_and_deleted_with_the_resource() {
    let (broker, api, ctx) = setup().await;
    let plugins = format!("{NS}/plugins");
    let wasm = example_wasm("stamp_header.wasm");
    let digest = sluice_operator::plugin_plan::digest(&wasm);
    api.create(
        &plugins,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Plugin",
            "metadata": { "name": "stamp" },
            "spec": {
                "cluster": { "name": "demo" }, "kind": "interceptor",
                "source": { "configMapKeyRef": { "name": "modules", "key": "stamp.wasm" } },
            },
        }),
    );

    // The ConfigMap is missing: a condition, no upload.
    reconcile_plugin(&api, &ctx, "stamp").await;
    let stored = api.get(&plugins, "stamp").expect("p");
    assert_eq!(condition(&stored, "Ready")["reason"], "InvalidSource");
    let admin = sluice_operator::broker_admin::BrokerAdmin::new(&broker.admin_url());
    assert!(admin.plugin("stamp").await.expect("registry").is_none());
    api.take_requests();

    api.create(
        "/api/v1/namespaces/ns/configmaps",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "modules" },
            "binaryData": { "stamp.wasm": base64::engine::general_purpose::STANDARD.encode(&wasm) },
        }),
    );
    reconcile_plugin(&api, &ctx, "stamp").await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("POST {EVENTS}"),
            format!("PATCH {plugins}/stamp/status (apply)")
        ]
    );
    assert_apply(&writes[1]);
    let stored = api.get(&plugins, "stamp").expect("p");
    assert_eq!(stored["status"]["digest"], digest);
    assert_eq!(stored["status"]["version"], 1);
    assert_eq!(condition(&stored, "Ready")["status"], "True");
    let registered = admin
        .plugin("stamp")
        .await
        .expect("registry")
        .expect("uploaded");
    assert_eq!(
        (registered.sha256.as_str(), registered.version),
        (digest.as_str(), 1)
    );

    // Converged: no Kubernetes writes and no new version on the brokers.
    reconcile_plugin(&api, &ctx, "stamp").await;
    assert_eq!(summaries(&api.take_writes()), Vec::<String>::new());
    assert_eq!(
        admin.plugin("stamp").await.expect("r").expect("p").version,
        1
    );

    kubectl_delete::<Plugin>(&api, "stamp").await;
    reconcile_plugin(&api, &ctx, "stamp").await;
    assert_eq!(
        summaries(&api.take_writes()),
        vec![
            format!("POST {EVENTS}"),
            format!("PATCH {plugins}/stamp (json-patch)")
        ]
    );
    assert!(api.get(&plugins, "stamp").is_none());
    assert!(
        admin.plugin("stamp").await.expect("registry").is_none(),
        "deleted on the brokers"
    );
}

#[tokio::test]
async fn a_module_the_brokers_refuse_is_a_condition_not_a_retry_loop() {
    let (broker, api, ctx) = setup().await;
    let plugins = format!("{NS}/plugins");
    api.create(
        &plugins,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Plugin",
            "metadata": { "name": "broken", "finalizers": ["sluice.dev/plugin"] },
            "spec": {
                "cluster": { "name": "demo" }, "kind": "filter",
                // Only the WebAssembly magic: no module.
                "source": { "inline": "AGFzbQ==" },
            },
        }),
    );
    reconcile_plugin(&api, &ctx, "broken").await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("POST {EVENTS}"),
            format!("PATCH {plugins}/broken/status (apply)")
        ]
    );
    assert_eq!(writes[0].body["reason"], "Rejected");
    let stored = api.get(&plugins, "broken").expect("p");
    let ready = condition(&stored, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("Rejected"))
    );
    assert!(
        ready["message"].as_str().is_some_and(|m| m.contains("400")),
        "{ready}"
    );
    let admin = sluice_operator::broker_admin::BrokerAdmin::new(&broker.admin_url());
    assert!(admin.plugin("broken").await.expect("registry").is_none());

    // Converged on the refusal: the next look writes no status.
    reconcile_plugin(&api, &ctx, "broken").await;
    let writes = summaries(&api.take_writes());
    assert!(
        !writes.iter().any(|w| w.ends_with("status (apply)")),
        "{writes:?}"
    );
}

async fn reconcile_cluster(api: &FakeApiServer, ctx: &Arc<Context>) {
    let c = serde_json::from_value(api.get(&format!("{NS}/clusters"), "demo").expect("cluster"))
        .expect("decode");
    cluster_controller::reconcile(Arc::new(c), ctx.clone())
        .await
        .expect("reconcile");
}

fn broker_pod(api: &FakeApiServer, ordinal: i32, hash: &str) {
    api.create(
        "/api/v1/namespaces/ns/pods",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("demo-{ordinal}"),
                "labels": {
                    "app.kubernetes.io/instance": "demo",
                    "app.kubernetes.io/component": "broker",
                    "apps.kubernetes.io/pod-index": ordinal.to_string(),
                },
                "annotations": { "sluice.dev/config-hash": hash },
            },
            "spec": { "containers": [] },
            "status": { "conditions": [{ "type": "Ready", "status": "True" }] },
        }),
    );
}

#[tokio::test]
async fn cluster_objects_are_applied_once_and_a_config_change_rolls_one_broker() {
    // Node id 2: the one real broker stands in for all three, and holds
    // replicas on "broker 2", which a scale-down to 2 would remove.
    let broker = Broker::start_with_args(&["--node-id", "2"]).expect("broker");
    sluice_tests::create_topic(
        &broker.bootstrap(),
        &sluice_tests::unique_name("held"),
        1,
        &[],
    )
    .await
    .expect("topic");
    let api = FakeApiServer::start().await;
    let ctx = context(&api, &broker, 3);
    cluster_cr(&api, 3);
    let core = "/api/v1/namespaces/ns";
    reconcile_cluster(&api, &ctx).await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("PATCH {core}/configmaps/demo-config (apply)"),
            format!("PATCH {core}/services/demo-brokers (apply)"),
            format!("PATCH {core}/services/demo-bootstrap (apply)"),
            "PATCH /apis/apps/v1/namespaces/ns/statefulsets/demo (apply)".to_string(),
            "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo (apply)".to_string(),
            format!("PATCH {NS}/clusters/demo/status (apply)"),
        ]
    );
    writes.iter().for_each(assert_apply);
    let sts = api
        .get("/apis/apps/v1/namespaces/ns/statefulsets", "demo")
        .expect("sts");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "Cluster");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(sts["spec"]["replicas"], 3);

    reconcile_cluster(&api, &ctx).await;
    assert_eq!(
        summaries(&api.take_writes()),
        Vec::<String>::new(),
        "converged: zero writes"
    );

    // Three ready brokers on the current config; then a config change.
    let hash = sts["spec"]["template"]["metadata"]["annotations"]["sluice.dev/config-hash"]
        .as_str()
        .expect("hash")
        .to_string();
    for i in 0..3 {
        broker_pod(&api, i, &hash);
    }
    reconcile_cluster(&api, &ctx).await;
    api.take_requests();
    api.edit(&format!("{NS}/clusters"), "demo", |c| {
        c["spec"]["config"] = json!({ "default-partitions": "3" })
    });
    reconcile_cluster(&api, &ctx).await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("PATCH {core}/configmaps/demo-config (apply)"),
            "PATCH /apis/apps/v1/namespaces/ns/statefulsets/demo (apply)".to_string(),
            format!("DELETE {core}/pods/demo-2"),
            format!("POST {EVENTS}"),
            format!("PATCH {NS}/clusters/demo/status (apply)"),
        ],
        "only the changed objects, and one broker restarted"
    );
    // Pod 2 is gone and not yet back: nothing else is restarted.
    reconcile_cluster(&api, &ctx).await;
    let writes = summaries(&api.take_writes());
    assert!(
        !writes.iter().any(|w| w.starts_with("DELETE")),
        "{writes:?}"
    );

    // Scale-down to 2 would drop broker 2, which holds a replica: it is
    // to be drained first (here the move cannot be made: brokers 0 and 1
    // do not exist), and the StatefulSet keeps its size meanwhile.
    api.edit(&format!("{NS}/clusters"), "demo", |c| {
        c["spec"]["brokers"] = json!(2)
    });
    reconcile_cluster(&api, &ctx).await;
    let stored = api.get(&format!("{NS}/clusters"), "demo").expect("c");
    assert_eq!(condition(&stored, "Scaling")["reason"], "DrainingBrokers");
    assert_eq!(
        api.get("/apis/apps/v1/namespaces/ns/statefulsets", "demo")
            .expect("sts")["spec"]["replicas"],
        3
    );
}

/// The fake itself answers like the API server where the controllers rely
/// on it, so the contract above means something.
#[tokio::test]
async fn the_fake_api_server_keeps_the_api_servers_rules() {
    let api = FakeApiServer::start().await;
    topic_cr(&api, "t", "t", 1);
    let topics_api = Api::<Topic>::namespaced(api.admin_client(), "ns");
    let stale = topics_api.get("t").await.expect("get");

    // Status and metadata writes keep the generation; spec writes bump it.
    topics_api
        .patch_status(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "topicName": "x" } })),
        )
        .await
        .expect("status write");
    api.edit(&topics(), "t", |o| {
        o["metadata"]["labels"] = json!({ "a": "b" })
    });
    let t = api.get(&topics(), "t").expect("t");
    assert_eq!(t["metadata"]["generation"], 1);
    assert_eq!(
        t["status"]["topicName"], "x",
        "the status subresource took it"
    );
    api.edit(&topics(), "t", |o| o["spec"]["partitions"] = json!(2));
    assert_eq!(
        api.get(&topics(), "t").expect("t")["metadata"]["generation"],
        2
    );

    // A write carrying an old resourceVersion is a 409.
    let err = topics_api
        .patch(
            "t",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "resourceVersion": stale.metadata.resource_version } }),
            ),
        )
        .await
        .expect_err("stale resourceVersion");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );

    // A finalizer holds a deleted object; removing it lets it go.
    api.edit(&topics(), "t", |o| {
        o["metadata"]["finalizers"] = json!(["x/y"])
    });
    topics_api
        .delete("t", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(api.get(&topics(), "t").expect("held")["metadata"]["deletionTimestamp"].is_string());
    api.edit(&topics(), "t", |o| o["metadata"]["finalizers"] = json!([]));
    assert!(api.get(&topics(), "t").is_none());
}

#[tokio::test]
async fn install_crds_updates_the_crds_helm_installed() {
    let api = FakeApiServer::start().await;
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    // Helm's crds/ put them there first; the operator may only update them.
    for crd in sluice_operator::crd::all_crds() {
        api.create(crds, serde_json::to_value(crd).expect("crd"));
    }
    api.take_requests();
    sluice_operator::run::install_crds(&api.client())
        .await
        .expect("apply CRDs");
    let writes = api.take_writes();
    assert_eq!(writes.len(), 4, "Cluster, Topic, Plugin, User");
    writes.iter().for_each(assert_apply);
}

#[tokio::test]
async fn one_replica_holds_the_lease_and_another_takes_over() {
    use kube_lease_manager::LeaseManagerBuilder;
    let api = FakeApiServer::start().await;
    let manager = |identity: &'static str| {
        LeaseManagerBuilder::new(api.client(), sluice_operator::run::LEASE_NAME)
            .with_namespace("ns")
            .with_identity(identity)
            .with_field_manager("sluice-operator")
            .with_duration(3)
            .with_grace(1)
            .build()
    };
    let first = manager("operator-a").await.expect("manager a");
    let second = manager("operator-b").await.expect("manager b");
    assert!(
        first.changed().await.expect("a"),
        "the first takes the free lease"
    );
    let lease = api
        .get(
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            "sluice-operator",
        )
        .expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "operator-a");
    let b_wins = tokio::time::timeout(Duration::from_secs(2), second.changed()).await;
    assert!(b_wins.is_err(), "the second waits while the first renews");
    first.release().await.expect("release");
    let took = tokio::time::timeout(Duration::from_secs(10), second.changed())
        .await
        .expect("takes over in time")
        .expect("b");
    assert!(took);
    api.take_requests(); // every Lease call was allowed by the chart's rules
}

/// A leader that stops (SIGTERM) releases the Lease before it exits: the
/// release is a write to the Lease (no holder), and the standby, which
/// looks at the Lease every second, takes over at once instead of waiting
/// out the leader's last renewal (15 s).
#[tokio::test]
async fn a_stopping_leader_releases_the_lease_for_its_standby() {
    use sluice_operator::run::Leadership;
    let api = FakeApiServer::start().await;
    let leases = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";
    let client = api.client();
    let leader = tokio::time::timeout(
        Duration::from_secs(10),
        Leadership::acquire(&client, "ns", "operator-a", 15),
    )
    .await
    .expect("in time")
    .expect("a leads");
    let standby = tokio::spawn({
        let client = client.clone();
        async move { Leadership::acquire(&client, "ns", "operator-b", 15).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !standby.is_finished(),
        "the standby waits while the leader holds the Lease"
    );
    api.take_requests();
    leader.release().await;
    let released = api
        .take_writes()
        .into_iter()
        .any(|w| w.path.starts_with(leases) && w.body["spec"]["holderIdentity"].is_null());
    assert!(released, "the leader wrote the Lease free on its way out");
    let started = std::time::Instant::now();
    let standby = tokio::time::timeout(Duration::from_secs(5), standby)
        .await
        .expect("the standby takes over within seconds, not the 15 s of the leader's last renewal")
        .expect("task")
        .expect("b leads");
    eprintln!(
        "standby took over {:?} after the release",
        started.elapsed()
    );
    let lease = api.get(leases, "sluice-operator").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "operator-b");
    standby.release().await;
    api.take_requests(); // the standby's reads were allowed by the chart's rules too
}

#[tokio::test]
async fn release_finalizers_lets_resources_go_without_the_operator() {
    let api = FakeApiServer::start().await;
    topic_cr(&api, "held", "held", 1);
    topic_cr(&api, "free", "free", 1);
    api.edit(&topics(), "held", |o| {
        o["metadata"]["finalizers"] = json!(["example.com/keep", "sluice.dev/topic"])
    });
    api.create(
        &format!("{NS}/users"),
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "User",
            "metadata": { "name": "alice", "finalizers": ["sluice.dev/user"] },
            "spec": { "cluster": { "name": "demo" } },
        }),
    );
    api.take_requests();
    let released = sluice_operator::run::release_finalizers(&api.client(), &[])
        .await
        .expect("release");
    assert_eq!(released, 2);
    assert_eq!(
        api.get(&topics(), "held").expect("t")["metadata"]["finalizers"],
        json!(["example.com/keep"]),
        "only ours"
    );
    assert_eq!(
        api.get(&format!("{NS}/users"), "alice").expect("u")["metadata"]["finalizers"],
        json!([])
    );
    assert_eq!(api.take_writes().len(), 2);
}

// ------------------------------------------------ a secured Cluster, Users

/// A Cluster with TLS, a SASL client listener and authorization.
fn secured_cluster_cr(api: &FakeApiServer) {
    api.create(
        &format!("{NS}/clusters"),
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "demo" },
            "spec": {
                "brokers": 1, "image": "sluice:test",
                "listeners": [{ "name": "CLIENT", "port": 9093, "authentication": "sasl" }],
                "tls": { "secretName": "demo-tls" },
                "saslMechanisms": ["SCRAM-SHA-512", "PLAIN"],
                "authorization": { "superUsers": ["User:admin"] },
            },
        }),
    );
}

fn secret(api: &FakeApiServer, name: &str, data: &[(&str, &[u8])]) {
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    api.create(
        "/api/v1/namespaces/ns/secrets",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "data": data }),
    );
}

fn secret_value(api: &FakeApiServer, name: &str, key: &str) -> String {
    let s = api
        .get("/api/v1/namespaces/ns/secrets", name)
        .expect("secret");
    let text = s["data"][key].as_str().expect("key");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

fn env_of(sts: &Value) -> std::collections::BTreeMap<String, String> {
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect()
}

#[tokio::test]
async fn a_secured_cluster_gets_its_credentials_secret_once_and_mounts_its_secrets() {
    let api = FakeApiServer::start().await;
    // Nothing listens there: before the first apply nothing is asked.
    let ctx = Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::new().expect("metrics")),
        Endpoints::Fixed {
            kafka: "127.0.0.1:1".into(),
            admin: vec!["http://127.0.0.1:1".into()],
        },
        Duration::from_secs(60),
        Some("contract-test".into()),
    ));
    secured_cluster_cr(&api);
    let core = "/api/v1/namespaces/ns";
    reconcile_cluster(&api, &ctx).await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("POST {core}/secrets"),
            format!("PATCH {core}/configmaps/demo-config (apply)"),
            format!("PATCH {core}/services/demo-brokers (apply)"),
            format!("PATCH {core}/services/demo-bootstrap (apply)"),
            "PATCH /apis/apps/v1/namespaces/ns/statefulsets/demo (apply)".to_string(),
            "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/demo (apply)".to_string(),
            format!("PATCH {NS}/clusters/demo/status (apply)"),
        ],
        "the credentials Secret first: the brokers mount it"
    );
    let made = &writes[0].body;
    assert_eq!(made["metadata"]["name"], "demo-operator-credentials");
    assert_eq!(made["metadata"]["ownerReferences"][0]["kind"], "Cluster");
    let token = secret_value(&api, "demo-operator-credentials", "operator-token");
    assert_eq!(token.len(), 64, "32 random bytes as hex");
    let tokens = secret_value(&api, "demo-operator-credentials", "admin-tokens");
    assert!(tokens.contains(&format!("User:sluice-operator {token}")));

    let sts = api
        .get("/apis/apps/v1/namespaces/ns/statefulsets", "demo")
        .expect("sts");
    let env = env_of(&sts);
    let host = "$(POD_NAME).demo-brokers.ns.svc";
    assert_eq!(
        env["SLUICE_LISTENERS"],
        "INTERNAL://0.0.0.0:9092,CLIENT://0.0.0.0:9093"
    );
    assert_eq!(
        env["SLUICE_ADVERTISED_LISTENERS"],
        format!("INTERNAL://{host}:9092,CLIENT://{host}:9093")
    );
    assert_eq!(
        env["SLUICE_LISTENER_SECURITY_PROTOCOL_MAP"],
        "INTERNAL:SSL,CLIENT:SASL_PLAINTEXT"
    );
    assert_eq!(env["SLUICE_INTER_BROKER_LISTENER_NAME"], "INTERNAL");
    assert_eq!(env["SLUICE_SASL_ENABLED_MECHANISMS"], "SCRAM-SHA-512,PLAIN");
    assert_eq!(env["SLUICE_SUPER_USERS"], "User:sluice-operator;User:admin");
    assert!(!env.contains_key("SLUICE_LISTEN"));
    assert_eq!(env["SLUICE_ADMIN_TLS"], "true");
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
        "HTTPS"
    );
    let volumes = &sts["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[1]["secret"]["secretName"], "demo-tls");
    assert_eq!(
        volumes[2]["secret"]["secretName"],
        "demo-operator-credentials"
    );
    let service = api
        .get(&format!("{core}/services"), "demo-bootstrap")
        .expect("service");
    let ports: Vec<&str> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(ports, ["kafka", "admin", "client"]);
    let status = &api.get(&format!("{NS}/clusters"), "demo").expect("cluster")["status"];
    assert_eq!(
        status["bootstrap"], "demo-bootstrap.ns.svc:9093",
        "clients are pointed at their listener, not INTERNAL"
    );

    // The StatefulSet exists now, so the brokers are asked (and are not
    // there); the Secret is kept, not made again.
    reconcile_cluster(&api, &ctx).await;
    assert_eq!(
        summaries(&api.take_writes()),
        Vec::<String>::new(),
        "converged: zero writes"
    );
    assert_eq!(
        secret_value(&api, "demo-operator-credentials", "operator-token"),
        token
    );

    // Authorization without TLS is refused before anything is applied.
    api.edit(&format!("{NS}/clusters"), "demo", |c| {
        c["spec"]["tls"] = Value::Null;
        c["spec"]["listeners"][0]["tls"] = json!(true);
    });
    reconcile_cluster(&api, &ctx).await;
    let writes = api.take_writes();
    assert_eq!(
        summaries(&writes),
        vec![
            format!("POST {EVENTS}"),
            format!("PATCH {NS}/clusters/demo/status (apply)"),
        ]
    );
    let status = &api.get(&format!("{NS}/clusters"), "demo").expect("cluster")["status"];
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
}

/// The one-broker stand-in for a secured `Cluster`: an SSL `INTERNAL`
/// listener (mutual TLS with the `demo-tls` Secret's certificate) and a
/// SASL_PLAINTEXT client listener, ACLs on, and the admin API requiring
/// the tokens of the credentials Secret the Cluster controller made.
struct SecuredSetup {
    cluster: sluice_tests::cluster::Cluster,
    api: FakeApiServer,
    ctx: Arc<Context>,
    _pki: sluice_tests::tls::TestPki,
    _tokens: tempfile::NamedTempFile,
}

async fn secured_setup() -> SecuredSetup {
    use sluice_tests::cluster::{Cluster as Brokers, SplitListeners};
    let pki = sluice_tests::tls::TestPki::generate().expect("pki");
    let api = FakeApiServer::start().await;
    secured_cluster_cr(&api);
    let read = |p: &std::path::Path| std::fs::read(p).expect("pem");
    secret(
        &api,
        "demo-tls",
        &[
            ("ca.crt", &read(&pki.ca)),
            ("tls.crt", &read(&pki.broker_cert)),
            ("tls.key", &read(&pki.broker_key)),
        ],
    );
    // The Cluster controller makes the credentials Secret.
    let placeholder = Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::new().expect("metrics")),
        Endpoints::Fixed {
            kafka: "127.0.0.1:1".into(),
            admin: Vec::new(),
        },
        Duration::from_secs(60),
        None,
    ));
    reconcile_cluster(&api, &placeholder).await;
    let tokens = tempfile::NamedTempFile::new().expect("tokens file");
    std::fs::write(
        tokens.path(),
        secret_value(&api, "demo-operator-credentials", "admin-tokens"),
    )
    .expect("write tokens");
    let s = |p: &std::path::Path| p.to_string_lossy().to_string();
    let (chain, key, ca, tokens_path) = (
        s(&pki.broker_cert),
        s(&pki.broker_key),
        s(&pki.ca),
        s(tokens.path()),
    );
    let args = [
        "--ssl-keystore-location",
        chain.as_str(),
        "--ssl-keystore-key-location",
        key.as_str(),
        "--ssl-truststore-location",
        ca.as_str(),
        "--sasl-enabled-mechanisms",
        "SCRAM-SHA-512,PLAIN",
        "--authorizer-class-name",
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--super-users",
        "User:sluice-operator;User:admin",
        "--admin-auth-tokens-file",
        tokens_path.as_str(),
        "--admin-tls",
    ];
    let split = SplitListeners {
        client: "SASL_PLAINTEXT",
        internal: "SSL",
    };
    // Blocking is fine: nothing asks the fake API server meanwhile.
    let cluster = Brokers::start_split(1, split, &args).expect("broker");
    let ctx = Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::new().expect("metrics")),
        Endpoints::Fixed {
            kafka: cluster.internal_addr(0).to_string(),
            admin: vec![https(&cluster)],
        },
        Duration::from_secs(60),
        Some("contract-test".into()),
    ));
    api.take_requests();
    SecuredSetup {
        cluster,
        api,
        ctx,
        _pki: pki,
        _tokens: tokens,
    }
}

/// The broker's admin API URL: served over TLS (`--admin-tls`).
fn https(cluster: &sluice_tests::cluster::Cluster) -> String {
    cluster.admin_url(0).replacen("http://", "https://", 1)
}

async fn reconcile_user(api: &FakeApiServer, ctx: &Arc<Context>, name: &str) {
    let u: sluice_operator::crd::User =
        serde_json::from_value(api.get(&format!("{NS}/users"), name).expect("user"))
            .expect("decode");
    sluice_operator::user_controller::reconcile(Arc::new(u), ctx.clone())
        .await
        .expect("reconcile");
}

/// Whether `user` can log in with `password` on the SASL listener.
async fn logs_in(addr: &str, user: &str, password: &str) -> bool {
    let conn = sluice_client::Connection::connect(addr, "contract-test", Duration::from_secs(10))
        .await
        .expect("connect");
    sluice_tests::sasl::login_plain(&conn, user, password)
        .await
        .is_ok()
}

/// Produces one record as `user` over SASL/SCRAM-SHA-512 with librdkafka;
/// the error code name if refused.
async fn produce_as(
    bootstrap: &str,
    user: &str,
    password: &str,
    topic: &str,
) -> Result<(), String> {
    use sluice_tests::rdkafka::producer::{FutureProducer, FutureRecord};
    let mut config = sluice_tests::producer_config(bootstrap);
    config
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("message.timeout.ms", "10000");
    let producer: FutureProducer = config.create().map_err(|e| e.to_string())?;
    producer
        .send(
            FutureRecord::<str, str>::to(topic).payload("x"),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| format!("{e:?}"))
}

#[tokio::test]
async fn a_user_gets_scram_credentials_and_acls_through_mutual_tls_and_loses_them_on_delete() {
    let SecuredSetup {
        cluster, api, ctx, ..
    } = secured_setup().await;
    let users = format!("{NS}/users");
    let client_addr = cluster.addr(0).to_string();
    let mut admin = ctx
        .kafka_admin(
            &serde_json::from_value(api.get(&format!("{NS}/clusters"), "demo").expect("c"))
                .expect("decode"),
        )
        .await
        .expect("the operator reaches INTERNAL over mutual TLS");
    // The operator is trusted there: it makes the topics the test uses.
    let (orders, other) = (
        sluice_tests::unique_name("orders"),
        sluice_tests::unique_name("other"),
    );
    for t in [&orders, &other] {
        admin
            .create_topic(t, &[vec![0]], &Default::default())
            .await
            .expect("topic");
    }
    secret(&api, "alice-password", &[("password", b"first-secret")]);
    api.create(
        &users,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "User",
            "metadata": { "name": "alice" },
            "spec": {
                "cluster": { "name": "demo" },
                "authentication": {
                    "type": "scram-sha-512",
                    "password": { "secretKeyRef": { "name": "alice-password", "key": "password" } },
                },
                "acls": [
                    { "resource": { "type": "topic", "name": orders },
                      "operations": ["Write", "Describe"] },
                    { "resource": { "type": "group", "name": "billing", "patternType": "prefixed" },
                      "operations": ["Read"] },
                ],
            },
        }),
    );
    api.take_requests();
    reconcile_user(&api, &ctx, "alice").await;
    let reqs = api.take_requests();
    assert_eq!(
        summaries(&reqs),
        vec![
            format!("GET {NS}/clusters/demo"),
            format!("GET {users}"),
            "GET /api/v1/namespaces/ns/secrets/demo-tls".to_string(),
            "GET /api/v1/namespaces/ns/secrets/alice-password".to_string(),
            format!("PATCH {users}/alice (json-patch)"),
            format!("PATCH {users}/alice/status (apply)"),
        ]
    );
    let status = &api.get(&users, "alice").expect("user")["status"];
    assert_eq!(status["principal"], "User:alice");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(
        admin.scram_credentials("alice").await.expect("describe"),
        vec![(2, 4096)]
    );
    assert_eq!(admin.acls_of("User:alice").await.expect("acls").len(), 3);
    assert!(logs_in(&client_addr, "alice", "first-secret").await);
    assert!(!logs_in(&client_addr, "alice", "wrong").await);
    produce_as(&cluster.bootstrap(), "alice", "first-secret", &orders)
        .await
        .expect("alice writes orders");
    let refused = produce_as(&cluster.bootstrap(), "alice", "first-secret", &other).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("TopicAuthorizationFailed")),
        "{refused:?}"
    );

    // Converged: nothing written, to Kubernetes or (same credentials and
    // ACLs after) to the brokers.
    reconcile_user(&api, &ctx, "alice").await;
    assert_eq!(summaries(&api.take_writes()), Vec::<String>::new());
    assert!(logs_in(&client_addr, "alice", "first-secret").await);

    // A new password in the Secret replaces the old one.
    api.edit("/api/v1/namespaces/ns/secrets", "alice-password", |s| {
        s["data"]["password"] = json!(base64::engine::general_purpose::STANDARD.encode("second"))
    });
    reconcile_user(&api, &ctx, "alice").await;
    assert!(logs_in(&client_addr, "alice", "second").await);
    assert!(!logs_in(&client_addr, "alice", "first-secret").await);

    // An ACL made by other means for the principal is the resource's to
    // remove; a rule taken out of the spec goes too.
    let stray = sluice_operator::user_plan::Acl {
        resource_type: 2,
        name: other.clone(),
        pattern_type: 3,
        host: "*".into(),
        operation: 3,
        permission: 3,
    };
    admin
        .create_acls("User:alice", std::slice::from_ref(&stray))
        .await
        .expect("stray ACL");
    api.edit(&users, "alice", |u| {
        u["spec"]["acls"][0]["operations"] = json!(["Describe"])
    });
    reconcile_user(&api, &ctx, "alice").await;
    let left = admin.acls_of("User:alice").await.expect("acls");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&stray));
    let refused = produce_as(&cluster.bootstrap(), "alice", "second", &orders).await;
    assert!(refused.is_err(), "Write was taken away");

    // Deleting the resource deletes the credentials and the ACLs.
    kubectl_delete::<sluice_operator::crd::User>(&api, "alice").await;
    reconcile_user(&api, &ctx, "alice").await;
    assert!(api.get(&users, "alice").is_none(), "finalizer released");
    assert!(!logs_in(&client_addr, "alice", "second").await);
    assert_eq!(admin.acls_of("User:alice").await.expect("acls"), vec![]);
    assert_eq!(
        admin.scram_credentials("alice").await.expect("scram"),
        vec![]
    );
}

#[tokio::test]
async fn plugins_reach_brokers_that_require_the_operators_admin_token() {
    let SecuredSetup {
        cluster, api, ctx, ..
    } = secured_setup().await;
    let wasm = example_wasm("stamp_header.wasm");
    api.create(
        &format!("{NS}/plugins"),
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Plugin",
            "metadata": { "name": "stamp" },
            "spec": {
                "cluster": { "name": "demo" }, "kind": "interceptor",
                "source": { "inline": base64::engine::general_purpose::STANDARD.encode(&wasm) },
            },
        }),
    );
    reconcile_plugin(&api, &ctx, "stamp").await;
    let ca = secret_value(&api, "demo-tls", "ca.crt");
    let anonymous =
        sluice_operator::broker_admin::BrokerAdmin::with_tls(&https(&cluster), ca.as_bytes())
            .expect("https client");
    let refused = anonymous.plugin("stamp").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("401")),
        "{refused:?}"
    );
    let token = secret_value(&api, "demo-operator-credentials", "operator-token");
    let registered = anonymous
        .with_token(Some(token))
        .plugin("stamp")
        .await
        .expect("describe with the operator's token")
        .expect("uploaded");
    assert_eq!(
        registered.sha256,
        sluice_operator::plugin_plan::digest(&wasm)
    );
}

#[tokio::test]
async fn a_user_on_a_cluster_without_authorization_gets_credentials_and_a_condition() {
    let (broker, api, ctx) = setup().await;
    secret(&api, "bob-password", &[("password", b"bob-secret")]);
    api.create(
        &format!("{NS}/users"),
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "User",
            "metadata": { "name": "bob" },
            "spec": {
                "cluster": { "name": "demo" },
                "authentication": {
                    "type": "scram-sha-256",
                    "password": { "secretKeyRef": { "name": "bob-password", "key": "password" } },
                },
                "acls": [{ "resource": { "type": "topic", "name": "t" }, "operations": ["Read"] }],
            },
        }),
    );
    // No DescribeAcls (the brokers would answer SECURITY_DISABLED).
    reconcile_user(&api, &ctx, "bob").await;
    let mut admin = KafkaAdmin::connect(&broker.bootstrap())
        .await
        .expect("admin");
    assert_eq!(
        admin.scram_credentials("bob").await.expect("describe"),
        vec![(1, 4096)]
    );
    let status = &api.get(&format!("{NS}/users"), "bob").expect("user")["status"];
    assert_eq!(status["conditions"][0]["reason"], "AuthorizationOff");
}

/// A context whose brokers are `cluster`'s, all of them (the admin API of
/// ordinal i is broker i's).
fn cluster_context(api: &FakeApiServer, cluster: &sluice_tests::cluster::Cluster) -> Arc<Context> {
    Arc::new(Context::new(
        api.client(),
        Arc::new(Metrics::new().expect("metrics")),
        Endpoints::Fixed {
            kafka: cluster.addr(0).to_string(),
            admin: cluster.brokers.iter().map(|b| b.admin_url()).collect(),
        },
        Duration::from_secs(60),
        Some("contract-test".into()),
    ))
}

/// Reconciles until `done` holds of the stored Cluster (each reconcile
/// takes one step; the brokers finish moves in between).
async fn reconcile_until(
    api: &FakeApiServer,
    ctx: &Arc<Context>,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        reconcile_cluster(api, ctx).await;
        let stored = api.get(&format!("{NS}/clusters"), "demo").expect("cluster");
        if done(&stored) {
            return stored;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached; status {}",
            stored["status"]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sorted broker ids that hold a replica, voters, and registered brokers.
async fn membership(cluster: &sluice_tests::cluster::Cluster) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let admin = sluice_client::admin::Admin::open(
        cluster.addr(0),
        "contract-test",
        &sluice_client::Transport::Plain,
    )
    .await
    .expect("admin");
    let view = admin.cluster(None).await.expect("cluster");
    let holders: std::collections::BTreeSet<i32> = view
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .flat_map(|p| p.replicas.iter().copied())
        .collect();
    let mut voters: Vec<i32> = admin
        .quorum()
        .await
        .expect("quorum")
        .voters
        .iter()
        .map(|v| v.id)
        .collect();
    voters.sort_unstable();
    (
        holders.into_iter().collect(),
        voters,
        view.brokers.iter().map(|b| b.id).collect(),
    )
}

fn replicas_of(api: &FakeApiServer) -> i64 {
    api.get("/apis/apps/v1/namespaces/ns/statefulsets", "demo")
        .expect("sts")["spec"]["replicas"]
        .as_i64()
        .expect("replicas")
}

/// Scaling 3 → 5 → 3 against real brokers: the StatefulSet grows, the new
/// brokers join the quorum, the operator moves partitions onto them; then
/// it drains brokers 3 and 4, shrinks the StatefulSet only once they hold
/// nothing, and after their pods are gone removes them from the quorum and
/// the metadata. Kubernetes writes are the StatefulSet, status and events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_three_to_five_to_three_moves_replicas_then_brokers() {
    use k8s_openapi::api::core::v1::Pod;
    let mut cluster =
        sluice_tests::cluster::Cluster::start(3, sluice_tests::cluster::FAST_FAILOVER)
            .expect("cluster");
    sluice_tests::create_topic(
        cluster.addr(0),
        &sluice_tests::unique_name("spread"),
        6,
        &[],
    )
    .await
    .expect("topic");
    let api = FakeApiServer::start().await;
    cluster_cr(&api, 3);
    let ctx = cluster_context(&api, &cluster);
    reconcile_cluster(&api, &ctx).await;
    let hash = api
        .get("/apis/apps/v1/namespaces/ns/statefulsets", "demo")
        .expect("sts")["spec"]["template"]["metadata"]["annotations"]["sluice.dev/config-hash"]
        .as_str()
        .expect("hash")
        .to_string();
    for i in 0..3 {
        broker_pod(&api, i, &hash);
    }
    let stored = reconcile_until(&api, &ctx, "converged on 3", |c| {
        c["status"]["placedBrokers"] == 3
    })
    .await;
    assert_eq!(condition(&stored, "Ready")["status"], "True");
    api.take_requests();

    // Up: the StatefulSet first; the brokers the pods would run join.
    api.edit(&format!("{NS}/clusters"), "demo", |c| {
        c["spec"]["brokers"] = json!(5)
    });
    reconcile_cluster(&api, &ctx).await;
    assert_eq!(replicas_of(&api), 5);
    for _ in 0..2 {
        cluster.add_broker().expect("new broker");
    }
    for i in 3..5 {
        broker_pod(&api, i, &hash);
    }
    let ctx = cluster_context(&api, &cluster);
    let stored = reconcile_until(&api, &ctx, "placed on 5", |c| {
        c["status"]["placedBrokers"] == 5
    })
    .await;
    assert_eq!(condition(&stored, "Ready")["status"], "True");
    let (holders, voters, _) = membership(&cluster).await;
    assert_eq!(voters, vec![0, 1, 2, 3, 4]);
    assert!(holders.contains(&3) && holders.contains(&4), "{holders:?}");

    // Down: drained before the StatefulSet shrinks.
    api.edit(&format!("{NS}/clusters"), "demo", |c| {
        c["spec"]["brokers"] = json!(3)
    });
    reconcile_cluster(&api, &ctx).await;
    let stored = api.get(&format!("{NS}/clusters"), "demo").expect("c");
    assert_eq!(condition(&stored, "Scaling")["reason"], "DrainingBrokers");
    assert_eq!(
        replicas_of(&api),
        5,
        "not shrunk while 3 and 4 hold replicas"
    );
    reconcile_until(&api, &ctx, "first broker stopped", |_| {
        replicas_of(&api) == 4
    })
    .await;
    let (holders, voters, _) = membership(&cluster).await;
    assert!(
        !holders.contains(&3) && !holders.contains(&4),
        "{holders:?}"
    );
    assert_eq!(voters.len(), 5, "no voter removed while its pod runs");
    // Then one broker at a time: the StatefulSet controller's part (stop
    // the pods above its size) is played here, the rest is the operator's.
    let pods = Api::<Pod>::namespaced(api.admin_client(), "ns");
    let mut running: i64 = 5;
    let mut lowest_replicas = 5;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let stored = loop {
        let size = replicas_of(&api);
        lowest_replicas = lowest_replicas.min(size);
        while running > size {
            running -= 1;
            let i = running as usize;
            let (_, voters, _) = membership(&cluster).await;
            assert!(
                voters.len() as i64 <= running + 1,
                "the broker stopped before is out of the quorum: {voters:?}"
            );
            cluster.terminate(i).expect("stops");
            pods.delete(&format!("demo-{i}"), &DeleteParams::default())
                .await
                .expect("pod deleted");
        }
        reconcile_cluster(&api, &ctx).await;
        let c = api.get(&format!("{NS}/clusters"), "demo").expect("c");
        if c["status"]["placedBrokers"] == 3 && condition(&c, "Ready")["status"] == "True" {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "brokers not removed: {}",
            c["status"]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(lowest_replicas, 3);
    assert!(
        stored["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["type"] != "Scaling")),
        "{}",
        stored["status"]
    );
    let (holders, voters, registered) = membership(&cluster).await;
    assert_eq!((voters, registered), (vec![0, 1, 2], vec![0, 1, 2]));
    assert!(holders.iter().all(|b| *b < 3), "{holders:?}");
    let writes = summaries(&api.take_writes());
    assert!(
        writes.iter().all(|w| w.contains("/statefulsets/demo")
            || w.contains("/clusters/demo/status")
            || w.contains("/events")
            || w.contains("/pods/demo-")),
        "{writes:#?}"
    );
    reconcile_cluster(&api, &ctx).await;
    assert_eq!(
        summaries(&api.take_writes()),
        Vec::<String>::new(),
        "converged: zero writes"
    );
}
