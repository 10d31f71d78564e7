//! `ipcctl quota get|set`.

use ipcplane_proto::v1::tenant_service_client::TenantServiceClient;
use ipcplane_proto::v1::{GetQuotaRequest, Quota, UpdateQuotaRequest};
use prost_types::FieldMask;
use tonic::transport::Channel;

use crate::Error;
use crate::cli::{QuotaGetArgs, QuotaSetArgs};
use crate::output::{Output, QuotaView};

/// `quota get`
pub(crate) async fn get(
    channel: Channel,
    args: &QuotaGetArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = TenantServiceClient::new(channel);
    let request = GetQuotaRequest {
        tenant: args.tenant.clone().unwrap_or_default(),
    };
    let quota = client.get_quota(request).await?.into_inner();
    out.one(&QuotaView::from(quota))
}

/// `quota set`
pub(crate) async fn set(
    channel: Channel,
    args: &QuotaSetArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = TenantServiceClient::new(channel);
    let quota = client
        .update_quota(update_request(args))
        .await?
        .into_inner();
    out.one(&QuotaView::from(quota))
}

/// An update naming exactly the limits given (or `reset`), so the others stay
/// as they are.
fn update_request(args: &QuotaSetArgs) -> UpdateQuotaRequest {
    let mut quota = Quota {
        tenant: args.tenant.clone(),
        ..Quota::default()
    };
    let mut paths = Vec::new();
    if args.reset {
        paths.push("reset".to_owned());
    }
    let limits = [
        ("max_bytes", args.max_bytes, &mut quota.max_bytes),
        ("max_segments", args.max_segments, &mut quota.max_segments),
        (
            "max_segment_bytes",
            args.max_segment_bytes,
            &mut quota.max_segment_bytes,
        ),
    ];
    for (path, given, field) in limits {
        if let Some(limit) = given {
            *field = limit.0;
            paths.push(path.to_owned());
        }
    }
    UpdateQuotaRequest {
        quota: Some(quota),
        update_mask: Some(FieldMask { paths }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Limit;

    fn args(
        max_bytes: Option<Limit>,
        max_segments: Option<Limit>,
        max_segment_bytes: Option<Limit>,
        reset: bool,
    ) -> QuotaSetArgs {
        QuotaSetArgs {
            tenant: "uid-1000".into(),
            max_bytes,
            max_segments,
            max_segment_bytes,
            reset,
        }
    }

    fn paths(request: &UpdateQuotaRequest) -> Vec<&str> {
        let mask = request.update_mask.as_ref().expect("a mask");
        mask.paths.iter().map(String::as_str).collect()
    }

    #[test]
    fn set_masks_exactly_the_limits_given() {
        let sut = update_request(&args(
            Some(Limit(Some(1 << 30))),
            None,
            Some(Limit(None)),
            false,
        ));
        assert_eq!(paths(&sut), ["max_bytes", "max_segment_bytes"]);
        let quota = sut.quota.expect("a quota");
        assert_eq!(quota.tenant, "uid-1000");
        assert_eq!(quota.max_bytes, Some(1 << 30));
        assert_eq!(quota.max_segments, None);
        assert_eq!(quota.max_segment_bytes, None);
    }

    #[test]
    fn set_sends_unlimited_as_an_unset_limit_named_in_the_mask() {
        let sut = update_request(&args(None, Some(Limit(None)), None, false));
        assert_eq!(paths(&sut), ["max_segments"]);
        assert_eq!(sut.quota.and_then(|q| q.max_segments), None);
    }

    #[test]
    fn reset_sends_only_the_reset_path() {
        let sut = update_request(&args(None, None, None, true));
        assert_eq!(paths(&sut), ["reset"]);
    }
}
