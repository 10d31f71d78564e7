//! WatchEvents: the audit log as a live stream, resumable by id.
//!
//! Each watcher subscribes to the log's live events *before* it reads
//! anything from the store, and remembers the highest id it has passed on
//! (its cursor). Whatever the store returns and whatever arrives live is
//! then sent only if its id is above the cursor, so the handover from
//! replay to live has no gap (the subscription already covers every event
//! committed after the read) and no duplicate (the cursor skips the
//! overlap). A watcher that falls behind the live channel is told it lagged
//! and reads the events it missed from the store, by id, before going live
//! again: memory stays bounded by the channel and one page, however fast
//! events come and however slowly the client reads, and nothing is dropped.

use ipcplane_proto::v1;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::audit::{AuditError, AuditLog, EventQuery, StoredEvent};
use crate::convert;
use crate::shutdown::Shutdown;

/// Events read from the store per query while replaying or catching up.
const PAGE: u32 = 256;

/// Events queued between a watcher's task and its gRPC stream. When the
/// client reads slowly the task waits here while the live channel moves on;
/// the watcher then catches up from the store.
const QUEUE: usize = 16;

/// What a WatchEvents call streams.
pub(super) type EventStream = ReceiverStream<Result<v1::AuditEvent, Status>>;

/// The watcher's end of its stream.
type Sender = mpsc::Sender<Result<v1::AuditEvent, Status>>;

