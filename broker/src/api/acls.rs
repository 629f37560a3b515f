//! CreateAcls, DescribeAcls, DeleteAcls: ACLs in the replicated metadata,
//! with Kafka's checks (ALTER on the cluster to change them, DESCRIBE to
//! list them; SECURITY_DISABLED without an authorizer; malformed bindings
//! refused one by one with INVALID_REQUEST).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_response::{AclCreationResult, CreateAclsResponse};
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl, DeleteAclsResponse,
};
use kafka_protocol::messages::describe_acls_response::{
    AclDescription, DescribeAclsResource, DescribeAclsResponse,
};
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use super::authorize::Authz;
use super::services::Admin;
use super::{error_code, str_bytes};
use sluice_metadata::acl::{
    AclBinding, AclFilter, CLUSTER_NAME, Operation, PatternFilter, PatternType, Permission,
    ResourceType,
};
use sluice_metadata::image::{Applied, Command};

/// Kafka's wire code for "any" in filters.
const ANY: i8 = 1;
const MATCH: i8 = 2;

fn binding(
    c: &kafka_protocol::messages::create_acls_request::AclCreation,
) -> Result<AclBinding, String> {
    let resource_type = ResourceType::from_code(c.resource_type).ok_or_else(|| {
        format!(
            "resource type {} is not one of topic, group, cluster, transactional id",
            c.resource_type
        )
    })?;
    let pattern_type = PatternType::from_code(c.resource_pattern_type).ok_or_else(|| {
        format!(
            "pattern type {} is not LITERAL or PREFIXED",
            c.resource_pattern_type
        )
    })?;
    let operation = Operation::from_code(c.operation)
        .ok_or_else(|| format!("operation {} is not one an ACL can name", c.operation))?;
    let permission = Permission::from_code(c.permission_type)
        .ok_or_else(|| format!("permission {} is not ALLOW or DENY", c.permission_type))?;
    let name = c.resource_name.to_string();
    if name.is_empty() {
        return Err("resource name must not be empty".into());
    }
    if resource_type == ResourceType::Cluster && name != CLUSTER_NAME {
        return Err(format!("the cluster resource is named '{CLUSTER_NAME}'"));
    }
    let principal = c.principal.to_string();
    if !principal
        .split_once(':')
        .is_some_and(|(kind, who)| !kind.is_empty() && !who.is_empty())
    {
        return Err(format!("principal '{principal}' is not like User:alice"));
    }
    if c.host.is_empty() {
        return Err("host must not be empty ('*' for any)".into());
    }
    Ok(AclBinding {
        resource_type,
        resource_name: name,
        pattern_type,
        principal,
        host: c.host.to_string(),
        operation,
        permission,
    })
}

/// A filter field: None for ANY, else the parsed code.
fn any_or<T>(code: i8, parse: fn(i8) -> Option<T>, what: &str) -> Result<Option<T>, String> {
    if code == ANY {
        Ok(None)
    } else {
        parse(code)
            .map(Some)
            .ok_or_else(|| format!("{what} {code} in a filter"))
    }
}

/// A DescribeAcls/DeleteAcls filter from its wire fields.
#[allow(clippy::too_many_arguments)]
fn filter(
    resource_type: i8,
    name: &Option<StrBytes>,
    pattern: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    Ok(AclFilter {
        resource_type: any_or(resource_type, ResourceType::from_code, "resource type")?,
        resource_name: name.as_ref().map(|n| n.to_string()),
        pattern: match pattern {
            ANY => PatternFilter::Any,
            MATCH => PatternFilter::Match,
            p => PatternFilter::Exactly(
                PatternType::from_code(p).ok_or_else(|| format!("pattern type {p} in a filter"))?,
            ),
        },
        principal: principal.as_ref().map(|p| p.to_string()),
        host: host.as_ref().map(|h| h.to_string()),
        operation: any_or(operation, Operation::from_code, "operation")?,
        permission: any_or(permission, Permission::from_code, "permission")?,
    })
}

/// None when the request may proceed; else the error for every part.
fn refusal(b: &Admin, authz: Option<&Authz>, op: Operation) -> Option<(ResponseError, String)> {
    if !b.authorizer_enabled {
        return Some((
            ResponseError::SecurityDisabled,
            "No authorizer is configured (authorizer-class-name)".into(),
        ));
    }
    // No `Authz`: the trusted inter-broker listener.
    if authz.is_some_and(|a| {
        !a.authorizer
            .allows(&a.image, &a.caller, op, ResourceType::Cluster, CLUSTER_NAME)
    }) {
        return Some((
            ResponseError::ClusterAuthorizationFailed,
            format!("{op:?} on the cluster is needed"),
        ));
    }
    None
}

