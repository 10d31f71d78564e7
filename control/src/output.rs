//! Rendering results as table, wide, json or yaml.
//!
//! Generated proto types are mapped into the view structs here, which are
//! what json and yaml serialize: raw byte counts (`size_bytes`), enums as
//! their API names without the type prefix (`READ_WRITE`, `DRAINING`, as in
//! filters), times in RFC 3339 (UTC), absent times and unlimited quotas as
//! `null`. Tables show the same data for people: sizes as `4KiB`/`1.5MiB`,
//! enums in the spelling the flags take (`rw`, `on-last-detach`), times to
//! the second, `-` for nothing. No colors, ever.
//!
//! Watches print rows as they arrive: a table header once, then each row
//! in columns of fixed width (the rows to come are unknown, so they cannot
//! be measured); in json one compact object per line (JSON Lines); in yaml
//! one document per row.

use std::io::Write;
use std::iter;
use std::time::Duration;

use ipcplane_proto::v1::{
    Agent, AuditEvent, Client, Lifetime, Outcome, Quota, RingSpec, Segment, SegmentKind,
    SegmentState, SemaphoreSpec, SharingMode, Tenant, segment,
};
use prost_types::Timestamp;
use serde::{Serialize, Serializer};

use crate::Error;
use crate::cli::Format;
use crate::units::{format_duration, format_size, format_timestamp};

/// Where and how a command prints its result.
pub(crate) struct Output<'a> {
    format: Format,
    out: &'a mut dyn Write,
}

impl<'a> Output<'a> {
    pub(crate) fn new(format: Format, out: &'a mut dyn Write) -> Self {
        Output { format, out }
    }

    /// Prints a list: a table, or a JSON/YAML array.
    pub(crate) fn list<T: Row>(&mut self, rows: &[T]) -> Result<(), Error> {
        let text = render_list(self.format, rows)?;
        Ok(self.out.write_all(text.as_bytes())?)
    }

    /// Prints one resource: a one-row table, or a JSON/YAML object.
    pub(crate) fn one<T: Row>(&mut self, row: &T) -> Result<(), Error> {
        let text = render_one(self.format, row)?;
        Ok(self.out.write_all(text.as_bytes())?)
    }

    /// Starts a stream of rows: the table header, once; nothing in json and yaml.
    pub(crate) fn stream_header<T: Row>(&mut self) -> Result<(), Error> {
        if let Format::Table | Format::Wide = self.format {
            let header = T::COLUMNS.iter().map(|c| c.header.to_owned()).collect();
            let text = stream_line::<T>(header, self.format == Format::Wide);
            self.out.write_all(text.as_bytes())?;
        }
        Ok(self.out.flush()?)
    }

    /// Prints one row of a stream and flushes it, so it shows as it happens.
    pub(crate) fn stream_row<T: Row>(&mut self, row: &T) -> Result<(), Error> {
        let text = match self.format {
            Format::Table | Format::Wide => {
                let cells = row.cells().iter().map(|cell| printable(cell)).collect();
                stream_line::<T>(cells, self.format == Format::Wide)
            }
            Format::Json => serde_json::to_string(row).map_err(std::io::Error::other)? + "\n",
            Format::Yaml => format!("---\n{}", serialized(Format::Yaml, row)?),
        };
        self.out.write_all(text.as_bytes())?;
        Ok(self.out.flush()?)
    }

    /// Prints a health status: the bare word in table formats, else `{status: ...}`.
    pub(crate) fn health(&mut self, status: &str) -> Result<(), Error> {
        let text = match self.format {
            Format::Table | Format::Wide => format!("{status}\n"),
            format => serialized(format, &HealthView { status })?,
        };
        Ok(self.out.write_all(text.as_bytes())?)
    }
}

/// A view struct that can be a table row.
pub(crate) trait Row: Serialize {
    /// Every column, in display order.
    const COLUMNS: &'static [Column];
    /// One cell per entry of [`Row::COLUMNS`], in the same order.
    fn cells(&self) -> Vec<String>;
}

/// A table column.
#[derive(Debug)]
pub(crate) struct Column {
    header: &'static str,
    wide_only: bool,
    /// Width in a streamed table (see [`Column::streamed`]); 0 for the header's.
    stream_width: usize,
}

/// A column shown in both table and wide output.
const fn col(header: &'static str) -> Column {
    Column {
        header,
        wide_only: false,
        stream_width: 0,
    }
}

/// A column shown only in wide output.
const fn wide(header: &'static str) -> Column {
    Column {
        header,
        wide_only: true,
        stream_width: 0,
    }
}

