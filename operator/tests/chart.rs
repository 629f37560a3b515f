//! The Helm chart: `helm lint` and `helm template` with the defaults and
//! with every optional feature on; every rendered manifest decodes into its
//! Kubernetes type without losing a field (so no unknown or misplaced
//! field slips through); the ClusterRole is exactly the rules the contract
//! tests authorize the operator's requests with. (`tests/crds.rs` checks
//! the chart's CRDs against the code.)

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_operator::crd::Cluster;
use sluice_operator::kube_writes::contains;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `helm` from `SLUICE_HELM`, the tools cache `scripts/install-helm.sh`
/// fills, or `PATH`.
fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_HELM") {
        return p.into();
    }
    let tools = std::env::var_os("SLUICE_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice/bin")));
    match tools.map(|t| t.join("helm")).filter(|p| p.exists()) {
        Some(p) => p,
        None => "helm".into(),
    }
}

fn run_helm(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run helm ({e}); install it with scripts/install-helm.sh")
        });
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every optional feature on.
const ALL_ON: &[&str] = &[
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.dashboard.enabled=true",
    "--set",
    "cluster.enabled=true",
    "--set",
    "cluster.serviceMonitor=true",
    "--set",
    "cluster.config.default-partitions=3",
    "--set",
    "cluster.storage.storageClassName=fast",
    "--set",
    "cluster.resources.requests.cpu=500m",
    "--set",
    "cluster.listeners[0].name=CLIENTS",
    "--set",
    "cluster.listeners[0].port=9093",
    "--set",
    "cluster.listeners[0].tls=true",
    "--set",
    "cluster.listeners[0].authentication=sasl",
    "--set",
    "cluster.tls.secretName=sluice-tls",
    "--set",
    "cluster.saslMechanisms={SCRAM-SHA-512,SCRAM-SHA-256}",
    "--set",
    "cluster.authorization.enabled=true",
    "--set",
    "cluster.authorization.superUsers={User:admin}",
    "--set",
    "watchNamespaces={data,logs}",
    "--set",
    "leaderElection.enabled=false",
    "--set",
    "installCRDs=false",
    "--set",
    "image.tag=test",
];

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "sluice", "charts/sluice", "-n", "sluice"];
    args.extend_from_slice(extra);
    let text = run_helm(&args);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("yaml")).expect("json")
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Decodes `doc` as `T` and encodes it back: a field the type does not
/// know (a typo, a wrong indentation level) is dropped on the way, which
/// the comparison catches.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) {
    let t: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(t).expect("encode");
    assert!(
        contains(&back, doc),
        "{} {} has fields its type does not know:\n{doc:#}\nvs\n{back:#}",
        doc["kind"],
        doc["metadata"]["name"]
    );
}

fn check_manifests(docs: &[Value]) -> Vec<String> {
    let mut kinds = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "Deployment" => typed::<Deployment>(doc),
            "Job" => typed::<Job>(doc),
            "ServiceAccount" => typed::<ServiceAccount>(doc),
            "ClusterRole" => typed::<ClusterRole>(doc),
            "ClusterRoleBinding" => typed::<ClusterRoleBinding>(doc),
            "Role" => typed::<Role>(doc),
            "RoleBinding" => typed::<RoleBinding>(doc),
            "Service" => typed::<Service>(doc),
            "ConfigMap" => typed::<ConfigMap>(doc),
            "Cluster" => typed::<Cluster>(doc),
            "ServiceMonitor" => {
                // No Rust type: check the fields Prometheus needs.
                assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                assert!(
                    doc["spec"]["selector"]["matchLabels"].is_object(),
                    "{doc:#}"
                );
                assert_eq!(doc["spec"]["endpoints"][0]["path"], "/metrics");
            }
            other => panic!("the chart renders a {other} this test does not check"),
        }
        kinds.push(kind);
    }
    kinds.sort();
    kinds
}

#[test]
fn lint_passes_with_defaults_and_with_everything_on() {
    run_helm(&["lint", "--strict", "charts/sluice"]);
    let mut args = vec!["lint", "--strict", "charts/sluice"];
    args.extend_from_slice(ALL_ON);
    run_helm(&args);
}

#[test]
fn default_manifests_are_valid_and_minimal() {
    let kinds = check_manifests(&render(&[]));
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Job",
            "Service",
            "ServiceAccount"
        ]
    );
}

