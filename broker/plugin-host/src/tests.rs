//! Sandbox tests: every misbehaving fixture in `plugins/fixtures` is refused
//! at upload or fails its call with the right error kind, and a
//! well-behaved plugin keeps working in the same engine afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_plugin::{Record, wire};

use super::host::{CallError, PluginEngine, Sandbox};
use super::registry::PluginRegistry;
use super::{Bindings, FailurePolicy, Outcome, PluginHost, PluginKind};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../plugins/fixtures/", $name))
    };
}

fn engine() -> Arc<PluginEngine> {
    PluginEngine::new().expect("engine")
}

fn records(n: usize) -> Vec<Record<'static>> {
    (0..n)
        .map(|i| Record {
            timestamp: i as i64,
            key: Some(format!("k{i}").into_bytes().into()),
            value: Some(b"v"[..].into()),
            headers: vec![],
        })
        .collect()
}

fn call(wat: &str, sandbox: &Sandbox) -> Result<Vec<u8>, CallError> {
    let e = engine();
    let p = e
        .compile("t", PluginKind::Partitioner, wat.as_bytes())
        .expect("compiles");
    let input = wire::encode_batch(records(3).iter());
    p.call("t", &input[..], 4, sandbox, Arc::from(""))
        .map(|(out, _)| out)
}

#[test]
fn well_behaved_partitioner_routes_every_record() {
    let out = call(fixture!("constant.wat"), &Sandbox::default()).expect("call");
    assert_eq!(
        wire::decode_partitions(&out).expect("decode"),
        vec![1, 1, 1]
    );
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let sandbox = Sandbox {
        deadline: Duration::from_millis(50),
        ..Sandbox::default()
    };
    let started = Instant::now();
    assert_eq!(
        call(fixture!("spin.wat"), &sandbox),
        Err(CallError::Timeout(sandbox.deadline))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "interrupted promptly"
    );
}

#[test]
fn memory_bomb_hits_the_cap() {
    let sandbox = Sandbox {
        memory_bytes: 4 << 20,
        ..Sandbox::default()
    };
    assert_eq!(
        call(fixture!("membomb.wat"), &sandbox),
        Err(CallError::OutOfMemory(4 << 20))
    );
}

