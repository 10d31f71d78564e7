//! The audit store: SQLite in WAL mode through sqlx, migrations embedded.
//!
//! Every write goes through one writer task that group-commits: it takes every
//! job waiting in its queue, writes them in one transaction, and only then
//! answers each job. A reply to a client waits for its job, so an acknowledged
//! operation is always in the log, yet concurrent requests share a commit
//! instead of queuing behind one another. `synchronous = NORMAL` makes a
//! commit durable against a crash of the agent (the WAL is written before the
//! answer) without an fsync per batch; power loss may lose the last batches.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot};

use crate::core::{Caller, Lifetime, Limits, SegmentRecord, SharingMode};

/// Most jobs written in one transaction.
const MAX_BATCH: usize = 512;
/// Jobs waiting for the writer before senders wait too.
const QUEUE_DEPTH: usize = 4096;

/// The audit store failed; the request that needed it is not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Arc<sqlx::Error>,
    },
    #[error("cannot migrate audit database: {0}")]
    Migrate(Arc<sqlx::migrate::MigrateError>),
    #[error("audit database error: {0}")]
    Sql(Arc<sqlx::Error>),
    #[error("audit writer has stopped")]
    WriterGone,
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        AuditError::Sql(Arc::new(e))
    }
}

/// Whether the agent did what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    Failed,
}

impl Outcome {
    /// The stored (and filterable) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "ALLOWED",
            Outcome::Denied => "DENIED",
            Outcome::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> Outcome {
        match text {
            "ALLOWED" => Outcome::Allowed,
            "DENIED" => Outcome::Denied,
            _ => Outcome::Failed,
        }
    }
}

/// One decision, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time: SystemTime,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub tenant: String,
    pub action: &'static str,
    pub resource: String,
    pub outcome: Outcome,
    pub detail: String,
}

impl Event {
    /// An event about `caller`, stamped now.
    pub fn new(
        caller: &Caller,
        action: &'static str,
        resource: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> Event {
        Event {
            time: SystemTime::now(),
            pid: caller.pid,
            uid: caller.uid,
            gid: caller.gid,
            tenant: caller.tenant.clone(),
            action,
            resource: resource.into(),
            outcome,
            detail: detail.into(),
        }
    }
}

/// One event as read back, with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: u64,
    pub time: SystemTime,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub tenant: String,
    pub action: String,
    pub resource: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// A change to persist.
#[derive(Debug, Clone)]
pub enum Record {
    Event(Event),
    SegmentCreated(SegmentRecord),
    SegmentFreed {
        id: u64,
        at: SystemTime,
    },
    /// `None` drops the override.
    QuotaOverride {
        tenant: String,
        limits: Option<Limits>,
    },
}

/// What ListAuditEvents asks for.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only ids above this (the page token).
    pub after_id: u64,
    pub limit: u32,
    pub since: Option<SystemTime>,
    /// Column/value pairs that must all match (columns are checked by the caller).
    pub equals: Vec<(&'static str, String)>,
}

struct Job {
    records: Vec<Record>,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// Handle to the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    jobs: mpsc::Sender<Job>,
    readers: SqlitePool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("records", &self.records.len())
            .finish()
    }
}

/// What the store remembers across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// One past the highest segment id ever issued.
    pub next_segment_id: u64,
    pub quota_overrides: Vec<(String, Limits)>,
}

