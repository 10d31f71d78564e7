//! The gRPC control API on `control.sock` (mode 0660): the services of
//! `control.proto`, plus `grpc.health.v1` and server reflection so `grpcurl`
//! and any gRPC client work. Callers are identified by SO_PEERCRED.
//!
//! The WatchEvents stream lives in the `watch` submodule.

mod watch;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ipcplane_proto::v1::{self, *};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::audit::{EventQuery, Outcome};
use crate::convert;
use crate::core::{
    Caller, ClientId, CoreError, Layout, Limits, SegmentId, SegmentRecord, SegmentSpec,
    check_tenant_access,
};
use crate::filter::Filter;
use crate::service::{Agent, ServiceError};
use crate::shutdown::Shutdown;

/// Page size when the request gives none.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served; larger requests are coerced (AIP-158).
const MAX_PAGE_SIZE: usize = 1000;
/// Audit filter fields, which are also the names of their columns.
const AUDIT_FILTER_COLUMNS: [&str; 6] = ["tenant", "action", "resource", "outcome", "pid", "uid"];

/// Binds the control socket, mode 0660, owned by `group` when given.
///
/// # Errors
/// The socket cannot be bound or its ownership set.
pub fn bind(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    if let Some(gid) = group {
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o660))?;
    Ok(listener)
}

/// Serves every control service until shutdown; health turns NOT_SERVING first.
///
/// # Errors
/// The server failed.
pub async fn serve(
    agent: Arc<Agent>,
    listener: UnixListener,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    // v1 for current clients, v1alpha for older grpcurl and tools.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ipcplane_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    let api = Api(agent, shutdown.clone());
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            set_health(&health, tonic_health::ServingStatus::NotServing).await;
        }
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent_service_server::AgentServiceServer::new(api.clone()))
        .add_service(segment_service_server::SegmentServiceServer::new(
            api.clone(),
        ))
        .add_service(client_service_server::ClientServiceServer::new(api.clone()))
        .add_service(tenant_service_server::TenantServiceServer::new(api.clone()))
        .add_service(audit_service_server::AuditServiceServer::new(api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
}

/// Sets the status of the whole agent ("") and of each service by name.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    use tonic::server::NamedService;
    let services = [
        "",
        agent_service_server::AgentServiceServer::<Api>::NAME,
        segment_service_server::SegmentServiceServer::<Api>::NAME,
        client_service_server::ClientServiceServer::<Api>::NAME,
        tenant_service_server::TenantServiceServer::<Api>::NAME,
        audit_service_server::AuditServiceServer::<Api>::NAME,
    ];
    for service in services {
        health.set_service_status(service, status).await;
    }
}

/// All control services share the agent; streams end when the shutdown
/// fires, so they never hold the server's graceful stop.
#[derive(Debug, Clone)]
struct Api(Arc<Agent>, Shutdown);

impl Api {
    /// The caller as the kernel reported it on this connection.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| Status::unauthenticated("peer credentials are unavailable"))?;
        let pid = cred
            .pid()
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or(0);
        Ok(self.0.policy.caller(pid, cred.uid(), cred.gid()))
    }

    /// Audits a refused read (writes are audited by the service) and returns it.
    async fn deny(
        &self,
        caller: &Caller,
        action: &'static str,
        resource: &str,
        refusal: CoreError,
    ) -> Status {
        if let CoreError::PermissionDenied(_) = &refusal {
            return self
                .0
                .refused(caller, action, resource, refusal)
                .await
                .into();
        }
        refusal.into()
    }

    /// The one tenant a non-admin is confined to, checked against the tenants
    /// the filter names.
    async fn tenant_scope(
        &self,
        caller: &Caller,
        action: &'static str,
        filter: &Filter,
        field: &str,
    ) -> Result<Option<String>, Status> {
        for tenant in filter.values(field) {
            if let Err(refusal) = check_tenant_access(caller, tenant) {
                return Err(self
                    .deny(caller, action, &format!("tenants/{tenant}"), refusal)
                    .await);
            }
        }
        Ok((!caller.admin).then(|| caller.tenant.clone()))
    }
}

/// Fields a segment filter may name.
const SEGMENT_FILTER_FIELDS: [&str; 6] =
    ["tenant", "name", "owner_pid", "owner_uid", "state", "kind"];

