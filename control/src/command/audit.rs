//! `ipcctl audit list`.

use std::time::SystemTime;

use ipcplane_proto::v1::ListAuditEventsRequest;
use ipcplane_proto::v1::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;

use super::{Filter, fetch_pages};
use crate::Error;
use crate::cli::{AuditListArgs, EventFilterArgs, OutcomeArg};
use crate::output::{AuditEventView, Output};

/// `audit list`
pub(crate) async fn list(
    channel: Channel,
    args: &AuditListArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = AuditServiceClient::new(channel);
    let filter = filter(&args.events, args.list.filter.as_deref());
    let since = args
        .since
        .as_ref()
        .map(|since| since.resolve(SystemTime::now()));
    let events = fetch_pages(&args.list, async |page_size, page_token| {
        let request = ListAuditEventsRequest {
            page_size,
            page_token,
            filter: filter.clone(),
            since,
        };
        let response = client.list_audit_events(request).await?.into_inner();
        Ok((response.events, response.next_page_token))
    })
    .await?;
    let views: Vec<_> = events.into_iter().map(AuditEventView::from).collect();
    out.list(&views)
}

/// The AIP-160 filter of the event flags, ANDed with a raw `--filter`.
pub(crate) fn filter(events: &EventFilterArgs, raw: Option<&str>) -> String {
    Filter::default()
        .string("tenant", events.tenant.as_deref())
        .string("action", events.action.as_deref())
        .string("outcome", events.outcome.map(outcome))
        .raw(raw)
        .build()
}

/// `--outcome` as the API spells it in filters.
fn outcome(outcome: OutcomeArg) -> &'static str {
    match outcome {
        OutcomeArg::Allowed => "ALLOWED",
        OutcomeArg::Denied => "DENIED",
        OutcomeArg::Failed => "FAILED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ListArgs;

    #[test]
    fn filter_names_outcomes_as_the_api_does() {
        let args = AuditListArgs {
            events: EventFilterArgs {
                tenant: Some("uid-1000".into()),
                action: Some("segment.create".into()),
                outcome: Some(OutcomeArg::Denied),
            },
            since: None,
            list: ListArgs {
                filter: Some("pid = 42".into()),
                page_size: None,
                all_pages: true,
                page_token: None,
                limit: None,
            },
        };
        assert_eq!(
            filter(&args.events, args.list.filter.as_deref()),
            r#"tenant = "uid-1000" AND action = "segment.create" AND outcome = "DENIED" AND pid = 42"#
        );
    }
}
