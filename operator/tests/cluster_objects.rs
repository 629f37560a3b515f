//! The objects a Cluster consists of: names, wiring between them, owner
//! references, the settings the issue asks for, and a config change
//! showing up as a pod-template change.

use sluice_operator::cluster_objects::{CONFIG_HASH_ANNOTATION, bootstrap_address, desired};
use sluice_operator::crd::{Cluster, ClusterSpec, SaslMechanism, Storage};

fn cluster(brokers: i32, monitor: bool) -> Cluster {
    let mut c = Cluster::new(
        "demo",
        ClusterSpec {
            brokers,
            rebalance_on_scale_up: true,
            image: "sluice:test".into(),
            config: [("max-request-bytes".to_string(), "1048576".to_string())].into(),
            storage: Storage {
                size: "5Gi".into(),
                storage_class_name: Some("fast".into()),
            },
            resources: None,
            service_monitor: monitor,
            listeners: Vec::new(),
            tls: None,
            sasl_mechanisms: vec![SaslMechanism::ScramSha512],
            authorization: None,
        },
    );
    c.metadata.namespace = Some("data".into());
    c.metadata.uid = Some("uid-1".into());
    c
}

/// The broker pods' spec in the StatefulSet.
fn pod_spec(
    o: sluice_operator::cluster_objects::ClusterObjects,
) -> k8s_openapi::api::core::v1::PodSpec {
    o.statefulset
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
}

#[test]
fn objects_are_wired_and_owned() {
    let o = desired(&cluster(3, false));
    let sts = o.statefulset.spec.as_ref().expect("spec");
    assert_eq!(sts.replicas, Some(3));
    assert_eq!(sts.service_name.as_deref(), Some("demo-brokers"));
    assert_eq!(
        sts.update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref()),
        Some("OnDelete"),
        "the operator rolls brokers itself, one at a time"
    );
    let headless = o.headless.spec.as_ref().expect("spec");
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    assert_eq!(o.bootstrap.metadata.name.as_deref(), Some("demo-bootstrap"));
    assert_eq!(
        bootstrap_address(&cluster(3, false)),
        "demo-bootstrap.data.svc:9092"
    );
    let pdb = o.pdb.spec.as_ref().expect("spec");
    assert_eq!(
        pdb.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert!(o.service_monitor.is_none());
    // Explicit protocols: server-side apply keys ports by them.
    for svc in [&o.headless, &o.bootstrap] {
        for p in svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("ports")
        {
            assert_eq!(p.protocol.as_deref(), Some("TCP"), "{p:?}");
        }
    }
    let pod = sts.template.spec.as_ref().expect("pod");
    for p in pod.containers[0].ports.as_ref().expect("ports") {
        assert_eq!(p.protocol.as_deref(), Some("TCP"), "{p:?}");
    }
    let selector = sts.selector.match_labels.clone().expect("selector");
    assert_eq!(headless.selector.as_ref(), Some(&selector));
    let template_labels = sts
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert!(
        selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v))
    );
    for m in [
        &o.config.metadata,
        &o.headless.metadata,
        &o.bootstrap.metadata,
        &o.statefulset.metadata,
        &o.pdb.metadata,
    ] {
        let owners = m.owner_references.as_ref().expect("owner references");
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("Cluster", "uid-1")
        );
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(m.namespace.as_deref(), Some("data"));
    }
}

#[test]
fn brokers_know_their_id_and_address() {
    let o = desired(&cluster(3, false));
    assert_eq!(claims(&o), ("5Gi".to_string(), Some("fast".to_string())));
    let pod = pod_spec(o);
    let c = &pod.containers[0];
    let env: std::collections::BTreeMap<String, (Option<String>, Option<String>)> = c
        .env
        .clone()
        .expect("env")
        .into_iter()
        .map(|e| {
            let field = e.value_from.and_then(|f| f.field_ref).map(|f| f.field_path);
            (e.name, (e.value, field))
        })
        .collect();
    assert_eq!(
        env["SLUICE_NODE_ID_FROM_HOSTNAME"].0.as_deref(),
        Some("true")
    );
    assert_eq!(
        env["SLUICE_POD_INDEX"].1.as_deref(),
        Some("metadata.labels['apps.kubernetes.io/pod-index']")
    );
    assert!(
        !env.contains_key("SLUICE_NODE_ID"),
        "no id that can be empty"
    );
    assert_eq!(
        env["SLUICE_ADVERTISED_LISTEN"].0.as_deref(),
        Some("$(POD_NAME).demo-brokers.data.svc:9092")
    );
    assert_eq!(
        sluice_operator::cluster_objects::broker_host("demo", "data", 2),
        "demo-2.demo-brokers.data.svc"
    );
    assert_eq!(
        env["SLUICE_PEERS"].0.as_deref(),
        Some(
            "0@demo-0.demo-brokers.data.svc:9092,1@demo-1.demo-brokers.data.svc:9092,2@demo-2.demo-brokers.data.svc:9092"
        ),
        "every broker knows the whole quorum"
    );
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(60),
        "long enough for the brokers' controlled shutdown"
    );
    let sc = c.security_context.as_ref().expect("security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
}