impl Column {
    /// Pads the column to `width` when rows are printed as they come, wide
    /// enough for typical values; a longer value shifts the rest of its line.
    const fn streamed(self, width: usize) -> Column {
        Column {
            stream_width: width,
            ..self
        }
    }
}

fn render_list<T: Row>(format: Format, rows: &[T]) -> Result<String, Error> {
    match format {
        Format::Table => Ok(table(rows, false)),
        Format::Wide => Ok(table(rows, true)),
        Format::Json | Format::Yaml => serialized(format, rows),
    }
}

fn render_one<T: Row>(format: Format, row: &T) -> Result<String, Error> {
    match format {
        Format::Table | Format::Wide => render_list(format, std::slice::from_ref(row)),
        Format::Json | Format::Yaml => serialized(format, row),
    }
}

fn serialized<T: Serialize + ?Sized>(format: Format, value: &T) -> Result<String, Error> {
    let text = match format {
        Format::Yaml => serde_yaml::to_string(value).map_err(std::io::Error::other)?,
        _ => serde_json::to_string_pretty(value).map_err(std::io::Error::other)? + "\n",
    };
    Ok(text)
}

/// The cells of the columns shown in table (`wide` false) or wide output.
fn visible<T: Row>(cells: Vec<String>, wide: bool) -> Vec<String> {
    T::COLUMNS
        .iter()
        .zip(cells)
        .filter(|(column, _)| wide || !column.wide_only)
        .map(|(_, cell)| cell)
        .collect()
}

/// Aligned columns two spaces apart, a header row, no trailing spaces.
fn table<T: Row>(rows: &[T], wide: bool) -> String {
    let header = visible::<T>(
        T::COLUMNS
            .iter()
            .map(|column| column.header.to_owned())
            .collect(),
        wide,
    );
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            visible::<T>(
                row.cells()
                    .into_iter()
                    .map(|cell| printable(&cell))
                    .collect(),
                wide,
            )
        })
        .collect();
    let mut widths = vec![0; header.len()];
    for line in iter::once(&header).chain(&body) {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    iter::once(&header)
        .chain(&body)
        .map(|line| table_line(line, &widths))
        .collect()
}

/// One line of a streamed table: each column as wide as its header or its
/// stream width, whichever is more.
fn stream_line<T: Row>(cells: Vec<String>, wide: bool) -> String {
    let shown = T::COLUMNS.iter().filter(|column| wide || !column.wide_only);
    let widths: Vec<usize> = shown
        .map(|column| column.stream_width.max(column.header.chars().count()))
        .collect();
    table_line(&visible::<T>(cells, wide), &widths)
}

/// Cells padded to `widths`, two spaces apart, with no trailing spaces.
fn table_line(cells: &[String], widths: &[usize]) -> String {
    let mut rendered = String::new();
    for (cell, width) in cells.iter().zip(widths) {
        rendered.push_str(&format!("{cell:<width$}  "));
    }
    let mut line = rendered.trim_end().to_owned();
    line.push('\n');
    line
}

/// A cell on one line: `-` when empty, control characters as spaces.
fn printable(cell: &str) -> String {
    if cell.is_empty() {
        "-".to_owned()
    } else {
        cell.replace(char::is_control, " ")
    }
}

/// An enum's API name without its type prefix (`SEGMENT_STATE_ACTIVE` -> `ACTIVE`),
/// or the number for a value this build does not know.
fn api_name(known: Option<&'static str>, prefix: &str, value: i32) -> String {
    known.map_or_else(
        || value.to_string(),
        |name| name.strip_prefix(prefix).unwrap_or(name).to_owned(),
    )
}

/// An API name in the spelling of the CLI's flags (`ON_LAST_DETACH` -> `on-last-detach`).
fn flag_word(api_name: &str) -> String {
    api_name.to_ascii_lowercase().replace('_', "-")
}

fn sharing_mode_name(value: i32) -> String {
    let mode = match SharingMode::try_from(value) {
        Ok(SharingMode::Unspecified) => Some(SharingMode::ReadWrite),
        other => other.ok(),
    };
    api_name(mode.map(|mode| mode.as_str_name()), "SHARING_MODE_", value)
}

/// A size as [`format_size`] shows it when that is exact (`4KiB`), else in
/// bytes (`2040B`, not `2.0KiB`): a ring's limits must read exactly.
fn exact_size(bytes: u64) -> String {
    let shown = format_size(bytes);
    if shown.contains('.') {
        format!("{bytes}B")
    } else {
        shown
    }
}