impl AuditLog {
    /// Opens (creating if needed) the database, applies migrations, starts the
    /// writer task, and returns the handle, the writer's join handle (it ends
    /// when every handle is dropped), and what was persisted.
    ///
    /// # Errors
    /// The database cannot be opened or migrated.
    pub async fn open(
        path: &Path,
    ) -> Result<(AuditLog, tokio::task::JoinHandle<()>, Restored), AuditError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let open_error = |source| AuditError::Open {
            path: path.display().to_string(),
            source: Arc::new(source),
        };
        let mut writer = SqliteConnection::connect_with(&options)
            .await
            .map_err(open_error)?;
        sqlx::migrate!("./migrations")
            .run(&mut writer)
            .await
            .map_err(|e| AuditError::Migrate(Arc::new(e)))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.read_only(true))
            .await
            .map_err(open_error)?;
        let restored = restore(&mut writer).await?;
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(write_loop(writer, queue));
        Ok((AuditLog { jobs, readers }, task, restored))
    }

    /// Persists `records` in the next group commit and waits for it.
    ///
    /// # Errors
    /// The commit failed or the writer is gone.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), AuditError> {
        let (done, committed) = oneshot::channel();
        self.jobs
            .send(Job { records, done })
            .await
            .map_err(|_| AuditError::WriterGone)?;
        committed.await.map_err(|_| AuditError::WriterGone)?
    }

    /// Persists one event.
    ///
    /// # Errors
    /// As [`AuditLog::commit`].
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        self.commit(vec![Record::Event(event)]).await
    }

    /// Events matching `query`, in id order.
    ///
    /// # Errors
    /// The read failed.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, AuditError> {
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT id, time_us, pid, uid, gid, tenant, action, resource, outcome, detail \
             FROM audit_events WHERE id > ",
        );
        sql.push_bind(to_i64(query.after_id));
        if let Some(since) = query.since {
            sql.push(" AND time_us >= ").push_bind(micros(since));
        }
        for (column, value) in &query.equals {
            sql.push(format_args!(" AND {column} = "))
                .push_bind(value.clone());
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows = sql.build().fetch_all(&self.readers).await?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    id: from_i64(row.try_get("id")?),
                    time: UNIX_EPOCH + Duration::from_micros(from_i64(row.try_get("time_us")?)),
                    pid: u32::try_from(row.try_get::<i64, _>("pid")?).unwrap_or_default(),
                    uid: u32::try_from(row.try_get::<i64, _>("uid")?).unwrap_or_default(),
                    gid: u32::try_from(row.try_get::<i64, _>("gid")?).unwrap_or_default(),
                    tenant: row.try_get("tenant")?,
                    action: row.try_get("action")?,
                    resource: row.try_get("resource")?,
                    outcome: Outcome::parse(row.try_get("outcome")?),
                    detail: row.try_get("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(AuditError::from)
    }

    /// Closes the readers; the writer ends when the last handle is dropped.
    pub async fn close(&self) {
        self.readers.close().await;
    }
}