/// Size and storage class of the brokers' data volume claims.
fn claims(o: &sluice_operator::cluster_objects::ClusterObjects) -> (String, Option<String>) {
    let spec = o.statefulset.spec.as_ref().expect("spec");
    let pvc = &spec.volume_claim_templates.as_ref().expect("claims")[0];
    let s = pvc.spec.as_ref().expect("pvc spec");
    let size = s
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    (size, s.storage_class_name.clone())
}

#[test]
fn a_config_change_is_a_template_change_and_nothing_else_is() {
    let hash = |c: &Cluster| {
        desired(c)
            .statefulset
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
            .expect("hash")
    };
    let a = cluster(3, false);
    assert_eq!(desired(&a), desired(&a), "deterministic");
    let mut b = a.clone();
    b.spec
        .config
        .insert("default-partitions".into(), "3".into());
    assert_ne!(hash(&a), hash(&b));
    let config = desired(&b).config.data.expect("data");
    assert!(config["sluice.yaml"].contains("default-partitions: \"3\""));
    let mut scaled = a.clone();
    scaled.spec.brokers = 5;
    assert_eq!(
        hash(&a),
        hash(&scaled),
        "scaling does not roll existing brokers"
    );
}

#[test]
fn a_service_monitor_only_when_asked() {
    let o = desired(&cluster(1, true));
    let sm = o.service_monitor.expect("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["metadata"]["ownerReferences"][0]["uid"], "uid-1");
}

/// The ConfigMap's file is one a real broker accepts (`--config`).
#[test]
fn the_generated_config_file_starts_a_broker() {
    let mut c = cluster(1, false);
    c.spec
        .config
        .insert("default-partitions".into(), "3".into());
    c.spec
        .config
        .insert("auto-create-topics".into(), "false".into());
    let data = desired(&c).config.data.expect("data");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.yaml");
    std::fs::write(&path, &data["sluice.yaml"]).expect("write");
    let path = path.to_string_lossy().to_string();
    let broker = sluice_tests::Broker::start_with_args(&["--config", &path])
        .expect("a broker starts from the generated config");
    drop(broker);
}

/// A broker started with the environment the generated StatefulSet gives
/// pod `demo-2` on a Kubernetes older than 1.28 (the pod-index label, and
/// so `SLUICE_POD_INDEX`, empty; the runtime's `HOSTNAME` the pod's name)
/// runs as broker 2. The addresses, data dir and peers are the test's own
/// (the pod's DNS names do not resolve here); every other variable is the
/// generated one, resolved as the kubelet would.
#[test]
fn a_broker_from_the_generated_pod_env_without_the_label_gets_its_ordinal() {
    let o = desired(&cluster(3, false));
    let pod = pod_spec(o);
    let harness_owned = [
        "SLUICE_LISTEN",
        "SLUICE_ADMIN_LISTEN",
        "SLUICE_ADVERTISED_LISTEN",
        "SLUICE_DATA_DIR",
        "SLUICE_PEERS",
    ];
    let mut env: Vec<(String, String)> = Vec::new();
    for e in pod.containers[0].env.clone().expect("env") {
        if harness_owned.contains(&e.name.as_str()) {
            continue;
        }
        let field = e.value_from.and_then(|f| f.field_ref).map(|f| f.field_path);
        let value = match (e.value, field.as_deref()) {
            (Some(v), _) => v.replace("$(POD_NAME)", "demo-2"),
            (None, Some("metadata.name")) => "demo-2".to_string(),
            // A label the API server does not set before 1.28.
            (None, Some(f)) if f.starts_with("metadata.labels") => String::new(),
            (None, other) => panic!("{}: unexpected source {other:?}", e.name),
        };
        env.push((e.name, value));
    }
    assert!(
        env.iter()
            .any(|(k, v)| k == "SLUICE_POD_INDEX" && v.is_empty()),
        "{env:?}"
    );
    env.push(("HOSTNAME".into(), "demo-2".into()));
    let broker = sluice_tests::Broker::start_with_env(&[], &env).expect("broker starts");
    assert_eq!(
        broker
            .metric("sluice_cluster{value=\"controller_id\"}")
            .expect("metric"),
        2.0,
        "a lone broker is its own controller: broker 2"
    );
}