fn kind_name(value: i32) -> String {
    let kind = match SegmentKind::try_from(value) {
        Ok(SegmentKind::Unspecified) => Some(SegmentKind::Plain),
        other => other.ok(),
    };
    api_name(kind.map(|kind| kind.as_str_name()), "SEGMENT_KIND_", value)
}

fn lifetime_name(value: i32) -> String {
    let lifetime = match Lifetime::try_from(value) {
        Ok(Lifetime::Unspecified) => Some(Lifetime::Persistent),
        other => other.ok(),
    };
    api_name(
        lifetime.map(|lifetime| lifetime.as_str_name()),
        "LIFETIME_",
        value,
    )
}

fn state_name(value: i32) -> String {
    let state = SegmentState::try_from(value).ok();
    api_name(
        state.map(|state| state.as_str_name()),
        "SEGMENT_STATE_",
        value,
    )
}

fn outcome_name(value: i32) -> String {
    let outcome = Outcome::try_from(value).ok();
    api_name(
        outcome.map(|outcome| outcome.as_str_name()),
        "OUTCOME_",
        value,
    )
}

/// Serializes an optional timestamp as RFC 3339, or null.
fn rfc3339<S: Serializer>(time: &Option<Timestamp>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&format_timestamp(time)),
        None => serializer.serialize_none(),
    }
}

/// A time for a table: RFC 3339 to the second, or empty.
fn table_time(time: Option<&Timestamp>) -> String {
    time.map_or_else(String::new, |time| {
        format_timestamp(&Timestamp {
            seconds: time.seconds,
            nanos: 0,
        })
    })
}

fn table_size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unlimited".to_owned(), format_size)
}

fn table_count(count: Option<u64>) -> String {
    count.map_or_else(|| "unlimited".to_owned(), |count| count.to_string())
}

/// A segment as `ipcctl` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct SegmentView {
    id: u64,
    name: String,
    tenant: String,
    kind: String,
    /// A ring's parameters; `null` for other kinds.
    ring: Option<RingView>,
    /// A semaphore's parameters; `null` for other kinds.
    semaphore: Option<SemaphoreView>,
    size_bytes: u64,
    mode: String,
    lifetime: String,
    /// Set for TTL segments only.
    ttl_ms: Option<u64>,
    owner_pid: u32,
    owner_uid: u32,
    state: String,
    attachment_count: u32,
    #[serde(serialize_with = "rfc3339")]
    create_time: Option<Timestamp>,
    #[serde(serialize_with = "rfc3339")]
    attach_time: Option<Timestamp>,
}

/// A ring's parameters.
#[derive(Debug, Serialize)]
struct RingView {
    capacity_bytes: u64,
    max_message_bytes: u64,
    producers: u32,
}

/// A semaphore's parameters.
#[derive(Debug, Serialize)]
struct SemaphoreView {
    initial_value: u32,
}

impl From<Segment> for SegmentView {
    fn from(segment: Segment) -> Self {
        let lifetime = lifetime_name(segment.lifetime);
        let (ring, semaphore) = match segment.layout {
            Some(segment::Layout::Ring(RingSpec {
                capacity_bytes,
                max_message_bytes,
                producers,
            })) => (
                Some(RingView {
                    capacity_bytes,
                    max_message_bytes,
                    producers,
                }),
                None,
            ),
            Some(segment::Layout::Semaphore(SemaphoreSpec { initial_value })) => {
                (None, Some(SemaphoreView { initial_value }))
            }
            None => (None, None),
        };
        SegmentView {
            id: segment.id,
            name: segment.name,
            tenant: segment.tenant,
            kind: kind_name(segment.kind),
            ring,
            semaphore,
            size_bytes: segment.size_bytes,
            mode: sharing_mode_name(segment.mode),
            ttl_ms: (lifetime == "TTL").then_some(segment.ttl_ms),
            lifetime,
            owner_pid: segment.owner_pid,
            owner_uid: segment.owner_uid,
            state: state_name(segment.state),
            attachment_count: segment.attachment_count,
            create_time: segment.create_time,
            attach_time: segment.attach_time,
        }
    }
}

