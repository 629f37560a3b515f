//! The User planner's table: first reconcile, converged, new password,
//! mechanism change, authentication removed, unreadable password, stray
//! ACLs, cluster gone, delete (cluster there or gone).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_operator::crd::{
    AclOperation, AclPatternType, AclPermission, AclResource, AclResourceType, AclRule, ClusterRef,
    KeyRef, PasswordSource, ScramType, User, UserAuthentication, UserSpec,
};
use sluice_operator::user_plan::{Acl, Action, FINALIZER, Observed, Password, desired_acls, plan};

const NOW: &str = "2026-11-30T21:00:00Z";

fn user(finalized: bool) -> User {
    let mut u = User::new(
        "alice",
        UserSpec {
            cluster: ClusterRef {
                name: "demo".into(),
            },
            user_name: None,
            authentication: Some(UserAuthentication {
                type_: ScramType::ScramSha512,
                password: PasswordSource {
                    secret_key_ref: KeyRef {
                        name: "alice".into(),
                        key: "password".into(),
                    },
                },
                iterations: 4096,
            }),
            acls: vec![AclRule {
                resource: AclResource {
                    type_: AclResourceType::Topic,
                    name: "orders".into(),
                    pattern_type: AclPatternType::Prefixed,
                },
                operations: vec![AclOperation::Write, AclOperation::Describe],
                host: "*".into(),
                type_: AclPermission::Allow,
            }],
        },
    );
    u.metadata.generation = Some(1);
    if finalized {
        u.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    }
    u
}

fn observed<'a>(u: &'a User, credentials: Vec<(i8, i32)>, acls: Vec<Acl>) -> Observed<'a> {
    Observed {
        user: u,
        cluster_exists: true,
        authorization: true,
        older_claimant: None,
        password: Some(Ok((Password(b"pw".to_vec()), "uid/1".into()))),
        credentials,
        acls,
        now: NOW,
    }
}

fn writes(actions: &[Action]) -> Vec<&Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::UpdateStatus(_) | Action::Event { .. }))
        .collect()
}

/// The status the first reconcile writes, put on the resource.
fn converged(mut u: User) -> User {
    let o = observed(&u, vec![], vec![]);
    let status = plan(&o).into_iter().find_map(|a| match a {
        Action::UpdateStatus(s) => Some(s),
        _ => None,
    });
    u.status = status;
    u
}

#[test]
fn first_reconcile_adds_the_finalizer_credentials_and_acls() {
    let u = user(false);
    let a = plan(&observed(&u, vec![], vec![]));
    assert_eq!(a[0], Action::AddFinalizer);
    assert!(matches!(&a[1], Action::CreateAcls { principal, acls }
        if principal == "User:alice" && acls.len() == 2 && acls.iter().all(|x| x.pattern_type == 4)));
    assert!(
        matches!(&a[2], Action::UpsertCredential { user, mechanism: 2, iterations: 4096, .. }
        if user == "alice")
    );
    let Some(Action::UpdateStatus(s)) = a.last() else {
        panic!("status last: {a:?}");
    };
    assert_eq!(s.principal, "User:alice");
    assert_eq!(s.credential_source, "uid/1/2/4096");
    assert_eq!(s.conditions[0].status, "True");
}

#[test]
fn converged_user_gets_no_actions() {
    let u = converged(user(true));
    let acls = desired_acls(&u);
    assert_eq!(plan(&observed(&u, vec![(2, 4096)], acls)), vec![]);
}

#[test]
fn a_new_password_secret_version_or_a_lost_credential_is_sent_again() {
    let u = converged(user(true));
    let acls = desired_acls(&u);
    let mut o = observed(&u, vec![(2, 4096)], acls.clone());
    o.password = Some(Ok((Password(b"new".to_vec()), "uid/2".into())));
    assert!(matches!(
        writes(&plan(&o))[..],
        [Action::UpsertCredential { .. }]
    ));
    let lost = observed(&u, vec![], acls);
    assert!(matches!(
        writes(&plan(&lost))[..],
        [Action::UpsertCredential { .. }]
    ));
}

#[test]
fn a_mechanism_change_sets_the_new_one_and_deletes_the_old() {
    let mut u = converged(user(true));
    if let Some(a) = u.spec.authentication.as_mut() {
        a.type_ = ScramType::ScramSha256;
    }
    let acls = desired_acls(&u);
    let a = plan(&observed(&u, vec![(2, 4096)], acls));
    assert!(matches!(
        writes(&a)[..],
        [
            Action::UpsertCredential { mechanism: 1, .. },
            Action::DeleteCredential { mechanism: 2, .. }
        ]
    ));
}