/// Whether `record` passes a filter over [`SEGMENT_FILTER_FIELDS`].
fn segment_matches(filter: &Filter, record: &SegmentRecord) -> bool {
    filter.matches("tenant", &record.tenant)
        && filter.matches("name", record.name.as_deref().unwrap_or(""))
        && filter.matches_number("owner_pid", record.owner_pid.into())
        && filter.matches_number("owner_uid", record.owner_uid.into())
        && filter.matches("state", convert::state_name(record.state))
        && filter.matches("kind", convert::kind_name(record.layout))
}

/// Runs a state-changing operation to the end even if the client goes away:
/// hyper drops a cancelled handler's future, which would strand the core
/// between its decision and the audit commit (a reservation never released).
async fn to_completion<T: Send + 'static>(
    operation: impl Future<Output = Result<T, ServiceError>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(operation).await {
        Ok(result) => result.map_err(Status::from),
        Err(panicked) => Err(Status::internal(format!(
            "the operation failed: {panicked}"
        ))),
    }
}

/// Where a list page starts and how long it is.
struct Page {
    after: u64,
    size: usize,
}

impl Page {
    fn parse(page_size: i32, token: &str) -> Result<Page, Status> {
        let size = match usize::try_from(page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
            Err(_) => return Err(Status::invalid_argument("page_size must not be negative")),
        };
        let after = if token.is_empty() {
            0
        } else {
            token
                .strip_prefix("after-")
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| Status::invalid_argument(format!("invalid page_token {token:?}")))?
        };
        Ok(Page { after, size })
    }

    /// Cuts `items` (fetched with one extra) to the page and returns the next
    /// token, empty on the last page.
    fn finish<T>(&self, items: &mut Vec<T>, id: impl Fn(&T) -> u64) -> String {
        if items.len() <= self.size {
            return String::new();
        }
        items.truncate(self.size);
        items
            .last()
            .map(|last| format!("after-{}", id(last)))
            .unwrap_or_default()
    }
}

fn parse_filter(text: &str, allowed: &[&str]) -> Result<Filter, Status> {
    Filter::parse(text, allowed).map_err(Status::from)
}