impl Row for SegmentView {
    const COLUMNS: &'static [Column] = &[
        col("ID"),
        col("NAME"),
        col("TENANT"),
        col("KIND"),
        col("SIZE"),
        wide("PARAMS"),
        wide("MODE"),
        col("LIFETIME"),
        wide("TTL"),
        col("STATE"),
        col("ATTACHED"),
        wide("OWNER_PID"),
        wide("OWNER_UID"),
        col("CREATED"),
        wide("LAST_ATTACHED"),
    ];

    fn cells(&self) -> Vec<String> {
        let mode = match self.mode.as_str() {
            "READ_WRITE" => "rw".to_owned(),
            "READ_ONLY_FOR_OTHERS" => "ro-others".to_owned(),
            other => flag_word(other),
        };
        let params = match (&self.ring, &self.semaphore) {
            (Some(ring), _) => format!(
                "capacity={},max_message={},producers={}",
                exact_size(ring.capacity_bytes),
                exact_size(ring.max_message_bytes),
                ring.producers
            ),
            (None, Some(semaphore)) => format!("initial={}", semaphore.initial_value),
            (None, None) => String::new(),
        };
        vec![
            self.id.to_string(),
            self.name.clone(),
            self.tenant.clone(),
            flag_word(&self.kind),
            format_size(self.size_bytes),
            params,
            mode,
            flag_word(&self.lifetime),
            self.ttl_ms
                .map_or_else(String::new, |ms| format_duration(Duration::from_millis(ms))),
            flag_word(&self.state),
            self.attachment_count.to_string(),
            self.owner_pid.to_string(),
            self.owner_uid.to_string(),
            table_time(self.create_time.as_ref()),
            table_time(self.attach_time.as_ref()),
        ]
    }
}

/// A tenant's limits (`null` = unlimited) and usage.
#[derive(Debug, Serialize)]
pub(crate) struct QuotaView {
    tenant: String,
    max_bytes: Option<u64>,
    max_segments: Option<u64>,
    max_segment_bytes: Option<u64>,
    used_bytes: u64,
    used_segments: u64,
    overridden: bool,
}

impl From<Quota> for QuotaView {
    fn from(quota: Quota) -> Self {
        QuotaView {
            tenant: quota.tenant,
            max_bytes: quota.max_bytes,
            max_segments: quota.max_segments,
            max_segment_bytes: quota.max_segment_bytes,
            used_bytes: quota.used_bytes,
            used_segments: quota.used_segments,
            overridden: quota.overridden,
        }
    }
}

impl Row for QuotaView {
    const COLUMNS: &'static [Column] = &[
        col("TENANT"),
        col("USED_BYTES"),
        col("MAX_BYTES"),
        col("USED_SEGMENTS"),
        col("MAX_SEGMENTS"),
        col("MAX_SEGMENT_BYTES"),
        col("OVERRIDDEN"),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.tenant.clone(),
            format_size(self.used_bytes),
            table_size(self.max_bytes),
            self.used_segments.to_string(),
            table_count(self.max_segments),
            table_size(self.max_segment_bytes),
            self.overridden.to_string(),
        ]
    }
}

/// A tenant with its effective quota and usage.
#[derive(Debug, Serialize)]
pub(crate) struct TenantView {
    name: String,
    client_count: u64,
    quota: Option<QuotaView>,
}

impl From<Tenant> for TenantView {
    fn from(tenant: Tenant) -> Self {
        TenantView {
            name: tenant.name,
            client_count: tenant.client_count,
            quota: tenant.quota.map(QuotaView::from),
        }
    }
}

impl Row for TenantView {
    const COLUMNS: &'static [Column] = &[
        col("NAME"),
        col("CLIENTS"),
        col("SEGMENTS"),
        col("BYTES"),
        wide("MAX_SEGMENTS"),
        wide("MAX_BYTES"),
        wide("MAX_SEGMENT_BYTES"),
        wide("OVERRIDDEN"),
    ];

    fn cells(&self) -> Vec<String> {
        let mut cells = vec![self.name.clone(), self.client_count.to_string()];
        match &self.quota {
            Some(quota) => cells.extend([
                quota.used_segments.to_string(),
                format_size(quota.used_bytes),
                table_count(quota.max_segments),
                table_size(quota.max_bytes),
                table_size(quota.max_segment_bytes),
                quota.overridden.to_string(),
            ]),
            None => cells.extend(iter::repeat_n(String::new(), 6)),
        }
        cells
    }
}

/// A process connected to the grant socket.
#[derive(Debug, Serialize)]
pub(crate) struct ClientView {
    id: u64,
    pid: u32,
    uid: u32,
    gid: u32,
    tenant: String,
    #[serde(serialize_with = "rfc3339")]
    connect_time: Option<Timestamp>,
    attachment_count: u32,
}

