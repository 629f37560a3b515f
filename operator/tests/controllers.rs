//! The controllers as `sluice-operator run` wires them (watches, predicate
//! filters, requeues), against the watching fake API server and a real
//! broker: a Topic created through the API becomes a Kafka topic, a spec
//! change grows it, a converged cluster goes quiet (its own status writes
//! do not retrigger reconciles), and a delete removes it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice_operator::context::{Context, Endpoints};
use sluice_operator::crd::{Cluster, Topic};
use sluice_operator::kafka_admin::KafkaAdmin;
use sluice_operator::metrics::Metrics;
use sluice_tests::Broker;
use support::FakeApiServer;

async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    support::eventually(
        what,
        Duration::from_secs(30),
        Duration::from_millis(100),
        check,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_resources_are_reconciled_and_then_left_alone() {
    let broker = Broker::start().expect("broker");
    let api = FakeApiServer::start().await;
    let client = api.client();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(Metrics::new().expect("metrics")),
        Endpoints::Fixed {
            kafka: broker.bootstrap(),
            admin: vec![broker.admin_url()],
        },
        Duration::from_secs(300),
        Some("wiring-test".into()),
    ));
    let running = tokio::spawn(sluice_operator::run::controllers(
        ctx.clone(),
        Some("ns".into()),
    ));

    let user = api.admin_client();
    let clusters = Api::<Cluster>::namespaced(user.clone(), "ns");
    let cluster = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Cluster",
        "metadata": { "name": "demo", "namespace": "ns" },
        "spec": { "brokers": 1, "image": "sluice:test" },
    }))
    .expect("cluster");
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .expect("create cluster");
    let kafka = sluice_tests::unique_name("wired");
    let topics = Api::<Topic>::namespaced(user.clone(), "ns");
    let topic = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Topic",
        "metadata": { "name": "orders", "namespace": "ns" },
        "spec": { "cluster": { "name": "demo" }, "topicName": kafka, "partitions": 2, "replicationFactor": 1 },
    }))
    .expect("topic");
    topics
        .create(&PostParams::default(), &topic)
        .await
        .expect("create topic");

    let mut admin = KafkaAdmin::connect(&broker.bootstrap())
        .await
        .expect("admin");
    eventually("the Kafka topic", async || {
        admin
            .describe_topic(&kafka)
            .await
            .ok()
            .flatten()
            .filter(|t| t.partitions() == 2)
    })
    .await;
    eventually("Ready", async || {
        let t = topics.get("orders").await.ok()?;
        t.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    eventually("the StatefulSet", async || {
        api.get("/apis/apps/v1/namespaces/ns/statefulsets", "demo")
    })
    .await;

    // Converged: the status writes above must not have started a loop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.take_requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<String> = api.take_writes().iter().map(|r| r.summary()).collect();
    assert_eq!(
        writes,
        Vec::<String>::new(),
        "a converged namespace stays quiet"
    );

    topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "partitions": 3 } })),
        )
        .await
        .expect("grow");
    eventually("growth", async || {
        admin
            .describe_topic(&kafka)
            .await
            .ok()
            .flatten()
            .filter(|t| t.partitions() == 3)
    })
    .await;

    topics
        .delete("orders", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the resource to go", async || {
        topics.get_opt("orders").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        admin
            .describe_topic(&kafka)
            .await
            .expect("describe")
            .is_none(),
        "Kafka topic deleted"
    );
    running.abort();
}
