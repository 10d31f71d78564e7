//! `ipcctl segment list|get|create|delete|purge`.

use ipcplane_proto::v1::segment_service_client::SegmentServiceClient;
use ipcplane_proto::v1::{
    AuditEvent, CreateSegmentRequest, DeleteSegmentRequest, GetSegmentRequest, Lifetime,
    ListSegmentsRequest, PurgeSegmentsRequest, SharingMode, WatchEventsRequest,
};
use tonic::transport::Channel;

use super::watch::{self, Events};
use super::{Filter, fetch_pages};
use crate::Error;
use crate::cli::{
    LifetimeArg, ModeArg, SegmentCreateArgs, SegmentDeleteArgs, SegmentGetArgs, SegmentListArgs,
    SegmentPurgeArgs,
};
use crate::output::{Output, SegmentView};

/// `segment list`; with `-w`, also the segment events to follow after the
/// list. The watch opens before the list is read, so no change made in
/// between is missed (one may show in both).
pub(crate) async fn list(
    channel: Channel,
    args: &SegmentListArgs,
    out: &mut Output<'_>,
) -> Result<Option<Events>, Error> {
    let events = if args.watch {
        let request = WatchEventsRequest {
            filter: Filter::default()
                .string("tenant", args.tenant.as_deref())
                .build(),
            after_id: None,
        };
        let segment_events = |event: &AuditEvent| event.action.starts_with("segment.");
        Some(watch::start(channel.clone(), request, segment_events).await?)
    } else {
        None
    };
    let mut client = SegmentServiceClient::new(channel);
    let filter = Filter::default()
        .string("tenant", args.tenant.as_deref())
        .string("name", args.name.as_deref())
        .number("owner_pid", args.owner_pid)
        .raw(args.list.filter.as_deref())
        .build();
    let segments = fetch_pages(&args.list, async |page_size, page_token| {
        let request = ListSegmentsRequest {
            page_size,
            page_token,
            filter: filter.clone(),
        };
        let response = client.list_segments(request).await?.into_inner();
        Ok((response.segments, response.next_page_token))
    })
    .await?;
    let views: Vec<_> = segments.into_iter().map(SegmentView::from).collect();
    out.list(&views)?;
    Ok(events)
}

/// `segment purge`: prints the orphans purged (or, without `--force`, that
/// would be), and says which on stderr.
pub(crate) async fn purge(
    channel: Channel,
    args: &SegmentPurgeArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = SegmentServiceClient::new(channel);
    let request = PurgeSegmentsRequest {
        filter: Filter::default()
            .string("tenant", args.tenant.as_deref())
            .raw(args.filter.as_deref())
            .build(),
        force: args.force,
    };
    let response = client.purge_segments(request).await?.into_inner();
    let views: Vec<_> = response
        .purge_sample
        .into_iter()
        .map(SegmentView::from)
        .collect();
    out.list(&views)?;
    if args.force {
        eprintln!("ipcctl: purged {} orphan segment(s)", response.purge_count);
    } else {
        eprintln!(
            "ipcctl: dry run: {} orphan segment(s) would be purged; add --force to purge them",
            response.purge_count
        );
    }
    Ok(())
}

/// `segment get`
pub(crate) async fn get(
    channel: Channel,
    args: &SegmentGetArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = SegmentServiceClient::new(channel);
    let segment = client
        .get_segment(GetSegmentRequest { id: args.id })
        .await?
        .into_inner();
    out.one(&SegmentView::from(segment))
}

/// `segment create`
pub(crate) async fn create(
    channel: Channel,
    args: &SegmentCreateArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = SegmentServiceClient::new(channel);
    let segment = client
        .create_segment(create_request(args))
        .await?
        .into_inner();
    out.one(&SegmentView::from(segment))
}

fn create_request(args: &SegmentCreateArgs) -> CreateSegmentRequest {
    let mode = match args.mode {
        None => SharingMode::Unspecified,
        Some(ModeArg::ReadWrite) => SharingMode::ReadWrite,
        Some(ModeArg::ReadOnlyForOthers) => SharingMode::ReadOnlyForOthers,
    };
    let lifetime = match args.lifetime {
        None => Lifetime::Unspecified,
        Some(LifetimeArg::Persistent) => Lifetime::Persistent,
        Some(LifetimeArg::OnLastDetach) => Lifetime::OnLastDetach,
        Some(LifetimeArg::Owner) => Lifetime::Owner,
        Some(LifetimeArg::Ttl) => Lifetime::Ttl,
    };
    CreateSegmentRequest {
        name: args.name.clone().unwrap_or_default(),
        size_bytes: args.size,
        mode: mode.into(),
        lifetime: lifetime.into(),
        ttl_ms: args
            .ttl
            .map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        tenant: args.tenant.clone().unwrap_or_default(),
    }
}

/// `segment delete`: deletes every id, prints the ones deleted (always as a
/// list) and reports the others together.
pub(crate) async fn delete(
    channel: Channel,
    args: &SegmentDeleteArgs,
    out: &mut Output<'_>,
) -> Result<(), Error> {
    let mut client = SegmentServiceClient::new(channel);
    let mut deleted = Vec::new();
    let mut failures = Vec::new();
    for &id in &args.ids {
        match client.delete_segment(DeleteSegmentRequest { id }).await {
            Ok(response) => match response.into_inner().segment {
                Some(segment) => deleted.push(SegmentView::from(segment)),
                None => {
                    return Err(Error::Protocol(format!(
                        "no segment in the reply to deleting {id}"
                    )));
                }
            },
            Err(status) if args.ids.len() == 1 => return Err(Error::Rpc(status)),
            Err(status) => failures.push((id, status)),
        }
    }
    if !deleted.is_empty() {
        out.list(&deleted)?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Delete(failures))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn args(
        mode: Option<ModeArg>,
        lifetime: Option<LifetimeArg>,
        ttl: Option<Duration>,
    ) -> SegmentCreateArgs {
        SegmentCreateArgs {
            name: None,
            size: 4096,
            mode,
            lifetime,
            ttl,
            tenant: None,
        }
    }

    #[test]
    fn create_leaves_unset_flags_to_the_agent() {
        let sut = create_request(&args(None, None, None));
        assert_eq!(
            sut,
            CreateSegmentRequest {
                size_bytes: 4096,
                ..CreateSegmentRequest::default()
            }
        );
    }

    #[test]
    fn create_maps_flags_to_the_request() {
        let mut given = args(
            Some(ModeArg::ReadOnlyForOthers),
            Some(LifetimeArg::Ttl),
            Some(Duration::from_secs(30)),
        );
        given.name = Some("frames".into());
        given.tenant = Some("video".into());
        let sut = create_request(&given);
        assert_eq!(sut.name, "frames");
        assert_eq!(sut.tenant, "video");
        assert_eq!(sut.mode(), SharingMode::ReadOnlyForOthers);
        assert_eq!(sut.lifetime(), Lifetime::Ttl);
        assert_eq!(sut.ttl_ms, 30_000);
    }
}