/// Starts a watcher of the events matching `equals` (column/value pairs, as
/// for [`EventQuery::equals`]), from `after_id` if given, else from now. It
/// runs until the client goes away or `shutdown` fires, which ends the
/// stream with UNAVAILABLE.
///
/// The subscription and the starting point are taken before this returns,
/// so every event committed after the call is answered is streamed.
///
/// # Errors
/// Internal if the store cannot say where "now" is.
pub(super) async fn start(
    audit: AuditLog,
    equals: Vec<(&'static str, String)>,
    after_id: Option<u64>,
    shutdown: Shutdown,
) -> Result<EventStream, Status> {
    let live = audit.subscribe();
    let cursor = match after_id {
        Some(id) => id,
        None => audit.last_event_id().await.map_err(internal)?,
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let watcher = Watcher {
        audit,
        equals,
        cursor,
        live,
    };
    tokio::spawn(async move {
        let end = tokio::select! {
            () = tx.closed() => return,
            () = shutdown.wait() => Status::unavailable("the agent is shutting down"),
            end = watcher.run(&tx) => end,
        };
        // Best effort: a client that stopped reading just sees the stream end.
        let _ = tx.try_send(Err(end));
    });
    Ok(ReceiverStream::new(rx))
}

/// One watcher's position in the log.
struct Watcher {
    audit: AuditLog,
    equals: Vec<(&'static str, String)>,
    /// The highest id sent or skipped; nothing at or below it is sent again.
    cursor: u64,
    live: broadcast::Receiver<StoredEvent>,
}

impl Watcher {
    /// Alternates between catching up from the store and following the
    /// live channel. Returns only when it cannot go on, with the status that
    /// ends the stream: a store error, or Cancelled when the client has gone.
    async fn run(mut self, tx: &Sender) -> Status {
        loop {
            if let Err(end) = self.catch_up(tx).await {
                return end;
            }
            if let Err(end) = self.follow(tx).await {
                return end;
            }
        }
    }

    /// Sends every stored match above the cursor, page by page, until a
    /// short page says the store has nothing newer (anything committed
    /// later is in the live channel).
    async fn catch_up(&mut self, tx: &Sender) -> Result<(), Status> {
        loop {
            let page = self
                .audit
                .events(EventQuery {
                    after_id: self.cursor,
                    limit: PAGE,
                    since: None,
                    equals: self.equals.clone(),
                })
                .await
                .map_err(internal)?;
            let complete = page.len() < PAGE as usize;
            for event in &page {
                self.cursor = event.id;
                send(tx, event).await?;
            }
            if complete {
                return Ok(());
            }
        }
    }

    /// Sends live matches above the cursor; returns Ok when the watcher
    /// lagged and must catch up from the store.
    async fn follow(&mut self, tx: &Sender) -> Result<(), Status> {
        loop {
            match self.live.recv().await {
                Ok(event) if event.id <= self.cursor => {}
                Ok(event) => {
                    self.cursor = event.id;
                    if matches(&self.equals, &event) {
                        send(tx, &event).await?;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(
                        skipped,
                        after = self.cursor,
                        "watcher fell behind; reading the store"
                    );
                    return Ok(());
                }
                Err(RecvError::Closed) => {
                    return Err(Status::unavailable("the audit log has closed"));
                }
            }
        }
    }
}

/// Queues one event for the client; Err when the client has gone.
async fn send(tx: &Sender, event: &StoredEvent) -> Result<(), Status> {
    tx.send(Ok(convert::event(event)))
        .await
        .map_err(|_| Status::cancelled("the client has gone"))
}

/// True if `event` has every column value in `equals`, as the store's
/// query would decide (numbers compare as numbers).
fn matches(equals: &[(&'static str, String)], event: &StoredEvent) -> bool {
    equals.iter().all(|(column, value)| match *column {
        "tenant" => event.tenant == *value,
        "action" => event.action == *value,
        "resource" => event.resource == *value,
        "outcome" => event.outcome.as_str() == value,
        "pid" => value.parse() == Ok(event.pid),
        "uid" => value.parse() == Ok(event.uid),
        // A column unknown here matches nothing: a new filter field can
        // never widen what a watcher (a non-admin above all) sees.
        _ => false,
    })
}

fn internal(error: AuditError) -> Status {
    Status::internal(error.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tokio_stream::StreamExt;

    use super::*;
    use crate::audit::{Event, Outcome, Record};
    use crate::core::Caller;

    fn caller(pid: u32) -> Caller {
        Caller {
            pid,
            uid: 1000,
            gid: 1000,
            tenant: "uid-1000".into(),
            admin: false,
        }
    }

    /// Commits one event per action, in order, in one batch.
    async fn commit(audit: &AuditLog, actions: &[&'static str]) {
        let records = actions
            .iter()
            .map(|action| {
                Record::Event(Event::new(
                    &caller(7),
                    action,
                    "segments/1",
                    Outcome::Allowed,
                    "",
                ))
            })
            .collect();
        audit.commit(records).await.unwrap();
    }

    /// The ids of the next `n` events on `stream`.
    async fn next_ids(stream: &mut EventStream, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an event within the timeout")
                .expect("the stream goes on")
                .expect("an event, not an error");
            ids.push(event.id);
        }
        ids
    }

    fn open() -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let (audit, _) = AuditLog::open(&dir.path().join("audit.db")).unwrap();
        (dir, audit)
    }

    #[tokio::test]
    async fn replay_hands_over_to_live_events_without_gap_or_duplicate() {
        let (_dir, audit) = open();
        commit(&audit, &["segment.create"; 10]).await;
        let (_trigger, shutdown) = crate::shutdown::channel();
        let mut sut = start(audit.clone(), Vec::new(), Some(4), shutdown)
            .await
            .unwrap();
        commit(&audit, &["segment.delete"; 5]).await;
        assert_eq!(next_ids(&mut sut, 11).await, (5..=15).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_watch_from_now_skips_the_past_and_ends_unavailable_at_shutdown() {
        let (_dir, audit) = open();
        commit(&audit, &["segment.create"; 3]).await;
        let (trigger, shutdown) = crate::shutdown::channel();
        let mut sut = start(audit.clone(), Vec::new(), None, shutdown)
            .await
            .unwrap();
        commit(&audit, &["segment.open", "segment.detach"]).await;
        assert_eq!(next_ids(&mut sut, 2).await, [4, 5]);
        trigger.fire();
        let end = tokio::time::timeout(Duration::from_secs(10), sut.next())
            .await
            .expect("the stream ends at shutdown");
        assert_eq!(
            end.map(|last| last.map(|_| ()).unwrap_err().code()),
            Some(tonic::Code::Unavailable)
        );
        assert!(sut.next().await.is_none());
    }

    #[tokio::test]
    async fn a_watcher_far_behind_the_live_channel_still_gets_every_match_in_order() {
        let (_dir, audit) = open();
        let (_trigger, shutdown) = crate::shutdown::channel();
        let equals = vec![("action", "segment.open".to_owned())];
        let mut sut = start(audit.clone(), equals.clone(), None, shutdown)
            .await
            .unwrap();
        // Commits answer inline, so the watcher does not run until the
        // stream is read: the live channel overflows many times over.
        for _ in 0..40 {
            commit(&audit, &["segment.open", "client.connect"].repeat(50)).await;
        }
        let received = next_ids(&mut sut, 2000).await;
        let stored: Vec<u64> = audit
            .events(EventQuery {
                limit: 5000,
                equals,
                ..EventQuery::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(stored.len(), 2000);
        assert_eq!(received, stored);
    }

    #[test]
    fn live_matching_agrees_with_the_store_on_every_filter_column() {
        let event = StoredEvent {
            id: 1,
            time: SystemTime::now(),
            pid: 42,
            uid: 1000,
            gid: 1000,
            tenant: "uid-1000".into(),
            action: "segment.open".into(),
            resource: "segments/3".into(),
            outcome: Outcome::Denied,
            detail: String::new(),
        };
        let cases = [
            ("tenant", "uid-1000", "uid-0"),
            ("action", "segment.open", "segment.create"),
            ("resource", "segments/3", "segments/4"),
            ("outcome", "DENIED", "ALLOWED"),
            ("pid", "042", "43"),
            ("uid", "1000", "99999999999"),
        ];
        for column in super::super::AUDIT_FILTER_COLUMNS {
            let (_, yes, no) = cases
                .iter()
                .find(|(c, _, _)| *c == column)
                .unwrap_or_else(|| panic!("no case for filter column {column}"));
            assert!(matches(&[(column, (*yes).to_owned())], &event), "{column}");
            assert!(!matches(&[(column, (*no).to_owned())], &event), "{column}");
        }
        assert!(matches(&[], &event));
        assert!(!matches(&[("detail", String::new())], &event));
    }
}