impl From<Client> for ClientView {
    fn from(client: Client) -> Self {
        ClientView {
            id: client.id,
            pid: client.pid,
            uid: client.uid,
            gid: client.gid,
            tenant: client.tenant,
            connect_time: client.connect_time,
            attachment_count: client.attachment_count,
        }
    }
}

impl Row for ClientView {
    const COLUMNS: &'static [Column] = &[
        col("ID"),
        col("PID"),
        col("UID"),
        wide("GID"),
        col("TENANT"),
        col("ATTACHMENTS"),
        col("CONNECTED"),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.pid.to_string(),
            self.uid.to_string(),
            self.gid.to_string(),
            self.tenant.clone(),
            self.attachment_count.to_string(),
            table_time(self.connect_time.as_ref()),
        ]
    }
}

/// One decision of the agent.
#[derive(Debug, Serialize)]
pub(crate) struct AuditEventView {
    id: u64,
    #[serde(serialize_with = "rfc3339")]
    time: Option<Timestamp>,
    pid: u32,
    uid: u32,
    gid: u32,
    tenant: String,
    action: String,
    resource: String,
    outcome: String,
    detail: String,
}

impl From<AuditEvent> for AuditEventView {
    fn from(event: AuditEvent) -> Self {
        AuditEventView {
            id: event.id,
            time: event.time,
            pid: event.pid,
            uid: event.uid,
            gid: event.gid,
            tenant: event.tenant,
            action: event.action,
            resource: event.resource,
            outcome: outcome_name(event.outcome),
            detail: event.detail,
        }
    }
}

impl Row for AuditEventView {
    const COLUMNS: &'static [Column] = &[
        col("ID").streamed(6),
        col("TIME").streamed(20),
        wide("PID").streamed(7),
        wide("UID").streamed(5),
        wide("GID").streamed(5),
        col("TENANT").streamed(10),
        col("ACTION").streamed(17),
        col("RESOURCE").streamed(13),
        col("OUTCOME"),
        col("DETAIL"),
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            table_time(self.time.as_ref()),
            self.pid.to_string(),
            self.uid.to_string(),
            self.gid.to_string(),
            self.tenant.clone(),
            self.action.clone(),
            self.resource.clone(),
            flag_word(&self.outcome),
            self.detail.clone(),
        ]
    }
}

/// The running agent.
#[derive(Debug, Serialize)]
pub(crate) struct AgentView {
    version: String,
    pid: u32,
    #[serde(serialize_with = "rfc3339")]
    start_time: Option<Timestamp>,
    uptime_ms: Option<u64>,
    protocol_version: u32,
    segment_count: u64,
    client_count: u64,
    tenant_count: u64,
    total_bytes: u64,
    grant_socket: String,
    database: String,
}

impl From<Agent> for AgentView {
    fn from(agent: Agent) -> Self {
        let uptime = agent
            .uptime
            .and_then(|uptime| Duration::try_from(uptime).ok());
        AgentView {
            version: agent.version,
            pid: agent.pid,
            start_time: agent.start_time,
            uptime_ms: uptime.map(|uptime| u64::try_from(uptime.as_millis()).unwrap_or(u64::MAX)),
            protocol_version: agent.protocol_version,
            segment_count: agent.segment_count,
            client_count: agent.client_count,
            tenant_count: agent.tenant_count,
            total_bytes: agent.total_bytes,
            grant_socket: agent.grant_socket,
            database: agent.database,
        }
    }
}

impl Row for AgentView {
    const COLUMNS: &'static [Column] = &[
        col("VERSION"),
        col("PID"),
        wide("PROTOCOL"),
        wide("STARTED"),
        col("UPTIME"),
        col("SEGMENTS"),
        col("CLIENTS"),
        col("TENANTS"),
        col("BYTES"),
        wide("GRANT_SOCKET"),
        wide("DATABASE"),
    ];

    fn cells(&self) -> Vec<String> {
        // Uptime to the second: milliseconds are noise here.
        let uptime = self.uptime_ms.map_or_else(String::new, |ms| {
            format_duration(Duration::from_secs(ms / 1000))
        });
        vec![
            self.version.clone(),
            self.pid.to_string(),
            self.protocol_version.to_string(),
            table_time(self.start_time.as_ref()),
            uptime,
            self.segment_count.to_string(),
            self.client_count.to_string(),
            self.tenant_count.to_string(),
            format_size(self.total_bytes),
            self.grant_socket.clone(),
            self.database.clone(),
        ]
    }
}

