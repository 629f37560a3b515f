//! End to end against a real Kubernetes cluster, only when `KUBECONFIG` is
//! set (skipped, saying so, otherwise; this machine has no cluster). It
//! installs the CRDs, runs the controllers in-process in a fresh
//! namespace, and checks what the API server itself decides: CEL
//! immutability, owned objects with owner references, finalizers, status.
//!
//! The controllers run as the chart's ServiceAccount would: its rules
//! (`charts/sluice/files/operator-rules.yaml`, in a Role in the test's
//! namespace, as the chart makes with `watchNamespaces`) bound to a
//! ServiceAccount, with a token requested for it (TokenRequest), so an
//! RBAC denial fails the test; the test itself acts as the admin user.
//!
//! Broker pods need an image the cluster can pull (`SLUICE_E2E_IMAGE`) and
//! brokers the test process can reach: set `SLUICE_E2E_KAFKA` and
//! `SLUICE_E2E_ADMIN` (e.g. port-forwards to the bootstrap Service) to also
//! wait for a ready cluster and a created topic.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice_operator::context::{Context, Endpoints};
use sluice_operator::crd::{Cluster, Topic};
use sluice_operator::metrics::Metrics;

async fn wait_for<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    support::eventually(
        what,
        Duration::from_secs(300),
        Duration::from_secs(2),
        check,
    )
    .await
}

/// A client authenticated as a ServiceAccount in `ns` that has the chart's
/// operator rules there (made with the admin `client`).
async fn chart_service_account_client(client: &kube::Client, ns: &str) -> kube::Client {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    const NAME: &str = "sluice-operator";
    let rules_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/sluice/files/operator-rules.yaml");
    let rules: Vec<PolicyRule> = serde_yaml::from_str(
        &std::fs::read_to_string(&rules_file).expect("the chart's operator rules"),
    )
    .expect("rules parse");
    let meta = || kube::api::ObjectMeta {
        name: Some(NAME.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    };
    let post = PostParams::default();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &post,
            &ServiceAccount {
                metadata: meta(),
                ..Default::default()
            },
        )
        .await
        .expect("ServiceAccount");
    Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &post,
            &Role {
                metadata: meta(),
                rules: Some(rules),
            },
        )
        .await
        .expect("Role");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(
            &post,
            &RoleBinding {
                metadata: meta(),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: NAME.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: NAME.into(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("RoleBinding");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(NAME, &post, &request)
        .await
        .expect("a token for the ServiceAccount")
        .status
        .expect("token status")
        .token;
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    kube::Client::try_from(config).expect("ServiceAccount client")
}

#[tokio::test]
async fn operator_against_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("SKIPPED: KUBECONFIG is not set; the real-cluster suite did not run");
        return;
    }
    let client = kube::Client::try_default().await.expect("kube client");
    sluice_operator::run::install_crds(&client)
        .await
        .expect("install CRDs");
    tokio::time::sleep(Duration::from_secs(3)).await; // CRDs become served

    let ns = sluice_tests::unique_name("sluice-e2e")
        .replace('_', "-")
        .to_lowercase();
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns"),
        )
        .await
        .expect("namespace");

    let endpoints = match (
        std::env::var("SLUICE_E2E_KAFKA"),
        std::env::var("SLUICE_E2E_ADMIN"),
    ) {
        (Ok(kafka), Ok(admin)) => Some(Endpoints::Fixed {
            kafka,
            admin: admin.split(',').map(String::from).collect(),
        }),
        _ => None,
    };
    let reachable = endpoints.is_some();
    let operator = chart_service_account_client(&client, &ns).await;
    let ctx = Arc::new(Context::new(
        operator,
        Arc::new(Metrics::new().expect("metrics")),
        endpoints.unwrap_or(Endpoints::ServiceDns),
        Duration::from_secs(10),
        Some("e2e".into()),
    ));
    let controllers = tokio::spawn(sluice_operator::run::controllers(ctx, Some(ns.clone())));

    let image = std::env::var("SLUICE_E2E_IMAGE").unwrap_or_else(|_| {
        concat!("ghcr.io/sluice/sluice-broker:", env!("CARGO_PKG_VERSION")).into()
    });
    let clusters = Api::<Cluster>::namespaced(client.clone(), &ns);
    let cluster: Cluster = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Cluster",
        "metadata": { "name": "demo", "namespace": ns },
        "spec": { "brokers": 3, "image": image, "storage": { "size": "1Gi" } },
    }))
    .expect("cluster");
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .expect("create Cluster");

    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    let sts = wait_for("the StatefulSet", async || {
        statefulsets.get_opt("demo").await.ok().flatten()
    })
    .await;
    assert_eq!(sts.owner_references()[0].kind, "Cluster");
    assert_eq!(sts.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns);
    wait_for("the PodDisruptionBudget", async || {
        pdbs.get_opt("demo").await.ok().flatten()
    })
    .await;

    let topics = Api::<Topic>::namespaced(client.clone(), &ns);
    let topic: Topic = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Topic",
        "metadata": { "name": "orders", "namespace": ns },
        "spec": { "cluster": { "name": "demo" }, "partitions": 3, "replicationFactor": 3 },
    }))
    .expect("topic");
    topics
        .create(&PostParams::default(), &topic)
        .await
        .expect("create Topic");
    // CEL: the cluster reference is immutable, says the API server itself.
    let refused = topics
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "cluster": { "name": "other" } } })),
        )
        .await;
    assert!(refused.is_err(), "changing spec.cluster must be refused");
    let t = wait_for("the finalizer", async || {
        topics
            .get("orders")
            .await
            .ok()
            .filter(|t| !t.finalizers().is_empty())
    })
    .await;
    assert_eq!(t.finalizers(), ["sluice.dev/topic"]);

    if reachable {
        wait_for("the cluster Ready", async || {
            let c = clusters.get("demo").await.ok()?;
            c.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
        let t = wait_for("the topic Ready", async || {
            let t = topics.get("orders").await.ok()?;
            let ready = t
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(t)
        })
        .await;
        let expected = sluice_placement::assign(&[0, 1, 2], 0, 3, 3).expect("placement");
        assert_eq!(t.status.expect("status").assignment, expected);
    } else {
        eprintln!(
            "brokers not reachable from the test (SLUICE_E2E_KAFKA unset): skipped the readiness checks"
        );
    }

    // Deleting the namespace must never be held by our finalizers.
    topics
        .delete("orders", &DeleteParams::default())
        .await
        .expect("delete Topic");
    clusters
        .delete("demo", &DeleteParams::default())
        .await
        .expect("delete Cluster");
    wait_for("the Topic to go", async || {
        topics.get_opt("orders").await.ok()?.is_none().then_some(())
    })
    .await;
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    controllers.abort();
}