/// `helm uninstall` cannot hang on its pre-delete Job: the Job has a
/// deadline, and every Service and container port names its protocol.
#[test]
fn the_uninstall_hook_has_a_deadline_and_ports_name_their_protocol() {
    let docs = render(&[]);
    let job = docs.iter().find(|d| d["kind"] == "Job").expect("hook job");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    assert_eq!(job["spec"]["activeDeadlineSeconds"], 120);
    for doc in &docs {
        let ports = match doc["kind"].as_str() {
            Some("Service") => doc["spec"]["ports"].clone(),
            Some("Deployment") => doc["spec"]["template"]["spec"]["containers"][0]["ports"].clone(),
            _ => continue,
        };
        for port in ports.as_array().expect("ports") {
            assert_eq!(port["protocol"], "TCP", "{port}");
        }
    }
}

#[test]
fn every_optional_feature_renders_valid_manifests() {
    let docs = render(ALL_ON);
    let kinds = check_manifests(&docs);
    for k in ["Cluster", "ConfigMap", "ServiceMonitor"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let cluster: sluice_operator::crd::Cluster = serde_json::from_value(
        docs.iter()
            .find(|d| d["kind"] == "Cluster")
            .expect("cluster")
            .clone(),
    )
    .expect("a Cluster");
    assert_eq!(cluster.spec.security_problem(), None);
    assert_eq!(cluster.spec.listeners[0].port, 9093);
    assert_eq!(
        cluster.spec.authorization.map(|a| a.super_users),
        Some(vec!["User:admin".to_string()])
    );
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--watch-namespaces=data,logs")
    );
    assert!(
        args.as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--no-leader-election")
    );
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("dashboard");
    let json = dashboard["data"]["sluice-brokers.json"]
        .as_str()
        .expect("dashboard json");
    let parsed: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
}

fn rules_file(name: &str) -> Vec<PolicyRule> {
    let text =
        std::fs::read_to_string(repo().join("charts/sluice/files").join(name)).expect("rules");
    serde_yaml::from_str(&text).expect("rules")
}

/// Rules of the rendered `kind` objects, by namespace ("" for a ClusterRole).
fn roles(extra: &[&str], kind: &str) -> Vec<(String, Vec<PolicyRule>)> {
    render(extra)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| {
            let ns = d["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let rules = serde_json::from_value(d["rules"].clone()).expect("rules");
            (ns, rules)
        })
        .collect()
}

#[test]
fn the_rbac_is_exactly_the_rules_the_contract_tests_authorize_with() {
    let operator = rules_file("operator-rules.yaml");
    let crds = rules_file("crd-rules.yaml");
    let mut with_crds = operator.clone();
    with_crds.extend(crds.clone());
    assert_eq!(
        roles(&[], "ClusterRole"),
        vec![(String::new(), with_crds)],
        "defaults: installCRDs on"
    );
    assert_eq!(
        roles(&["--set", "installCRDs=false"], "ClusterRole"),
        vec![(String::new(), operator.clone())]
    );

    // Namespaced: Roles where the operator works (and its Lease lives),
    // a ClusterRole only for the CRDs.
    let scoped = ["--set", "watchNamespaces={data,logs}"];
    let mut namespaced = roles(&scoped, "Role");
    namespaced.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, Vec<PolicyRule>)> = ["data", "logs", "sluice"]
        .iter()
        .map(|ns| (ns.to_string(), operator.clone()))
        .collect();
    assert_eq!(namespaced, expected);
    assert_eq!(roles(&scoped, "ClusterRole"), vec![(String::new(), crds)]);
    let mut no_crds = scoped.to_vec();
    no_crds.extend(["--set", "installCRDs=false"]);
    assert_eq!(roles(&no_crds, "ClusterRole"), vec![]);
}

/// Images are tagged with the release, never `:latest`: the chart's
/// appVersion (the operator image's default tag) is the crates' version,
/// which the Cluster's default broker image carries too.
#[test]
fn images_default_to_the_release_tag() {
    let chart =
        std::fs::read_to_string(repo().join("charts/sluice/Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_yaml::from_str(&chart).expect("yaml");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    let c: Cluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "demo"},
        "spec": {"brokers": 3}
    }))
    .expect("a Cluster with defaults");
    assert_eq!(
        c.spec.image,
        format!("ghcr.io/sluice/sluice-broker:{}", env!("CARGO_PKG_VERSION"))
    );
}
