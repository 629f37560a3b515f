//! The CRDs committed under `charts/sluice/crds/` are exactly what the code
//! generates, and the example manifests are valid instances of the types.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use sluice_operator::crd::{Cluster, Plugin, Topic, crd_files};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_the_code() {
    let dir = repo().join("charts/sluice/crds");
    let files = crd_files().expect("generate");
    for (name, generated) in &files {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *generated,
            "charts/sluice/crds/{name} is out of date with operator/src/crd.rs; \
             regenerate with `cargo run -p sluice-operator -- crd --out charts/sluice/crds`"
        );
        // And it is a well-formed CustomResourceDefinition.
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&committed).expect("a CustomResourceDefinition");
        assert_eq!(crd.spec.group, "sluice.dev");
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    }
    let on_disk = std::fs::read_dir(&dir)
        .expect("crds dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .count();
    assert_eq!(
        on_disk,
        files.len(),
        "no stale CRD files in {}",
        dir.display()
    );
}

#[test]
fn examples_are_valid_resources() {
    let dir = repo().join("operator/examples");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("example");
    let c: Cluster = serde_yaml::from_str(&read("cluster.yaml")).expect("Cluster");
    assert_eq!(c.spec.brokers, 3);
    let t: Topic = serde_yaml::from_str(&read("topic.yaml")).expect("Topic");
    assert_eq!((t.spec.partitions, t.spec.replication_factor), (6, 3));
    let p: Plugin = serde_yaml::from_str(&read("plugin.yaml")).expect("Plugin");
    assert!(p.spec.source.config_map_key_ref.is_some());
    // Applying the folder gives a topic whose plugins all exist.
    let bound: Vec<&String> = t.spec.plugins.names().collect();
    assert_eq!(bound, vec![p.metadata.name.as_ref().expect("name")]);
}

#[test]
fn secure_examples_are_valid_resources() {
    let dir = repo().join("operator/examples/secure");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("example");
    let c: Cluster = serde_yaml::from_str(&read("cluster.yaml")).expect("Cluster");
    assert_eq!(c.spec.security_problem(), None);
    let tls = c.spec.tls.as_ref().expect("tls");
    // The certificate example writes the Secret the Cluster names, and
    // names the hosts the brokers and the operator connect to.
    let certs = read("certificate.yaml");
    assert!(certs.contains(&format!("secretName: {}", tls.secret_name)));
    assert!(certs.contains("\"*.secure-brokers.sluice.svc\""));
    assert!(certs.contains("secure-bootstrap.sluice.svc"));
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&read("user.yaml"))
        .map(|d| serde_yaml::Value::deserialize(d).expect("yaml"))
        .collect();
    let u: sluice_operator::crd::User = serde_yaml::from_value(docs[1].clone()).expect("User");
    assert_eq!(u.spec.cluster.name, "secure");
    let secret = &u
        .spec
        .authentication
        .as_ref()
        .expect("scram")
        .password
        .secret_key_ref;
    assert_eq!(
        docs[0]["metadata"]["name"].as_str(),
        Some(secret.name.as_str())
    );
    assert_eq!(sluice_operator::user_plan::desired_acls(&u).len(), 4);
}

/// The schema carries the validation the API server enforces: bounds and
/// the CEL immutability rules.
#[test]
fn schema_has_bounds_and_immutability_rules() {
    let files = crd_files().expect("generate");
    let topic = &files
        .iter()
        .find(|(n, _)| n == "topics.sluice.dev.yaml")
        .expect("topic")
        .1;
    for needle in [
        "rule: self == oldSelf",
        "message: cluster is immutable",
        "message: topicName is immutable",
        "rule: has(self.topicName) == has(oldSelf.topicName)",
        "minimum: 1.0",
        "- Retain",
    ] {
        assert!(topic.contains(needle), "topic CRD lacks `{needle}`");
    }
    let plugin = &files
        .iter()
        .find(|(n, _)| n == "plugins.sluice.dev.yaml")
        .expect("plugin")
        .1;
    assert!(plugin.contains("set exactly one of configMapKeyRef, secretKeyRef, inline"));
}