pub async fn create_acls(
    b: &Admin<'_>,
    authz: Option<&Authz<'_>>,
    req: CreateAclsRequest,
) -> CreateAclsResponse {
    let mut resp = CreateAclsResponse::default();
    if let Some((e, message)) = refusal(b, authz, Operation::Alter) {
        let code = error_code(b.metrics, e);
        resp.results = req
            .creations
            .iter()
            .map(|_| {
                let mut r = AclCreationResult::default();
                r.error_code = code;
                r.error_message = Some(str_bytes(message.clone()));
                r
            })
            .collect();
        return resp;
    }
    let parsed: Vec<Result<AclBinding, String>> = req.creations.iter().map(binding).collect();
    let valid: Vec<AclBinding> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let committed = if valid.is_empty() {
        Ok(())
    } else {
        super::change_metadata(b, Command::CreateAcls { acls: valid })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for p in parsed {
        let mut r = AclCreationResult::default();
        match (&p, &committed) {
            (Err(message), _) => {
                r.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
                r.error_message = Some(str_bytes(message.clone()));
            }
            (Ok(_), Err(message)) => {
                r.error_code = error_code(b.metrics, ResponseError::UnknownServerError);
                r.error_message = Some(str_bytes(message.clone()));
            }
            (Ok(_), Ok(())) => {}
        }
        resp.results.push(r);
    }
    resp
}

pub fn describe_acls(
    b: &Admin<'_>,
    authz: Option<&Authz<'_>>,
    req: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let mut resp = DescribeAclsResponse::default();
    if let Some((e, message)) = refusal(b, authz, Operation::Describe) {
        resp.error_code = error_code(b.metrics, e);
        resp.error_message = Some(str_bytes(message));
        return resp;
    }
    let f = match filter(
        req.resource_type_filter,
        &req.resource_name_filter,
        req.pattern_type_filter,
        &req.principal_filter,
        &req.host_filter,
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(message) => {
            resp.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
            resp.error_message = Some(str_bytes(message));
            return resp;
        }
    };
    let view = b.views.current();
    let mut by_resource: BTreeMap<(ResourceType, String, PatternType), Vec<AclDescription>> =
        BTreeMap::new();
    for acl in view.image.acls.iter().filter(|a| f.matches(a)) {
        let mut d = AclDescription::default();
        d.principal = str_bytes(acl.principal.clone());
        d.host = str_bytes(acl.host.clone());
        d.operation = acl.operation.code();
        d.permission_type = acl.permission.code();
        by_resource
            .entry((
                acl.resource_type,
                acl.resource_name.clone(),
                acl.pattern_type,
            ))
            .or_default()
            .push(d);
    }
    resp.resources = by_resource
        .into_iter()
        .map(|((rt, name, pattern), acls)| {
            let mut r = DescribeAclsResource::default();
            r.resource_type = rt.code();
            r.resource_name = str_bytes(name);
            r.pattern_type = pattern.code();
            r.acls = acls;
            r
        })
        .collect();
    resp
}

pub async fn delete_acls(
    b: &Admin<'_>,
    authz: Option<&Authz<'_>>,
    req: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let mut resp = DeleteAclsResponse::default();
    let whole = refusal(b, authz, Operation::Alter);
    let parsed: Vec<Result<AclFilter, String>> = req
        .filters
        .iter()
        .map(|f| {
            filter(
                f.resource_type_filter,
                &f.resource_name_filter,
                f.pattern_type_filter,
                &f.principal_filter,
                &f.host_filter,
                f.operation,
                f.permission_type,
            )
        })
        .collect();
    let valid: Vec<AclFilter> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let outcome: Result<Vec<Vec<AclBinding>>, (ResponseError, String)> = match whole {
        Some(refused) => Err(refused),
        None if valid.is_empty() => Ok(Vec::new()),
        None => match super::change_metadata(b, Command::DeleteAcls { filters: valid }).await {
            Ok(Applied::AclsDeleted { deleted }) => Ok(deleted),
            Ok(other) => Err((ResponseError::UnknownServerError, format!("{other:?}"))),
            Err(e) => Err((ResponseError::UnknownServerError, e.to_string())),
        },
    };
    let mut deleted = match &outcome {
        Ok(d) => d.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    for p in parsed {
        let mut r = DeleteAclsFilterResult::default();
        match (&p, &outcome) {
            (_, Err((e, message))) => {
                r.error_code = error_code(b.metrics, *e);
                r.error_message = Some(str_bytes(message.clone()));
            }
            (Err(message), Ok(_)) => {
                r.error_code = error_code(b.metrics, ResponseError::InvalidRequest);
                r.error_message = Some(str_bytes(message.clone()));
            }
            (Ok(_), Ok(_)) => {
                r.matching_acls = deleted
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|acl| {
                        let mut m = DeleteAclsMatchingAcl::default();
                        m.resource_type = acl.resource_type.code();
                        m.resource_name = str_bytes(acl.resource_name);
                        m.pattern_type = acl.pattern_type.code();
                        m.principal = str_bytes(acl.principal);
                        m.host = str_bytes(acl.host);
                        m.operation = acl.operation.code();
                        m.permission_type = acl.permission.code();
                        m
                    })
                    .collect();
            }
        }
        resp.filter_results.push(r);
    }
    resp
}