async fn restore(conn: &mut SqliteConnection) -> Result<Restored, AuditError> {
    let max_id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM segments")
        .fetch_one(&mut *conn)
        .await?;
    let rows = sqlx::query("SELECT tenant, max_bytes, max_segments, max_segment_bytes FROM quota_overrides ORDER BY tenant")
        .fetch_all(&mut *conn)
        .await?;
    let limit = |row: &sqlx::sqlite::SqliteRow, column: &str| -> Result<Option<u64>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(from_i64))
    };
    let quota_overrides = rows
        .iter()
        .map(|row| {
            Ok((
                row.try_get("tenant")?,
                Limits {
                    max_bytes: limit(row, "max_bytes")?,
                    max_segments: limit(row, "max_segments")?,
                    max_segment_bytes: limit(row, "max_segment_bytes")?,
                },
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Restored {
        next_segment_id: max_id.map_or(1, |id| from_i64(id) + 1),
        quota_overrides,
    })
}

async fn write_loop(mut conn: SqliteConnection, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = write_batch(&mut conn, &batch).await;
        if let Err(error) = &result {
            tracing::error!(cause = %error, jobs = batch.len(), "audit commit failed");
        }
        for job in batch {
            // The requester may have gone; its outcome is already on disk.
            let _ = job.done.send(result.clone());
        }
    }
    if let Err(error) = conn.close().await {
        tracing::warn!(cause = %error, "closing the audit database");
    }
}

async fn write_batch(conn: &mut SqliteConnection, batch: &[Job]) -> Result<(), AuditError> {
    let mut tx = conn.begin().await?;
    for record in batch.iter().flat_map(|job| &job.records) {
        match record {
            Record::Event(e) => {
                sqlx::query(
                    "INSERT INTO audit_events (time_us, pid, uid, gid, tenant, action, resource, outcome, detail) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(micros(e.time))
                .bind(i64::from(e.pid))
                .bind(i64::from(e.uid))
                .bind(i64::from(e.gid))
                .bind(&e.tenant)
                .bind(e.action)
                .bind(&e.resource)
                .bind(e.outcome.as_str())
                .bind(&e.detail)
                .execute(&mut *tx)
                .await?;
            }
            Record::SegmentCreated(s) => {
                let (lifetime, ttl_ms) = match s.lifetime {
                    Lifetime::Persistent => ("persistent", 0),
                    Lifetime::OnLastDetach => ("on_last_detach", 0),
                    Lifetime::Owner => ("owner", 0),
                    Lifetime::Ttl { ttl_ms } => ("ttl", ttl_ms),
                };
                let mode = match s.mode {
                    SharingMode::ReadWrite => "read_write",
                    SharingMode::ReadOnlyForOthers => "read_only_for_others",
                };
                sqlx::query(
                    "INSERT INTO segments (id, name, tenant, size_bytes, mode, lifetime, ttl_ms, owner_pid, owner_uid, created_us) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(to_i64(s.id.0))
                .bind(&s.name)
                .bind(&s.tenant)
                .bind(to_i64(s.size_bytes))
                .bind(mode)
                .bind(lifetime)
                .bind(to_i64(ttl_ms))
                .bind(i64::from(s.owner_pid))
                .bind(i64::from(s.owner_uid))
                .bind(micros(s.created))
                .execute(&mut *tx)
                .await?;
            }
            Record::SegmentFreed { id, at } => {
                sqlx::query("UPDATE segments SET freed_us = ? WHERE id = ?")
                    .bind(micros(*at))
                    .bind(to_i64(*id))
                    .execute(&mut *tx)
                    .await?;
            }
            Record::QuotaOverride {
                tenant,
                limits: Some(limits),
            } => {
                sqlx::query(
                    "INSERT INTO quota_overrides (tenant, max_bytes, max_segments, max_segment_bytes, updated_us) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET \
                     max_bytes = excluded.max_bytes, max_segments = excluded.max_segments, \
                     max_segment_bytes = excluded.max_segment_bytes, updated_us = excluded.updated_us",
                )
                .bind(tenant)
                .bind(limits.max_bytes.map(to_i64))
                .bind(limits.max_segments.map(to_i64))
                .bind(limits.max_segment_bytes.map(to_i64))
                .bind(micros(SystemTime::now()))
                .execute(&mut *tx)
                .await?;
            }
            Record::QuotaOverride {
                tenant,
                limits: None,
            } => {
                sqlx::query("DELETE FROM quota_overrides WHERE tenant = ?")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// SQLite integers are i64; our counters never reach 2^63.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{SegmentId, SegmentState};

    fn caller() -> Caller {
        Caller {
            pid: 7,
            uid: 1000,
            gid: 1000,
            tenant: "uid-1000".into(),
            admin: false,
        }
    }

    fn segment(id: u64) -> SegmentRecord {
        SegmentRecord {
            id: SegmentId(id),
            name: Some("a".into()),
            tenant: "uid-1000".into(),
            size_bytes: 4096,
            mode: SharingMode::ReadWrite,
            lifetime: Lifetime::Ttl { ttl_ms: 5 },
            owner_pid: 7,
            owner_uid: 1000,
            state: SegmentState::Active,
            attachments: 1,
            created: SystemTime::now(),
            attached: None,
        }
    }

    #[tokio::test]
    async fn events_overrides_and_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let (sut, writer, restored) = AuditLog::open(&path).await.unwrap();
        assert_eq!(
            restored,
            Restored {
                next_segment_id: 1,
                quota_overrides: vec![]
            }
        );
        let limits = Limits {
            max_bytes: Some(10),
            max_segments: None,
            max_segment_bytes: Some(5),
        };
        sut.commit(vec![
            Record::Event(Event::new(
                &caller(),
                "segment.create",
                "segments/41",
                Outcome::Allowed,
                "size=4096",
            )),
            Record::SegmentCreated(segment(41)),
            Record::QuotaOverride {
                tenant: "uid-1000".into(),
                limits: Some(limits),
            },
            Record::QuotaOverride {
                tenant: "gone".into(),
                limits: Some(limits),
            },
            Record::QuotaOverride {
                tenant: "gone".into(),
                limits: None,
            },
        ])
        .await
        .unwrap();
        sut.close().await;
        drop(sut);
        writer.await.unwrap();

        let (sut, _writer, restored) = AuditLog::open(&path).await.unwrap();
        assert_eq!(restored.next_segment_id, 42);
        assert_eq!(
            restored.quota_overrides,
            vec![("uid-1000".to_owned(), limits)]
        );
        let events = sut
            .events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].action.as_str(), events[0].outcome, events[0].pid),
            ("segment.create", Outcome::Allowed, 7)
        );
    }

    #[tokio::test]
    async fn concurrent_commits_are_all_written_and_queries_filter_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let (sut, _writer, _) = AuditLog::open(&dir.path().join("audit.db")).await.unwrap();
        let commits = (0..200).map(|i| {
            let sut = sut.clone();
            let outcome = if i % 2 == 0 {
                Outcome::Allowed
            } else {
                Outcome::Denied
            };
            tokio::spawn(async move {
                sut.record(Event::new(
                    &caller(),
                    "segment.open",
                    format!("segments/{i}"),
                    outcome,
                    "",
                ))
                .await
            })
        });
        for commit in commits.collect::<Vec<_>>() {
            commit.await.unwrap().unwrap();
        }
        let denied = EventQuery {
            limit: 1000,
            equals: vec![("outcome", "DENIED".into())],
            ..EventQuery::default()
        };
        assert_eq!(sut.events(&denied).await.unwrap().len(), 100);
        let first_page = sut
            .events(&EventQuery {
                limit: 150,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let rest = sut
            .events(&EventQuery {
                after_id: first_page.last().unwrap().id,
                limit: 150,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        assert_eq!((first_page.len(), rest.len()), (150, 50));
        let future = EventQuery {
            limit: 10,
            since: Some(SystemTime::now() + Duration::from_secs(60)),
            ..EventQuery::default()
        };
        assert!(sut.events(&future).await.unwrap().is_empty());
    }
}