/// An audit filter as column/value pairs for the store (outcomes in their
/// stored spelling), plus the tenant a non-admin is confined to.
fn audit_columns(
    filter: &Filter,
    scope: Option<String>,
) -> Result<Vec<(&'static str, String)>, Status> {
    let mut equals: Vec<(&'static str, String)> = Vec::new();
    for comparison in &filter.comparisons {
        let column = AUDIT_FILTER_COLUMNS
            .into_iter()
            .find(|c| *c == comparison.field)
            .expect("the filter admits only these columns");
        let value = match column {
            "outcome" => {
                let outcome = comparison.value.to_ascii_uppercase();
                if ![Outcome::Allowed, Outcome::Denied, Outcome::Failed]
                    .iter()
                    .any(|o| o.as_str() == outcome)
                {
                    return Err(Status::invalid_argument(format!(
                        "invalid filter: outcome must be ALLOWED, DENIED or FAILED, got {:?}",
                        comparison.value
                    )));
                }
                outcome
            }
            _ => comparison.value.clone(),
        };
        equals.push((column, value));
    }
    if let Some(tenant) = scope {
        equals.push(("tenant", tenant));
    }
    Ok(equals)
}

#[tonic::async_trait]
impl agent_service_server::AgentService for Api {
    async fn get_agent(
        &self,
        request: Request<GetAgentRequest>,
    ) -> Result<Response<v1::Agent>, Status> {
        let caller = self.caller(&request)?;
        let core = self.0.core();
        // Non-admins see their own tenant's figures, not the host's.
        let (segment_count, client_count, tenant_count, total_bytes, database) = if caller.admin {
            let (segments, clients, bytes) = core.totals();
            let database = self.0.database.display().to_string();
            (
                segments,
                clients,
                core.tenants().len() as u64,
                bytes,
                database,
            )
        } else {
            let own = core.tenant(&caller.tenant);
            (
                own.quota.usage.segments,
                own.clients,
                1,
                own.quota.usage.bytes,
                String::new(),
            )
        };
        Ok(Response::new(v1::Agent {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            start_time: Some(convert::timestamp(self.0.started)),
            uptime: prost_types::Duration::try_from(self.0.started_at.elapsed()).ok(),
            protocol_version: ipcplane_proto::GRANT_PROTOCOL_VERSION,
            segment_count,
            client_count,
            tenant_count,
            total_bytes,
            grant_socket: self.0.grant_socket.display().to_string(),
            database,
        }))
    }
}

#[tonic::async_trait]
impl segment_service_server::SegmentService for Api {
    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let filter = parse_filter(&request.filter, &SEGMENT_FILTER_FIELDS)?;
        let scope = self
            .tenant_scope(&caller, "segment.list", &filter, "tenant")
            .await?;
        let mut segments = Vec::new();
        for record in self.0.core().segments_after(SegmentId(page.after)) {
            let wanted = scope.as_ref().is_none_or(|t| *t == record.tenant)
                && segment_matches(&filter, record);
            if wanted {
                segments.push(convert::segment(record));
                if segments.len() > page.size {
                    break;
                }
            }
        }
        let next_page_token = page.finish(&mut segments, |s| s.id);
        Ok(Response::new(ListSegmentsResponse {
            segments,
            next_page_token,
        }))
    }

    async fn get_segment(
        &self,
        request: Request<GetSegmentRequest>,
    ) -> Result<Response<v1::Segment>, Status> {
        let caller = self.caller(&request)?;
        let id = SegmentId(request.into_inner().id);
        let found = self.0.core().get_segment(&caller, id);
        match found {
            Ok(record) => Ok(Response::new(convert::segment(&record))),
            Err(refusal) => Err(self
                .deny(&caller, "segment.get", &id.to_string(), refusal)
                .await),
        }
    }

    async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> Result<Response<v1::Segment>, Status> {
        use v1::create_segment_request::Layout as Spec;
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let spec = (|| {
            Ok::<_, CoreError>(SegmentSpec {
                name: Some(request.name.clone()).filter(|n| !n.is_empty()),
                size_bytes: request.size_bytes,
                mode: convert::sharing_mode(request.mode)?,
                lifetime: convert::lifetime(request.lifetime, request.ttl_ms)?,
                tenant: Some(request.tenant.clone()).filter(|t| !t.is_empty()),
                layout: match &request.layout {
                    None => Layout::Plain,
                    Some(Spec::Ring(ring)) => convert::ring(ring),
                    Some(Spec::Semaphore(semaphore)) => convert::semaphore(semaphore),
                    Some(Spec::Event(_)) => Layout::Event,
                },
            })
        })();
        let spec = match spec {
            Ok(spec) => spec,
            Err(refusal) => {
                return Err(self
                    .0
                    .refused(&caller, "segment.create", "segments", refusal)
                    .await
                    .into());
            }
        };
        let agent = self.0.clone();
        let (record, _memory) =
            to_completion(async move { agent.create_segment(&caller, spec, None).await }).await?;
        Ok(Response::new(convert::segment(&record)))
    }

    async fn delete_segment(
        &self,
        request: Request<DeleteSegmentRequest>,
    ) -> Result<Response<DeleteSegmentResponse>, Status> {
        let caller = self.caller(&request)?;
        let agent = self.0.clone();
        let id = SegmentId(request.into_inner().id);
        let record = to_completion(async move { agent.delete_segment(&caller, id).await }).await?;
        Ok(Response::new(DeleteSegmentResponse {
            segment: Some(convert::segment(&record)),
        }))
    }

    async fn purge_segments(
        &self,
        request: Request<PurgeSegmentsRequest>,
    ) -> Result<Response<PurgeSegmentsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let filter = parse_filter(&request.filter, &SEGMENT_FILTER_FIELDS)?;
        self.tenant_scope(&caller, "segment.purge", &filter, "tenant")
            .await?;
        let agent = self.0.clone();
        let purged = to_completion(async move {
            let wanted = |record: &SegmentRecord| segment_matches(&filter, record);
            agent.purge_segments(&caller, wanted, request.force).await
        })
        .await?;
        Ok(Response::new(PurgeSegmentsResponse {
            purge_count: i64::try_from(purged.len()).unwrap_or(i64::MAX),
            purge_sample: purged.iter().map(convert::segment).collect(),
        }))
    }
}