#[test]
fn traps_and_stack_overflows_are_contained() {
    assert!(matches!(
        call(fixture!("trap.wat"), &Sandbox::default()),
        Err(CallError::Trap(_))
    ));
    match call(fixture!("recurse.wat"), &Sandbox::default()) {
        Err(CallError::Trap(msg)) => assert!(msg.contains("stack"), "{msg}"),
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
}

#[test]
fn huge_or_misplaced_output_is_refused() {
    assert!(matches!(
        call(fixture!("huge-output.wat"), &Sandbox::default()),
        Err(CallError::OutputTooLarge(..))
    ));
    assert!(matches!(
        call(fixture!("bad-pointer.wat"), &Sandbox::default()),
        Err(CallError::BadOutput(_))
    ));
}

#[test]
fn uploads_that_break_the_abi_are_refused_with_reasons() {
    let e = engine();
    let err = |wat: &str, kind| e.compile("t", kind, wat.as_bytes()).err().expect("refused");
    assert!(
        err(fixture!("wrong-signature.wat"), PluginKind::Partitioner).contains("sluice_partition")
    );
    assert!(err(fixture!("bad-import.wat"), PluginKind::Partitioner).contains("fd_write"));
    assert!(err(fixture!("abi-v2.wat"), PluginKind::Partitioner).contains("ABI version 2"));
    assert!(err(fixture!("constant.wat"), PluginKind::Filter).contains("sluice_filter"));
    assert!(err("not wasm at all", PluginKind::Filter).contains("not a valid WebAssembly module"));
}

#[test]
fn a_failed_instance_is_replaced_and_the_engine_keeps_serving() {
    let e = engine();
    let bad = e
        .compile(
            "bad",
            PluginKind::Partitioner,
            fixture!("trap.wat").as_bytes(),
        )
        .expect("compiles");
    let good = e
        .compile(
            "good",
            PluginKind::Partitioner,
            fixture!("constant.wat").as_bytes(),
        )
        .expect("compiles");
    let input = wire::encode_batch(records(2).iter());
    for _ in 0..3 {
        assert!(
            bad.call("t", &input[..], 2, &Sandbox::default(), Arc::from(""))
                .is_err()
        );
        assert!(
            good.call("t", &input[..], 2, &Sandbox::default(), Arc::from(""))
                .is_ok()
        );
    }
}

/// The `config` import hands each call its own binding's configuration:
/// two topics bound to one plugin see different values, and a changed
/// config applies from the next call on (no re-upload, no restart).
#[test]
fn each_binding_reads_its_own_config() {
    let e = engine();
    let p = e
        .compile(
            "cfg",
            PluginKind::Partitioner,
            fixture!("config-length.wat").as_bytes(),
        )
        .expect("compiles");
    let input = wire::encode_batch(records(2).iter());
    let route = |binding: &str, config: &str| {
        let out = p
            .call(
                binding,
                &input[..],
                100,
                &Sandbox::default(),
                Arc::from(config),
            )
            .expect("call")
            .0;
        wire::decode_partitions(&out).expect("decode")
    };
    assert_eq!(route("a", ""), vec![0, 0]);
    assert_eq!(route("b", "abc"), vec![3, 3]);
    assert_eq!(route("a", "abcdef"), vec![6, 6]);
    // Longer than the guest's 16-byte buffer: the full length comes back.
    assert_eq!(route("a", &"x".repeat(40)), vec![40, 40]);
    assert_eq!(route("b", "abc"), vec![3, 3]);
}

/// A restart loads plugins from the compiled artifacts written at upload;
/// a corrupt artifact or a wasm that no longer matches its recorded digest
/// is noticed: the first is recompiled (and rewritten), the second refused.
#[test]
fn compiled_artifacts_are_reused_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = wire::encode_batch(records(2).iter());
    let works = |reg: &PluginRegistry| {
        let p = reg.get("router").expect("loaded");
        let out = p
            .call("t", &input[..], 4, &Sandbox::default(), Arc::from(""))
            .expect("call")
            .0;
        assert_eq!(wire::decode_partitions(&out).expect("decode"), vec![1, 1]);
    };
    {
        let reg = PluginRegistry::open(dir.path(), engine()).expect("open");
        reg.upload(
            "router",
            PluginKind::Partitioner,
            fixture!("constant.wat").as_bytes(),
        )
        .expect("upload");
    }
    let artifact = dir.path().join("router").join("1.cwasm");
    assert!(artifact.exists(), "upload writes the compiled artifact");
    let reg = PluginRegistry::open(dir.path(), engine()).expect("reopen");
    assert_eq!(reg.artifact_hits(), 1, "restart uses the artifact");
    works(&reg);
    drop(reg);

    let mut bytes = std::fs::read(&artifact).expect("read artifact");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, &bytes).expect("corrupt artifact");
    let reg = PluginRegistry::open(dir.path(), engine()).expect("reopen after corruption");
    assert_eq!(reg.artifact_hits(), 0, "a corrupt artifact is not loaded");
    works(&reg);
    drop(reg);
    let reg = PluginRegistry::open(dir.path(), engine()).expect("reopen after rewrite");
    assert_eq!(reg.artifact_hits(), 1, "the artifact was rewritten");
    drop(reg);

    std::fs::write(dir.path().join("router").join("1.wasm"), b"(module)").expect("swap wasm");
    let err = PluginRegistry::open(dir.path(), engine())
        .err()
        .expect("a wasm that is not the uploaded one is refused");
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn registry_versions_persist_and_hot_swap() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let reg = PluginRegistry::open(dir.path(), engine()).expect("open");
        let v1 = reg
            .upload(
                "router",
                PluginKind::Partitioner,
                fixture!("constant.wat").as_bytes(),
            )
            .expect("v1");
        let v2 = reg
            .upload(
                "router",
                PluginKind::Partitioner,
                fixture!("constant.wat").as_bytes(),
            )
            .expect("v2");
        assert_eq!((v1.version, v2.version), (1, 2));
        assert_eq!(v1.sha256, v2.sha256);
        assert!(
            reg.upload("router", PluginKind::Filter, b"x").is_err(),
            "kind cannot change"
        );
        assert!(reg.upload("Bad Name", PluginKind::Filter, b"x").is_err());
        assert!(
            reg.upload(
                "trap",
                PluginKind::Partitioner,
                fixture!("wrong-signature.wat").as_bytes()
            )
            .is_err()
        );
        assert!(
            reg.get("trap").is_none(),
            "a refused upload leaves nothing behind"
        );
    }
    let reg = PluginRegistry::open(dir.path(), engine()).expect("reopen");
    assert_eq!(reg.versions("router").expect("persisted").len(), 2);
    assert_eq!(reg.kind("router"), Some(PluginKind::Partitioner));
    reg.delete("router").expect("delete");
    assert!(reg.get("router").is_none());
}

#[test]
fn failure_policies_decide_what_happens_to_the_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = PluginRegistry::open(dir.path(), engine()).expect("open");
    reg.upload(
        "boom",
        PluginKind::Partitioner,
        fixture!("trap.wat").as_bytes(),
    )
    .expect("upload");
    let host = PluginHost::new(reg, crate::PluginMetrics::new().expect("metrics"));
    let mut b = Bindings {
        partitioner: Some("boom".into()),
        interceptors: vec![],
        filters: vec![],
        fetch_filters: vec![],
        failure: FailurePolicy::Reject,
        dead_letter_topic: None,
        sandbox: Sandbox::default(),
        plugin_configs: Default::default(),
    };
    assert!(matches!(
        host.apply(&b, "t", records(2), 3, 2),
        Outcome::Failed { .. }
    ));
    b.failure = FailurePolicy::Pass;
    match host.apply(&b, "t", records(2), 3, 2) {
        Outcome::Routed(parts) => assert_eq!(
            parts.iter().map(|(p, r)| (*p, r.len())).collect::<Vec<_>>(),
            vec![(2, 2)]
        ),
        other => panic!("expected pass-through, got {other:?}"),
    }
    b.failure = FailurePolicy::DeadLetter;
    assert!(matches!(
        host.apply(&b, "t", records(2), 3, 2),
        Outcome::DeadLetter { .. }
    ));
    b.partitioner = Some("missing".into());
    b.failure = FailurePolicy::Reject;
    assert!(matches!(
        host.apply(&b, "t", records(1), 3, 0),
        Outcome::Failed { .. }
    ));
}
