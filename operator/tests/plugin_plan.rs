//! The Plugin planner's table: first upload, converged, changed module,
//! changed kind, unreadable source, cluster gone, delete (unbound, bound,
//! cluster gone).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_operator::crd::{ClusterRef, Plugin, PluginKind, PluginSource, PluginSpec};
use sluice_operator::plugin_plan::{Action, FINALIZER, Observed, RegisteredPlugin, digest, plan};

const NOW: &str = "2026-11-21T20:00:00Z";

fn plugin(finalized: bool) -> Plugin {
    let mut p = Plugin::new(
        "stamp",
        PluginSpec {
            cluster: ClusterRef {
                name: "demo".into(),
            },
            kind: PluginKind::Interceptor,
            source: PluginSource {
                inline: Some("AGFzbQ==".into()),
                ..Default::default()
            },
            limits: Default::default(),
        },
    );
    p.metadata.generation = Some(1);
    if finalized {
        p.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    }
    p
}

fn registered(wasm: &[u8], version: i64, bound: &[&str]) -> RegisteredPlugin {
    RegisteredPlugin {
        kind: Some(PluginKind::Interceptor),
        version,
        sha256: digest(wasm),
        bound_topics: bound.iter().map(|s| s.to_string()).collect(),
    }
}

fn observe<'a>(p: &'a Plugin, wasm: &[u8], reg: Option<RegisteredPlugin>) -> Observed<'a> {
    Observed {
        plugin: p,
        cluster_exists: true,
        wasm: Ok(wasm.to_vec()),
        registered: reg,
        now: NOW,
    }
}

fn uploads(a: &[Action]) -> usize {
    a.iter()
        .filter(|x| matches!(x, Action::Upload { .. }))
        .count()
}

fn status(a: &[Action]) -> Option<&sluice_operator::crd::PluginStatus> {
    a.iter().find_map(|x| match x {
        Action::UpdateStatus(s) => Some(s),
        _ => None,
    })
}

/// Carries the planned status into the resource, as the status write does.
fn written(mut p: Plugin, a: &[Action]) -> Plugin {
    if let Some(s) = status(a) {
        p.status = Some(s.clone());
    }
    p
}

#[test]
fn first_upload_then_converged() {
    let wasm = b"\0asm module one".to_vec();
    let p = plugin(false);
    let a = plan(&observe(&p, &wasm, None));
    assert_eq!(a[0], Action::AddFinalizer);
    assert_eq!(uploads(&a), 1);
    let s = status(&a).expect("status");
    assert_eq!((s.digest.as_str(), s.version), (digest(&wasm).as_str(), 1));

    let p = written(plugin(true), &a);
    let again = plan(&observe(&p, &wasm, Some(registered(&wasm, 1, &[]))));
    assert_eq!(again, vec![], "converged: nothing to do");
}

#[test]
fn a_changed_module_or_kind_is_uploaded_as_the_next_version() {
    let (old, new) = (b"\0asm one".to_vec(), b"\0asm two".to_vec());
    let p = plugin(true);
    let a = plan(&observe(&p, &new, Some(registered(&old, 3, &[]))));
    assert_eq!(uploads(&a), 1);
    assert_eq!(status(&a).expect("status").version, 4);

    let mut other_kind = registered(&new, 4, &[]);
    other_kind.kind = Some(PluginKind::Filter);
    assert_eq!(uploads(&plan(&observe(&p, &new, Some(other_kind)))), 1);
}

#[test]
fn an_unreadable_source_or_missing_cluster_is_a_condition_not_an_upload() {
    let p = plugin(true);
    let mut o = observe(&p, b"", None);
    o.wasm = Err("ConfigMap modules does not exist".into());
    let a = plan(&o);
    assert_eq!(uploads(&a), 0);
    let c = &status(&a).expect("status").conditions[0];
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "InvalidSource")
    );

    let mut o = observe(&p, b"\0asm", None);
    o.cluster_exists = false;
    let a = plan(&o);
    assert_eq!(uploads(&a), 0);
    assert_eq!(
        status(&a).expect("status").conditions[0].reason,
        "ClusterNotFound"
    );
}

fn deleting(mut p: Plugin) -> Plugin {
    p.metadata.deletion_timestamp = Some(Time("2026-11-21T21:00:00Z".parse().expect("time")));
    p
}

#[test]
fn deletion_removes_an_unbound_plugin_and_never_holds_the_resource() {
    let wasm = b"\0asm".to_vec();
    let p = deleting(plugin(true));
    let a = plan(&observe(&p, &wasm, Some(registered(&wasm, 1, &[]))));
    assert_eq!(
        a[0],
        Action::Delete {
            name: "stamp".into()
        }
    );
    assert_eq!(a.last(), Some(&Action::RemoveFinalizer));

    // Bound by a topic: left in the registry with a warning, not stuck.
    let a = plan(&observe(&p, &wasm, Some(registered(&wasm, 1, &["orders"]))));
    assert!(!a.iter().any(|x| matches!(x, Action::Delete { .. })));
    assert!(a.iter().any(
        |x| matches!(x, Action::Event { warning: true, reason, .. } if reason == "LeftInRegistry")
    ));
    assert_eq!(a.last(), Some(&Action::RemoveFinalizer));

    // Cluster gone: only the finalizer.
    let mut o = observe(&p, &wasm, None);
    o.cluster_exists = false;
    assert_eq!(plan(&o), vec![Action::RemoveFinalizer]);

    // Not ours (no finalizer): nothing.
    assert_eq!(
        plan(&observe(&deleting(plugin(false)), &wasm, None)),
        vec![]
    );
}