#[tonic::async_trait]
impl client_service_server::ClientService for Api {
    async fn list_clients(
        &self,
        request: Request<ListClientsRequest>,
    ) -> Result<Response<ListClientsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let filter = parse_filter(&request.filter, &["tenant", "pid", "uid"])?;
        let scope = self
            .tenant_scope(&caller, "client.list", &filter, "tenant")
            .await?;
        let mut clients = Vec::new();
        for record in self.0.core().clients_after(ClientId(page.after)) {
            let who = &record.caller;
            let wanted = scope.as_ref().is_none_or(|t| *t == who.tenant)
                && filter.matches("tenant", &who.tenant)
                && filter.matches_number("pid", who.pid.into())
                && filter.matches_number("uid", who.uid.into());
            if wanted {
                clients.push(v1::Client {
                    id: record.id.0,
                    pid: who.pid,
                    uid: who.uid,
                    gid: who.gid,
                    tenant: who.tenant.clone(),
                    connect_time: Some(convert::timestamp(record.connected)),
                    attachment_count: record.attachment_count(),
                });
                if clients.len() > page.size {
                    break;
                }
            }
        }
        let next_page_token = page.finish(&mut clients, |c| c.id);
        Ok(Response::new(ListClientsResponse {
            clients,
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl tenant_service_server::TenantService for Api {
    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let filter = parse_filter(&request.filter, &["name"])?;
        let scope = self
            .tenant_scope(&caller, "tenant.list", &filter, "name")
            .await?;
        // Tenants are few and ordered by name; the token is a position.
        let mut tenants: Vec<(u64, v1::Tenant)> = self
            .0
            .core()
            .tenants()
            .into_iter()
            .filter(|t| {
                scope.as_ref().is_none_or(|s| *s == t.quota.tenant)
                    && filter.matches("name", &t.quota.tenant)
            })
            .enumerate()
            .skip(usize::try_from(page.after).unwrap_or(usize::MAX))
            .take(page.size + 1)
            .map(|(position, t)| {
                let tenant = v1::Tenant {
                    name: t.quota.tenant.clone(),
                    quota: Some(convert::quota(&t.quota)),
                    client_count: t.clients,
                };
                (position as u64 + 1, tenant)
            })
            .collect();
        let next_page_token = page.finish(&mut tenants, |(position, _)| *position);
        Ok(Response::new(ListTenantsResponse {
            tenants: tenants.into_iter().map(|(_, t)| t).collect(),
            next_page_token,
        }))
    }

    async fn get_quota(
        &self,
        request: Request<GetQuotaRequest>,
    ) -> Result<Response<Quota>, Status> {
        let caller = self.caller(&request)?;
        let tenant = Some(request.into_inner().tenant)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| caller.tenant.clone());
        let view = self.0.core().quota(&caller, &tenant);
        match view {
            Ok(view) => Ok(Response::new(convert::quota(&view))),
            Err(refusal) => Err(self
                .deny(&caller, "quota.get", &format!("tenants/{tenant}"), refusal)
                .await),
        }
    }

    async fn update_quota(
        &self,
        request: Request<UpdateQuotaRequest>,
    ) -> Result<Response<Quota>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let wanted = request.quota.unwrap_or_default();
        let tenant = Some(wanted.tenant.clone())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| caller.tenant.clone());
        let paths = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        let agent = self.0.clone();
        let view = to_completion(async move {
            agent
                .set_quota(&caller, &tenant, |current| {
                    updated_limits(current, &wanted, &paths)
                })
                .await
        })
        .await?;
        Ok(Response::new(convert::quota(&view)))
    }
}

/// Applies an update mask to the current limits; `Ok(None)` drops the override.
fn updated_limits(
    current: Limits,
    wanted: &Quota,
    paths: &[String],
) -> Result<Option<Limits>, CoreError> {
    if paths.iter().any(|p| p == "reset") {
        if paths.len() > 1 {
            return Err(CoreError::InvalidArgument(
                "update_mask `reset` cannot be combined with other paths".into(),
            ));
        }
        return Ok(None);
    }
    let all = ["max_bytes", "max_segments", "max_segment_bytes"];
    let paths: Vec<&str> = if paths.is_empty() {
        all.to_vec()
    } else {
        paths.iter().map(String::as_str).collect()
    };
    let mut limits = current;
    for path in paths {
        let (slot, value) = match path {
            "max_bytes" => (&mut limits.max_bytes, wanted.max_bytes),
            "max_segments" => (&mut limits.max_segments, wanted.max_segments),
            "max_segment_bytes" => (&mut limits.max_segment_bytes, wanted.max_segment_bytes),
            other => {
                return Err(CoreError::InvalidArgument(format!(
                    "unknown update_mask path {other:?}; allowed: {}, reset",
                    all.join(", ")
                )));
            }
        };
        if value == Some(0) {
            return Err(CoreError::InvalidArgument(format!(
                "{path} must be positive, or unset for unlimited"
            )));
        }
        *slot = value;
    }
    Ok(Some(limits))
}

