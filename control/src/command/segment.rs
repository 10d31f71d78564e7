//! `ipcctl segment list|get|create|delete|purge`.

use ipcplane_proto::v1::segment_service_client::SegmentServiceClient;
use ipcplane_proto::v1::{
    AuditEvent, CreateSegmentRequest, DeleteSegmentRequest, EventSpec, GetSegmentRequest, Lifetime,
    ListSegmentsRequest, PurgeSegmentsRequest, RingSpec, SemaphoreSpec, SharingMode,
    WatchEventsRequest, create_segment_request,
};
use tonic::transport::Channel;

use super::watch::{self, Events};
use super::{Filter, fetch_pages};
use crate::Error;
use crate::cli::{
    KindArg, LifetimeArg, ModeArg, SegmentCreateArgs, SegmentDeleteArgs, SegmentGetArgs,
    SegmentListArgs, SegmentPurgeArgs,
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
        .string("kind", args.kind.map(kind_name))
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

/// The API name of a kind, as filters take it.
fn kind_name(kind: KindArg) -> &'static str {
    match kind {
        KindArg::Plain => "PLAIN",
        KindArg::Ring => "RING",
        KindArg::Semaphore => "SEMAPHORE",
        KindArg::Event => "EVENT",
    }
}

/// The layout the flags ask for; none for a plain segment. Unset ring
/// flags are 0, which the agent fills in with its defaults.
fn layout(args: &SegmentCreateArgs) -> Option<create_segment_request::Layout> {
    if let Some(capacity_bytes) = args.ring_capacity {
        return Some(create_segment_request::Layout::Ring(RingSpec {
            capacity_bytes,
            max_message_bytes: args.max_message.unwrap_or(0),
            producers: args.producers.unwrap_or(0),
        }));
    }
    if let Some(initial_value) = args.semaphore {
        return Some(create_segment_request::Layout::Semaphore(SemaphoreSpec {
            initial_value,
        }));
    }
    args.event
        .then_some(create_segment_request::Layout::Event(EventSpec {}))
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
        size_bytes: args.size.unwrap_or(0),
        mode: mode.into(),
        lifetime: lifetime.into(),
        ttl_ms: args
            .ttl
            .map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        tenant: args.tenant.clone().unwrap_or_default(),
        layout: layout(args),
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
            size: Some(4096),
            mode,
            lifetime,
            ttl,
            tenant: None,
            ring_capacity: None,
            max_message: None,
            producers: None,
            semaphore: None,
            event: false,
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

    #[test]
    fn create_maps_kind_flags_to_the_layout() {
        let ring = SegmentCreateArgs {
            size: None,
            ring_capacity: Some(4096),
            producers: Some(2),
            ..args(None, None, None)
        };
        let semaphore = SegmentCreateArgs {
            size: None,
            semaphore: Some(3),
            ..args(None, None, None)
        };
        let event = SegmentCreateArgs {
            size: None,
            event: true,
            ..args(None, None, None)
        };

        let sut = create_request(&ring);
        assert_eq!(sut.size_bytes, 0);
        assert_eq!(
            sut.layout,
            Some(create_segment_request::Layout::Ring(RingSpec {
                capacity_bytes: 4096,
                max_message_bytes: 0,
                producers: 2,
            }))
        );
        assert_eq!(
            create_request(&semaphore).layout,
            Some(create_segment_request::Layout::Semaphore(SemaphoreSpec {
                initial_value: 3
            }))
        );
        assert_eq!(
            create_request(&event).layout,
            Some(create_segment_request::Layout::Event(EventSpec {}))
        );
        assert_eq!(create_request(&args(None, None, None)).layout, None);
    }
}