/// `agent health` in json and yaml.
#[derive(Debug, Serialize)]
struct HealthView<'a> {
    status: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_segment() -> Segment {
        Segment {
            id: 42,
            name: "frames".into(),
            tenant: "uid-1000".into(),
            size_bytes: 4 << 20,
            mode: SharingMode::ReadOnlyForOthers as i32,
            lifetime: Lifetime::Ttl as i32,
            ttl_ms: 30_000,
            owner_pid: 4242,
            owner_uid: 1000,
            state: SegmentState::Active as i32,
            attachment_count: 2,
            create_time: Some(Timestamp {
                seconds: 1_714_557_600,
                nanos: 123_000_000,
            }),
            attach_time: None,
            kind: SegmentKind::Plain as i32,
            layout: None,
        }
    }

    fn unnamed_segment() -> Segment {
        Segment {
            id: 7,
            size_bytes: 3 << 19,
            state: SegmentState::Draining as i32,
            tenant: "payments".into(),
            ..Segment::default()
        }
    }

    fn render(format: Format, rows: &[SegmentView]) -> String {
        render_list(format, rows).unwrap()
    }

    #[test]
    fn segments_render_as_an_aligned_table() {
        let rows = [
            SegmentView::from(sample_segment()),
            SegmentView::from(unnamed_segment()),
        ];
        assert_eq!(
            render(Format::Table, &rows),
            "\
ID  NAME    TENANT    KIND   SIZE    LIFETIME    STATE     ATTACHED  CREATED
42  frames  uid-1000  plain  4MiB    ttl         active    2         2024-05-01T10:00:00Z
7   -       payments  plain  1.5MiB  persistent  draining  0         -
"
        );
    }

    #[test]
    fn wide_tables_add_columns() {
        let rows = [SegmentView::from(sample_segment())];
        assert_eq!(
            render(Format::Wide, &rows),
            "\
ID  NAME    TENANT    KIND   SIZE  PARAMS  MODE       LIFETIME  TTL  STATE   ATTACHED  OWNER_PID  OWNER_UID  CREATED               LAST_ATTACHED
42  frames  uid-1000  plain  4MiB  -       ro-others  ttl       30s  active  2         4242       1000       2024-05-01T10:00:00Z  -
"
        );
    }

    #[test]
    fn empty_lists_render_a_header_or_an_empty_array() {
        assert_eq!(
            render(Format::Table, &[]),
            "ID  NAME  TENANT  KIND  SIZE  LIFETIME  STATE  ATTACHED  CREATED\n"
        );
        assert_eq!(render(Format::Json, &[]), "[]\n");
        assert_eq!(render(Format::Yaml, &[]), "[]\n");
    }

    #[test]
    fn one_segment_renders_as_a_json_object_with_raw_values() {
        let text = render_one(Format::Json, &SegmentView::from(sample_segment())).unwrap();
        let sut: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            sut,
            serde_json::json!({
                "id": 42,
                "name": "frames",
                "tenant": "uid-1000",
                "kind": "PLAIN",
                "ring": null,
                "semaphore": null,
                "size_bytes": 4_194_304,
                "mode": "READ_ONLY_FOR_OTHERS",
                "lifetime": "TTL",
                "ttl_ms": 30_000,
                "owner_pid": 4242,
                "owner_uid": 1000,
                "state": "ACTIVE",
                "attachment_count": 2,
                "create_time": "2024-05-01T10:00:00.123Z",
                "attach_time": null,
            })
        );
        assert!(text.starts_with("{\n  \"id\": 42,"), "not pretty: {text}");
    }

    #[test]
    fn rings_and_semaphores_show_their_kind_and_parameters() {
        let ring = Segment {
            kind: SegmentKind::Ring as i32,
            layout: Some(segment::Layout::Ring(RingSpec {
                capacity_bytes: 64 << 10,
                max_message_bytes: 2040,
                producers: 2,
            })),
            ..sample_segment()
        };
        let semaphore = Segment {
            id: 43,
            kind: SegmentKind::Semaphore as i32,
            layout: Some(segment::Layout::Semaphore(SemaphoreSpec {
                initial_value: 3,
            })),
            ..unnamed_segment()
        };
        let rows = [SegmentView::from(ring), SegmentView::from(semaphore)];

        let wide = render(Format::Wide, &rows);
        let json: serde_json::Value = serde_json::from_str(&render(Format::Json, &rows)).unwrap();

        assert!(
            wide.contains("  ring       4MiB    capacity=64KiB,max_message=2040B,producers=2  "),
            "{wide}"
        );
        assert!(wide.contains("  semaphore  1.5MiB  initial=3  "), "{wide}");
        assert_eq!(json[0]["kind"], "RING");
        assert_eq!(
            json[0]["ring"],
            serde_json::json!({"capacity_bytes": 65536, "max_message_bytes": 2040, "producers": 2})
        );
        assert_eq!(json[0]["semaphore"], serde_json::Value::Null);
        assert_eq!(json[1]["kind"], "SEMAPHORE");
        assert_eq!(json[1]["semaphore"]["initial_value"], 3);
    }

    #[test]
    fn lists_render_as_json_arrays_and_unspecified_enums_as_their_defaults() {
        let text = render(Format::Json, &[SegmentView::from(unnamed_segment())]);
        let sut: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(sut[0]["mode"], "READ_WRITE");
        assert_eq!(sut[0]["lifetime"], "PERSISTENT");
        assert_eq!(sut[0]["ttl_ms"], serde_json::Value::Null);
        assert_eq!(sut[0]["state"], "DRAINING");
        assert_eq!(sut.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn one_segment_renders_as_yaml() {
        let text = render_one(Format::Yaml, &SegmentView::from(sample_segment())).unwrap();
        assert!(text.starts_with("id: 42\nname: frames\n"), "{text}");
        assert!(text.contains("size_bytes: 4194304\n"), "{text}");
        assert!(
            text.contains("create_time: 2024-05-01T10:00:00.123Z\n"),
            "{text}"
        );
        assert!(text.contains("attach_time: null\n"), "{text}");
    }

    #[test]
    fn enum_values_unknown_to_this_build_show_their_number() {
        let segment = Segment {
            mode: 9,
            lifetime: 8,
            state: 7,
            ..Segment::default()
        };
        let sut = SegmentView::from(segment);
        assert_eq!(
            (sut.mode.as_str(), sut.lifetime.as_str(), sut.state.as_str()),
            ("9", "8", "7")
        );
    }

    #[test]
    fn quotas_show_unlimited_in_tables_and_null_in_json() {
        let quota = Quota {
            tenant: "uid-1000".into(),
            max_bytes: Some(1 << 30),
            max_segments: None,
            max_segment_bytes: Some(64 << 20),
            used_bytes: 3 << 19,
            used_segments: 3,
            overridden: true,
        };
        let table = render_one(Format::Table, &QuotaView::from(quota.clone())).unwrap();
        assert_eq!(
            table,
            "\
TENANT    USED_BYTES  MAX_BYTES  USED_SEGMENTS  MAX_SEGMENTS  MAX_SEGMENT_BYTES  OVERRIDDEN
uid-1000  1.5MiB      1GiB       3              unlimited     64MiB              true
"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_one(Format::Json, &QuotaView::from(quota)).unwrap())
                .unwrap();
        assert_eq!(json["max_segments"], serde_json::Value::Null);
        assert_eq!(json["max_bytes"], 1_073_741_824);
    }

    #[test]
    fn audit_details_stay_on_one_line() {
        let event = AuditEvent {
            id: 1,
            tenant: "uid-1000".into(),
            action: "segment.create".into(),
            resource: "segments/42".into(),
            outcome: Outcome::Denied as i32,
            detail: "quota exceeded:\nmax_bytes".into(),
            ..AuditEvent::default()
        };
        let table = render_list(Format::Table, &[AuditEventView::from(event)]).unwrap();
        assert_eq!(
            table,
            "\
ID  TIME  TENANT    ACTION          RESOURCE     OUTCOME  DETAIL
1   -     uid-1000  segment.create  segments/42  denied   quota exceeded: max_bytes
"
        );
    }

    fn streamed(format: Format, events: &[AuditEvent]) -> String {
        let mut buffer = Vec::new();
        let mut sut = Output::new(format, &mut buffer);
        sut.stream_header::<AuditEventView>().unwrap();
        for event in events {
            sut.stream_row(&AuditEventView::from(event.clone()))
                .unwrap();
        }
        String::from_utf8(buffer).unwrap()
    }

    fn sample_events() -> [AuditEvent; 2] {
        let event = |id, action: &str, outcome: Outcome| AuditEvent {
            id,
            time: Some(Timestamp {
                seconds: 1_714_557_600,
                nanos: 5_000,
            }),
            pid: 4242,
            tenant: "uid-1000".into(),
            action: action.into(),
            resource: "segments/42".into(),
            outcome: outcome as i32,
            ..AuditEvent::default()
        };
        [
            event(7, "segment.create", Outcome::Allowed),
            AuditEvent {
                detail: "not yours".into(),
                ..event(8, "segment.delete", Outcome::Denied)
            },
        ]
    }

    #[test]
    fn streamed_events_line_up_under_one_header_without_knowing_later_rows() {
        assert_eq!(
            streamed(Format::Table, &sample_events()),
            "\
ID      TIME                  TENANT      ACTION             RESOURCE       OUTCOME  DETAIL
7       2024-05-01T10:00:00Z  uid-1000    segment.create     segments/42    allowed  -
8       2024-05-01T10:00:00Z  uid-1000    segment.delete     segments/42    denied   not yours
"
        );
        let wide = streamed(Format::Wide, &sample_events()[..1]);
        assert!(
            wide.lines()
                .nth(1)
                .unwrap()
                .starts_with("7       2024-05-01T10:00:00Z  4242     0      0      uid-1000"),
            "{wide}"
        );
    }

    #[test]
    fn streamed_events_are_json_lines_with_the_fields_of_audit_list() {
        let text = streamed(Format::Json, &sample_events());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let listed: serde_json::Value = serde_json::from_str(
            &render_list(
                Format::Json,
                &[AuditEventView::from(sample_events()[0].clone())],
            )
            .unwrap(),
        )
        .unwrap();
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first, listed[0]);
        assert_eq!(first["time"], "2024-05-01T10:00:00.000005Z");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(lines[1]).unwrap()["outcome"],
            "DENIED"
        );
    }

    #[test]
    fn streamed_events_are_yaml_documents() {
        let text = streamed(Format::Yaml, &sample_events());
        assert!(text.starts_with("---\nid: 7\n"), "{text}");
        assert_eq!(text.matches("---\n").count(), 2, "{text}");
    }

    #[test]
    fn agent_uptime_shows_to_the_second_in_tables_and_in_ms_in_json() {
        let agent = Agent {
            version: "0.1.0".into(),
            pid: 99,
            uptime: Some(prost_types::Duration {
                seconds: 3_725,
                nanos: 900_000_000,
            }),
            total_bytes: 1 << 20,
            ..Agent::default()
        };
        let table = render_one(Format::Table, &AgentView::from(agent.clone())).unwrap();
        assert_eq!(
            table,
            "\
VERSION  PID  UPTIME  SEGMENTS  CLIENTS  TENANTS  BYTES
0.1.0    99   1h2m5s  0         0        0        1MiB
"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_one(Format::Json, &AgentView::from(agent)).unwrap())
                .unwrap();
        assert_eq!(json["uptime_ms"], 3_725_900);
    }

    #[test]
    fn tenants_show_usage_in_tables_and_limits_in_wide_ones() {
        let quota = Quota {
            tenant: "payments".into(),
            max_bytes: Some(1 << 30),
            used_bytes: 1 << 20,
            used_segments: 2,
            ..Quota::default()
        };
        let tenants = [
            TenantView::from(Tenant {
                name: "payments".into(),
                quota: Some(quota),
                client_count: 3,
            }),
            TenantView::from(Tenant {
                name: "uid-0".into(),
                quota: None,
                client_count: 0,
            }),
        ];
        assert_eq!(
            render_list(Format::Table, &tenants).unwrap(),
            "\
NAME      CLIENTS  SEGMENTS  BYTES
payments  3        2         1MiB
uid-0     0        -         -
"
        );
        assert_eq!(
            render_list(Format::Wide, &tenants).unwrap(),
            "\
NAME      CLIENTS  SEGMENTS  BYTES  MAX_SEGMENTS  MAX_BYTES  MAX_SEGMENT_BYTES  OVERRIDDEN
payments  3        2         1MiB   unlimited     1GiB       unlimited          false
uid-0     0        -         -      -             -          -                  -
"
        );
    }

    #[test]
    fn health_prints_the_bare_status_or_an_object() {
        let mut buffer = Vec::new();
        Output::new(Format::Table, &mut buffer)
            .health("SERVING")
            .unwrap();
        Output::new(Format::Json, &mut buffer)
            .health("NOT_SERVING")
            .unwrap();
        Output::new(Format::Yaml, &mut buffer)
            .health("SERVING")
            .unwrap();
        assert_eq!(
            String::from_utf8(buffer).unwrap(),
            "SERVING\n{\n  \"status\": \"NOT_SERVING\"\n}\nstatus: SERVING\n"
        );
    }
}
