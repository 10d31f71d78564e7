//! `ipcctl watch`, and the events `segment list -w` follows after its list.
//!
//! Opening a watch is bounded by `--timeout` like any call; following it is
//! not, since it runs until the user interrupts it (exit 0) or the agent
//! ends it (exit 69).

use ipcplane_proto::v1::audit_service_client::AuditServiceClient;
use ipcplane_proto::v1::{AuditEvent, WatchEventsRequest};
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::Error;
use crate::cli::WatchArgs;
use crate::output::{AuditEventView, Output};

/// An open WatchEvents stream, and which of its events to print.
#[derive(Debug)]
pub(crate) struct Events {
    stream: Streaming<AuditEvent>,
    wanted: fn(&AuditEvent) -> bool,
}

/// `watch`: opens the stream its flags ask for.
pub(crate) async fn open(channel: Channel, args: &WatchArgs) -> Result<Events, Error> {
    let request = WatchEventsRequest {
        filter: super::audit::filter(&args.events, args.filter.as_deref()),
        after_id: args.after_id,
    };
    start(channel, request, |_| true).await
}

/// Opens a stream of the events `request` selects, of which only the
/// `wanted` ones will be printed (for selections AIP-160 cannot express).
///
/// # Errors
/// The agent refused the watch ([`Error::Rpc`]).
pub(crate) async fn start(
    channel: Channel,
    request: WatchEventsRequest,
    wanted: fn(&AuditEvent) -> bool,
) -> Result<Events, Error> {
    let stream = AuditServiceClient::new(channel)
        .watch_events(request)
        .await?
        .into_inner();
    Ok(Events { stream, wanted })
}

impl Events {
    /// Prints each wanted event as it arrives, until SIGINT or SIGTERM
    /// (success) or until the agent ends the stream.
    ///
    /// # Errors
    /// [`Error::WatchEnded`] when the agent closed the stream or went away,
    /// [`Error::Rpc`] for any other error status, or a failed write.
    pub(crate) async fn follow(mut self, out: &mut Output<'_>) -> Result<(), Error> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        out.stream_header::<AuditEventView>()?;
        loop {
            let next = tokio::select! {
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                next = self.stream.message() => next,
            };
            match next {
                Ok(Some(event)) if (self.wanted)(&event) => {
                    out.stream_row(&AuditEventView::from(event))?;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(Error::WatchEnded("the agent closed the stream".into())),
                Err(status) => return Err(ended(status)),
            }
        }
    }
}

/// The error for a status that ended a watch midway: the agent stopping or
/// the connection breaking means the agent went away.
fn ended(status: Status) -> Error {
    match status.code() {
        Code::Unavailable => Error::WatchEnded(status.message().to_owned()),
        Code::Unknown | Code::Cancelled => {
            Error::WatchEnded(format!("the connection broke ({})", status.message()))
        }
        _ => Error::Rpc(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_cut_by_the_agent_or_the_connection_is_the_agent_going_away() {
        for status in [
            Status::unavailable("the agent is shutting down"),
            Status::unknown("h2 protocol error: connection reset"),
            Status::cancelled("stream reset"),
        ] {
            assert_eq!(ended(status).exit_code(), 69);
        }
        assert_eq!(ended(Status::internal("disk I/O error")).exit_code(), 1);
    }
}