#[tonic::async_trait]
impl audit_service_server::AuditService for Api {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let filter = parse_filter(&request.filter, &AUDIT_FILTER_COLUMNS)?;
        let scope = self
            .tenant_scope(&caller, "audit.list", &filter, "tenant")
            .await?;
        let equals = audit_columns(&filter, scope)?;
        let since = request
            .since
            .map(|t| {
                SystemTime::try_from(t)
                    .map_err(|_| Status::invalid_argument("invalid since timestamp"))
            })
            .transpose()?;
        let query = EventQuery {
            after_id: page.after,
            limit: u32::try_from(page.size + 1).unwrap_or(u32::MAX),
            since,
            equals,
        };
        let stored = self
            .0
            .audit
            .events(query)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut events: Vec<_> = stored.iter().map(convert::event).collect();
        let next_page_token = page.finish(&mut events, |e| e.id);
        Ok(Response::new(ListAuditEventsResponse {
            events,
            next_page_token,
        }))
    }

    type WatchEventsStream = watch::EventStream;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let filter = parse_filter(&request.filter, &AUDIT_FILTER_COLUMNS)?;
        let scope = self
            .tenant_scope(&caller, "audit.watch", &filter, "tenant")
            .await?;
        let equals = audit_columns(&filter, scope)?;
        let stream = watch::start(
            self.0.audit.clone(),
            equals,
            request.after_id,
            self.1.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_and_sizes_are_validated() {
        assert_eq!(
            Page::parse(0, "").map(|p| (p.after, p.size)).unwrap(),
            (0, DEFAULT_PAGE_SIZE)
        );
        assert_eq!(
            Page::parse(5000, "after-7")
                .map(|p| (p.after, p.size))
                .unwrap(),
            (7, MAX_PAGE_SIZE)
        );
        assert_eq!(
            Page::parse(-1, "").err().unwrap().code(),
            tonic::Code::InvalidArgument
        );
        for bad in ["7", "after-", "after-x", "garbage"] {
            assert_eq!(
                Page::parse(10, bad).err().unwrap().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn finish_cuts_the_extra_item_and_points_past_the_last() {
        let page = Page { after: 0, size: 2 };
        let mut items = vec![1u64, 2, 3];
        assert_eq!(page.finish(&mut items, |i| *i), "after-2");
        assert_eq!(items, [1, 2]);
        let mut last = vec![1u64];
        assert_eq!(page.finish(&mut last, |i| *i), "");
    }

    #[test]
    fn update_mask_sets_named_limits_and_reset_drops_the_override() {
        let current = Limits {
            max_bytes: Some(1),
            max_segments: Some(2),
            max_segment_bytes: Some(3),
        };
        let wanted = Quota {
            max_segments: Some(20),
            ..Quota::default()
        };
        let only_segments = updated_limits(current, &wanted, &["max_segments".into()]).unwrap();
        assert_eq!(
            only_segments,
            Some(Limits {
                max_segments: Some(20),
                ..current
            })
        );
        let all = updated_limits(current, &wanted, &[]).unwrap();
        assert_eq!(
            all,
            Some(Limits {
                max_bytes: None,
                max_segments: Some(20),
                max_segment_bytes: None
            })
        );
        assert_eq!(
            updated_limits(current, &wanted, &["reset".into()]).unwrap(),
            None
        );
        assert!(updated_limits(current, &wanted, &["colour".into()]).is_err());
        assert!(updated_limits(current, &wanted, &["reset".into(), "max_bytes".into()]).is_err());
        let zero = Quota {
            max_bytes: Some(0),
            ..Quota::default()
        };
        assert!(updated_limits(current, &zero, &["max_bytes".into()]).is_err());
    }
}