#[test]
fn without_authentication_every_credential_goes() {
    let mut u = converged(user(true));
    u.spec.authentication = None;
    let acls = desired_acls(&u);
    let a = plan(&observed(&u, vec![(1, 4096), (2, 8192)], acls));
    assert_eq!(writes(&a).len(), 2);
    assert!(
        writes(&a)
            .iter()
            .all(|x| matches!(x, Action::DeleteCredential { .. }))
    );
}

#[test]
fn an_unreadable_password_keeps_what_the_brokers_hold_and_says_why() {
    let u = converged(user(true));
    let acls = desired_acls(&u);
    let mut o = observed(&u, vec![(2, 4096)], acls);
    o.password = Some(Err("Secret alice does not exist".into()));
    let a = plan(&o);
    assert!(writes(&a).is_empty(), "{a:?}");
    let Some(Action::UpdateStatus(s)) = a.last() else {
        panic!("status: {a:?}");
    };
    assert_eq!(s.conditions[0].reason, "PasswordUnavailable");
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Event { warning: true, .. }))
    );
}

#[test]
fn acls_of_the_principal_not_in_the_spec_are_deleted() {
    let u = converged(user(true));
    let mut acls = desired_acls(&u);
    let stray = Acl {
        resource_type: 2,
        name: "payroll".into(),
        pattern_type: 3,
        host: "*".into(),
        operation: 3,
        permission: 3,
    };
    acls.push(stray.clone());
    let a = plan(&observed(&u, vec![(2, 4096)], acls));
    assert_eq!(
        writes(&a),
        vec![&Action::DeleteAcls {
            principal: "User:alice".into(),
            acls: vec![stray]
        }]
    );
}

#[test]
fn a_missing_cluster_is_a_condition_and_nothing_else() {
    let u = user(false);
    let mut o = observed(&u, vec![], vec![]);
    o.cluster_exists = false;
    let a = plan(&o);
    assert!(writes(&a).is_empty(), "{a:?}");
    let Some(Action::UpdateStatus(s)) = a.last() else {
        panic!("status: {a:?}");
    };
    assert_eq!(s.conditions[0].reason, "ClusterNotFound");
}

#[test]
fn delete_removes_credentials_and_acls_then_the_finalizer() {
    let mut u = user(true);
    u.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let acls = desired_acls(&u);
    let a = plan(&observed(&u, vec![(2, 4096)], acls.clone()));
    assert_eq!(
        a,
        vec![
            Action::DeleteCredential {
                user: "alice".into(),
                mechanism: 2
            },
            Action::DeleteAcls {
                principal: "User:alice".into(),
                acls
            },
            Action::RemoveFinalizer,
        ]
    );
    let mut gone = observed(&u, vec![], vec![]);
    gone.cluster_exists = false;
    assert_eq!(plan(&gone), vec![Action::RemoveFinalizer]);
}

#[test]
fn without_authorization_acls_wait_and_credentials_still_apply() {
    let u = user(true);
    let mut o = observed(&u, vec![], vec![]);
    o.authorization = false;
    let a = plan(&o);
    assert!(
        matches!(writes(&a)[..], [Action::UpsertCredential { .. }]),
        "{a:?}"
    );
    let Some(Action::UpdateStatus(s)) = a.last() else {
        panic!("status: {a:?}");
    };
    assert_eq!(s.conditions[0].reason, "AuthorizationOff");
}

#[test]
fn a_younger_user_naming_the_same_principal_changes_nothing_even_when_deleted() {
    let u = user(true);
    let mut o = observed(&u, vec![(2, 4096)], vec![]);
    o.older_claimant = Some("alice-original".into());
    let a = plan(&o);
    assert!(writes(&a).is_empty(), "{a:?}");
    let Some(Action::UpdateStatus(s)) = a.last() else {
        panic!("status: {a:?}");
    };
    assert_eq!(s.conditions[0].reason, "ResourceConflict");
    let mut deleted = user(true);
    deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let mut o = observed(&deleted, vec![(2, 4096)], desired_acls(&deleted));
    o.older_claimant = Some("alice-original".into());
    assert_eq!(plan(&o), vec![Action::RemoveFinalizer]);
}
