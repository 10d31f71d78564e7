-- The append-only audit log: one row per decision of the agent.
CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time_us   INTEGER NOT NULL,          -- microseconds since the Unix epoch
    pid       INTEGER NOT NULL,
    uid       INTEGER NOT NULL,
    gid       INTEGER NOT NULL,
    tenant    TEXT    NOT NULL,
    action    TEXT    NOT NULL,          -- e.g. segment.create
    resource  TEXT    NOT NULL,          -- e.g. segments/42
    outcome   TEXT    NOT NULL CHECK (outcome IN ('ALLOWED', 'DENIED', 'FAILED')),
    detail    TEXT    NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (time_us);
CREATE INDEX audit_events_tenant ON audit_events (tenant, id);

-- Append-only guard: the log is never rewritten.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;

-- Per-tenant quota overrides set through the API; NULL limit = unlimited.
CREATE TABLE quota_overrides (
    tenant            TEXT PRIMARY KEY,
    max_bytes         INTEGER,
    max_segments      INTEGER,
    max_segment_bytes INTEGER,
    updated_us        INTEGER NOT NULL
);

-- Every segment ever created. Ids are never reused; freed_us marks the end.
CREATE TABLE segments (
    id          INTEGER PRIMARY KEY,
    name        TEXT,
    tenant      TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL,
    mode        TEXT    NOT NULL,
    lifetime    TEXT    NOT NULL,
    ttl_ms      INTEGER NOT NULL,
    owner_pid   INTEGER NOT NULL,
    owner_uid   INTEGER NOT NULL,
    created_us  INTEGER NOT NULL,
    freed_us    INTEGER
);
