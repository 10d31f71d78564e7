//! The command line: `ipcctl [GLOBAL FLAGS] <noun> <verb> [ARGS]`, as clap derive types.
//!
//! Parse with [`Cli::try_parse_args`], which also runs the checks clap cannot
//! express, so every usage error comes out of clap with exit code 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::ArgPredicate;
use clap::error::ErrorKind;
use clap::{ArgAction, ArgGroup, Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::units::{self, Limit, Since};

/// `--help` text listing the exit codes; kept in step with [`crate::Error::exit_code`].
const EXIT_CODES: &str = "\
Exit codes:
   0  success
   1  any other error
   2  usage error: bad flags or arguments, including requests the agent rejects as INVALID_ARGUMENT
   3  not found
   4  permission denied: by the agent (or unauthenticated), or on the control socket
   5  quota exceeded
   6  already exists, or the resource is in the wrong state (failed precondition)
  69  agent unavailable: cannot connect, UNAVAILABLE, no answer within --timeout, not SERVING,
      or the agent ended a watch (a watch stopped by Ctrl-C or SIGTERM exits 0)

Sizes are bytes with an optional binary unit: 4096, 4K or 4KiB, 64MiB, 2GiB, 1TiB (any case).
Durations are like 500ms, 30s, 10m, 1h30m, 2d. Output goes to stdout, errors to stderr.";

/// Help heading of the flags every command takes.
const GLOBAL: &str = "Global Options";

/// The ipcplane admin CLI: inspect and manage an ipcplane agent over its control socket.
#[derive(Debug, Parser)]
#[command(name = "ipcctl", version, after_help = EXIT_CODES, color = clap::ColorChoice::Never)]
pub struct Cli {
    /// Control socket of the agent [default: $IPCPLANE_CONTROL_SOCKET, else
    /// control.sock in $IPCPLANE_RUNTIME_DIR; else, for non-root users, in
    /// their own agent's runtime directory if it has one, else in /run/ipcplane]
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    pub socket: Option<PathBuf>,

    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table,
          help_heading = GLOBAL)]
    pub output: Format,

    /// Give up if the agent has not answered within this long (whole command;
    /// for a watch, until its events start)
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s",
          value_parser = units::parse_duration, help_heading = GLOBAL)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `args` (program name first) and checks what clap's derive cannot.
    ///
    /// # Errors
    /// A clap error for `--help`/`--version` (exit code 0) or for bad usage
    /// (exit code 2); print it with [`clap::Error::exit`].
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        if let Command::Segment(SegmentCommand::Create(create)) = &cli.command
            && let (Some(lifetime), Some(_)) = (create.lifetime, create.ttl)
            && lifetime != LifetimeArg::Ttl
        {
            let message = format!(
                "--ttl applies only to --lifetime ttl, not --lifetime {}",
                lifetime
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_owned())
            );
            return Err(subcommand_error(
                &["segment", "create"],
                ErrorKind::ArgumentConflict,
                message,
            ));
        }
        Ok(cli)
    }
}

/// A usage error shown with the usage line of the subcommand at `path`.
fn subcommand_error(path: &[&str], kind: ErrorKind, message: String) -> clap::Error {
    let mut command = Cli::command();
    // Building sets the subcommands' full names for their usage lines.
    command.build();
    match path.iter().try_fold(&mut command, |parent, name| {
        parent.find_subcommand_mut(name)
    }) {
        Some(subcommand) => subcommand.error(kind, message),
        None => Cli::command().error(kind, message),
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns with a header row
    Table,
    /// Like table, with more columns
    Wide,
    /// Pretty JSON: an array for lists, an object for one resource; raw byte
    /// counts and RFC 3339 times
    Json,
    /// YAML with the same fields as json
    Yaml,
}

/// What to act on.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Shared-memory segments
    #[command(subcommand)]
    Segment(SegmentCommand),
    /// Per-tenant quotas
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Processes connected to the agent's grant socket
    #[command(subcommand)]
    Client(ClientCommand),
    /// Tenants known to the agent
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The agent's audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The agent itself
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Print audit events as they happen, one line each, until interrupted
    Watch(WatchArgs),
}

/// Paging and filtering shared by every `list` verb.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Raw AIP-160 filter, ANDed with the other filter flags
    /// (e.g. 'state = "DRAINING"')
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,

    /// Results per request, 1-1000 [default: the agent's, 100]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,

    /// Fetch every page; --all-pages=false fetches one page and prints the
    /// token for the next on stderr
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub all_pages: bool,

    /// Continue from this page token
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,

    /// Print at most this many results
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

/// `ipcctl segment ...`
#[derive(Debug, Subcommand)]
pub enum SegmentCommand {
    /// List segments (ascending id)
    List(SegmentListArgs),
    /// Show one segment
    Get(SegmentGetArgs),
    /// Pre-provision a segment (processes then open it by name or id)
    Create(SegmentCreateArgs),
    /// Delete segments; one still attached stays DRAINING until its last detach
    Delete(SegmentDeleteArgs),
    /// List orphans (owner exited, unattached past the tenant's grace); with --force, delete them
    Purge(SegmentPurgeArgs),
}

/// `ipcctl segment list`
#[derive(Debug, Args)]
pub struct SegmentListArgs {
    /// Only segments of this tenant
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only the segment with this name
    #[arg(long)]
    pub name: Option<String>,
    /// Only segments created by this process
    #[arg(long, value_name = "PID")]
    pub owner_pid: Option<u32>,
    /// Only segments of this kind
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Then keep printing segment events (create, open, detach, delete, ...;
    /// of --tenant if given) as they happen, until interrupted
    #[arg(short, long)]
    pub watch: bool,
    #[command(flatten)]
    pub list: ListArgs,
}

/// `ipcctl segment get`
#[derive(Debug, Args)]
pub struct SegmentGetArgs {
    /// Segment id (`42` or `segments/42`)
    #[arg(value_parser = parse_segment_id)]
    pub id: u64,
}

/// `ipcctl segment create`
#[derive(Debug, Args)]
pub struct SegmentCreateArgs {
    /// Name, unique within the tenant [default: unnamed]
    #[arg(long)]
    pub name: Option<String>,
    /// Size, e.g. 4096, 64KiB, 4MiB (a ring, semaphore or event takes the
    /// size it needs)
    #[arg(long, allow_hyphen_values = true, value_parser = units::parse_size,
          required_unless_present_any = ["ring_capacity", "semaphore", "event"])]
    pub size: Option<u64>,
    /// Who besides the creator may write [default: rw]
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// When the agent deletes it on its own [default: persistent, or ttl with --ttl]
    #[arg(
        long,
        value_enum,
        default_value_if("ttl", ArgPredicate::IsPresent, "ttl")
    )]
    pub lifetime: Option<LifetimeArg>,
    /// How long a ttl segment may stay unattached, e.g. 30s, 10m
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration,
          required_if_eq("lifetime", "ttl"))]
    pub ttl: Option<Duration>,
    /// Tenant to charge [default: your own; others need admin]
    #[arg(long)]
    pub tenant: Option<String>,
    /// Make a message ring whose producer lanes hold this many bytes each
    /// (a power of two, at least 256), e.g. 64KiB
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = units::parse_size,
          conflicts_with_all = ["semaphore", "event"], help_heading = "Kinds")]
    pub ring_capacity: Option<u64>,
    /// The ring's largest message [default: the most its capacity allows]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = units::parse_size,
          requires = "ring_capacity", help_heading = "Kinds")]
    pub max_message: Option<u64>,
    /// How many producers the ring takes at once, 1 to 64 [default: 1]
    #[arg(
        long,
        value_name = "N",
        requires = "ring_capacity",
        help_heading = "Kinds"
    )]
    pub producers: Option<u32>,
    /// Make a counting semaphore with this many units to start with
    #[arg(
        long,
        value_name = "UNITS",
        conflicts_with = "event",
        help_heading = "Kinds"
    )]
    pub semaphore: Option<u32>,
    /// Make an event (notify one or all waiters)
    #[arg(long, help_heading = "Kinds")]
    pub event: bool,
}

/// `--kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Bytes only
    Plain,
    /// A message ring
    Ring,
    /// A counting semaphore
    Semaphore,
    /// An event
    Event,
}

/// `--mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Every process of the tenant may open it read-write
    #[value(name = "rw")]
    ReadWrite,
    /// Only the creator's uid may write; everyone else reads
    #[value(name = "ro-others")]
    ReadOnlyForOthers,
}

/// `--lifetime`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LifetimeArg {
    /// Until deleted
    Persistent,
    /// Until its last attachment goes
    OnLastDetach,
    /// Until the creating process exits
    Owner,
    /// Until unattached for --ttl
    Ttl,
}

/// `ipcctl segment delete`
#[derive(Debug, Args)]
pub struct SegmentDeleteArgs {
    /// Segment ids (`42` or `segments/42`)
    #[arg(required = true, value_parser = parse_segment_id)]
    pub ids: Vec<u64>,
}

/// `ipcctl segment purge`
#[derive(Debug, Args)]
pub struct SegmentPurgeArgs {
    /// Delete the orphans; without it, only list what would be deleted
    #[arg(long)]
    pub force: bool,
    /// Only this tenant's orphans
    #[arg(long)]
    pub tenant: Option<String>,
    /// Raw AIP-160 filter (tenant, name, owner_pid, owner_uid), ANDed with --tenant
    #[arg(long)]
    pub filter: Option<String>,
}

/// `ipcctl quota ...`
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Show a tenant's effective quota and usage
    Get(QuotaGetArgs),
    /// Change a tenant's quota override (admins only); flags not given stay as they are
    Set(QuotaSetArgs),
}

/// `ipcctl quota get`
#[derive(Debug, Args)]
pub struct QuotaGetArgs {
    /// Tenant [default: your own]
    pub tenant: Option<String>,
}

/// `ipcctl quota set`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true)
    .args(["max_bytes", "max_segments", "max_segment_bytes", "reset"])))]
pub struct QuotaSetArgs {
    /// Tenant to change
    pub tenant: String,
    /// Total bytes of the tenant's segments, or unlimited
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true,
          value_parser = units::parse_size_limit)]
    pub max_bytes: Option<Limit>,
    /// Number of segments, or unlimited
    #[arg(long, value_name = "N", allow_hyphen_values = true,
          value_parser = units::parse_count_limit)]
    pub max_segments: Option<Limit>,
    /// Bytes of any single segment, or unlimited
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true,
          value_parser = units::parse_size_limit)]
    pub max_segment_bytes: Option<Limit>,
    /// Drop the override so the configured defaults apply again
    #[arg(long, conflicts_with_all = ["max_bytes", "max_segments", "max_segment_bytes"])]
    pub reset: bool,
}

/// `ipcctl client ...`
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// List connected client processes
    List(ClientListArgs),
}

/// `ipcctl client list`
#[derive(Debug, Args)]
pub struct ClientListArgs {
    /// Only clients of this tenant
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only the client with this process id
    #[arg(long)]
    pub pid: Option<u32>,
    #[command(flatten)]
    pub list: ListArgs,
}

/// `ipcctl tenant ...`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// List tenants with their quota, usage and clients
    List(TenantListArgs),
}

/// `ipcctl tenant list`
#[derive(Debug, Args)]
pub struct TenantListArgs {
    #[command(flatten)]
    pub list: ListArgs,
}

/// `ipcctl audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, oldest first
    List(AuditListArgs),
}

/// `ipcctl audit list`
#[derive(Debug, Args)]
pub struct AuditListArgs {
    #[command(flatten)]
    pub events: EventFilterArgs,
    /// Only events at or after this time: a duration ago (10m, 2h) or RFC 3339
    #[arg(long, value_name = "TIME", value_parser = units::parse_since)]
    pub since: Option<Since>,
    #[command(flatten)]
    pub list: ListArgs,
}

/// `ipcctl watch`
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub events: EventFilterArgs,
    /// Raw AIP-160 filter, ANDed with the other filter flags (e.g. 'pid = 42')
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// First print the stored events after this id (0: the whole log), then
    /// go on live with none missed; resume with the last id seen
    #[arg(long, value_name = "N")]
    pub after_id: Option<u64>,
}

/// The event filter flags `audit list` and `watch` share.
#[derive(Debug, Args)]
pub struct EventFilterArgs {
    /// Only events of this tenant
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this action, e.g. segment.create, quota.update, client.connect
    #[arg(long)]
    pub action: Option<String>,
    /// Only events with this outcome
    #[arg(long, value_enum)]
    pub outcome: Option<OutcomeArg>,
}

/// `--outcome`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    /// Done
    Allowed,
    /// Refused by policy, quota or validation
    Denied,
    /// Allowed but failed
    Failed,
}

/// `ipcctl agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Version, uptime and table sizes
    Info,
    /// Ask the gRPC health service; prints SERVING or NOT_SERVING (exit 69 unless SERVING)
    Health(HealthArgs),
}

/// `ipcctl agent health`
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Service to ask about [default: the whole agent]
    #[arg(long, default_value = "", hide_default_value = true)]
    pub service: String,
}

/// Parses `42` or `segments/42`.
fn parse_segment_id(text: &str) -> Result<u64, String> {
    let digits = text.strip_prefix("segments/").unwrap_or(text);
    digits
        .parse()
        .map_err(|_| format!("invalid segment id {text:?}: expected a number such as 42"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_args(std::iter::once("ipcctl").chain(args.iter().copied()))
    }

    fn usage_error(args: &[&str]) -> String {
        let err = parse(args).expect_err("expected a usage error");
        assert_eq!(err.exit_code(), 2, "{err}");
        err.to_string()
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_have_defaults_and_work_after_the_verb() {
        let sut = parse(&["segment", "list"]).unwrap();
        assert_eq!(sut.output, Format::Table);
        assert_eq!(sut.timeout, Duration::from_secs(5));
        assert_eq!(sut.socket, None);

        let sut = parse(&[
            "segment",
            "list",
            "-o",
            "json",
            "--socket",
            "/tmp/c.sock",
            "--timeout",
            "1m",
        ])
        .unwrap();
        assert_eq!(sut.output, Format::Json);
        assert_eq!(sut.timeout, Duration::from_secs(60));
        assert_eq!(sut.socket, Some(PathBuf::from("/tmp/c.sock")));
    }

    #[test]
    fn segment_list_takes_filters_and_paging() {
        let sut = parse(&[
            "segment",
            "list",
            "--tenant",
            "t",
            "--name",
            "n",
            "--owner-pid",
            "42",
            "--filter",
            "state = \"DRAINING\"",
            "--page-size",
            "10",
            "--limit",
            "5",
        ])
        .unwrap();
        let Command::Segment(SegmentCommand::List(args)) = sut.command else {
            panic!("wrong command: {:?}", sut.command);
        };
        assert_eq!(args.tenant.as_deref(), Some("t"));
        assert_eq!(args.name.as_deref(), Some("n"));
        assert_eq!(args.owner_pid, Some(42));
        assert_eq!(args.list.filter.as_deref(), Some("state = \"DRAINING\""));
        assert_eq!(args.list.page_size, Some(10));
        assert_eq!(args.list.limit, Some(5));
        assert!(args.list.all_pages);
    }

    #[test]
    fn all_pages_defaults_on_and_can_be_turned_off() {
        let all_pages = |args: &[&str]| match parse(args).unwrap().command {
            Command::Tenant(TenantCommand::List(args)) => args.list.all_pages,
            other => panic!("wrong command: {other:?}"),
        };
        assert!(all_pages(&["tenant", "list"]));
        assert!(all_pages(&["tenant", "list", "--all-pages"]));
        assert!(!all_pages(&["tenant", "list", "--all-pages=false"]));
    }

    #[test]
    fn list_paging_is_validated() {
        usage_error(&["segment", "list", "--page-size", "0"]);
        usage_error(&["segment", "list", "--page-size", "1001"]);
        usage_error(&["segment", "list", "--limit", "0"]);
        usage_error(&["segment", "list", "--owner-pid", "-1"]);
    }

    #[test]
    fn segment_create_parses_sizes_modes_and_lifetimes() {
        let sut = parse(&[
            "segment",
            "create",
            "--name",
            "frames",
            "--size",
            "4MiB",
            "--mode",
            "ro-others",
            "--lifetime",
            "on-last-detach",
            "--tenant",
            "video",
        ])
        .unwrap();
        let Command::Segment(SegmentCommand::Create(args)) = sut.command else {
            panic!("wrong command: {:?}", sut.command);
        };
        assert_eq!(args.size, Some(4 << 20));
        assert_eq!(args.mode, Some(ModeArg::ReadOnlyForOthers));
        assert_eq!(args.lifetime, Some(LifetimeArg::OnLastDetach));
        assert_eq!(args.ttl, None);
        assert_eq!(args.tenant.as_deref(), Some("video"));
    }

    #[test]
    fn segment_create_ttl_implies_and_requires_the_ttl_lifetime() {
        let Command::Segment(SegmentCommand::Create(args)) =
            parse(&["segment", "create", "--size", "1K", "--ttl", "30s"])
                .unwrap()
                .command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.lifetime, Some(LifetimeArg::Ttl));
        assert_eq!(args.ttl, Some(Duration::from_secs(30)));

        usage_error(&["segment", "create", "--size", "1K", "--lifetime", "ttl"]);
        let message = usage_error(&[
            "segment",
            "create",
            "--size",
            "1K",
            "--lifetime",
            "owner",
            "--ttl",
            "5s",
        ]);
        assert!(
            message.contains("--ttl applies only to --lifetime ttl"),
            "{message}"
        );
    }

    #[test]
    fn segment_create_makes_rings_semaphores_and_events_without_a_size() {
        let create = |args: &[&str]| {
            let mut all = vec!["segment", "create"];
            all.extend_from_slice(args);
            match parse(&all).unwrap().command {
                Command::Segment(SegmentCommand::Create(args)) => args,
                other => panic!("wrong command: {other:?}"),
            }
        };

        let ring = create(&[
            "--ring-capacity",
            "64KiB",
            "--max-message",
            "1KiB",
            "--producers",
            "4",
        ]);
        assert_eq!(
            (
                ring.size,
                ring.ring_capacity,
                ring.max_message,
                ring.producers
            ),
            (None, Some(64 << 10), Some(1024), Some(4))
        );
        assert_eq!(create(&["--semaphore", "3"]).semaphore, Some(3));
        assert!(create(&["--event"]).event);

        usage_error(&["segment", "create", "--max-message", "1KiB"]);
        usage_error(&["segment", "create", "--producers", "2"]);
        usage_error(&["segment", "create", "--ring-capacity", "4K", "--event"]);
        usage_error(&["segment", "create", "--semaphore", "1", "--event"]);
        usage_error(&["segment", "create", "--semaphore", "-1"]);
    }

    #[test]
    fn bad_sizes_are_usage_errors_with_the_reason() {
        assert!(usage_error(&["segment", "create", "--size", "0"]).contains("must be positive"));
        assert!(usage_error(&["segment", "create", "--size", "-4K"]).contains("invalid size"));
        assert!(usage_error(&["segment", "create", "--size", "lots"]).contains("invalid size"));
        usage_error(&["segment", "create"]);
    }

    #[test]
    fn segment_ids_accept_resource_names() {
        let Command::Segment(SegmentCommand::Delete(args)) =
            parse(&["segment", "delete", "7", "segments/8"])
                .unwrap()
                .command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.ids, [7, 8]);
        usage_error(&["segment", "delete"]);
        assert!(usage_error(&["segment", "get", "seven"]).contains("invalid segment id"));
    }

    #[test]
    fn quota_set_needs_a_change_and_reset_stands_alone() {
        let Command::Quota(QuotaCommand::Set(args)) = parse(&[
            "quota",
            "set",
            "uid-1000",
            "--max-bytes",
            "1GiB",
            "--max-segments",
            "unlimited",
        ])
        .unwrap()
        .command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.max_bytes, Some(Limit(Some(1 << 30))));
        assert_eq!(args.max_segments, Some(Limit(None)));
        assert_eq!(args.max_segment_bytes, None);
        assert!(!args.reset);

        usage_error(&["quota", "set", "uid-1000"]);
        usage_error(&["quota", "set", "uid-1000", "--reset", "--max-bytes", "1GiB"]);
        usage_error(&["quota", "set", "--reset"]);
        assert!(parse(&["quota", "set", "uid-1000", "--reset"]).is_ok());
    }

    #[test]
    fn audit_list_parses_outcome_and_since() {
        let Command::Audit(AuditCommand::List(args)) = parse(&[
            "audit",
            "list",
            "--outcome",
            "denied",
            "--since",
            "10m",
            "--action",
            "segment.create",
        ])
        .unwrap()
        .command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.events.outcome, Some(OutcomeArg::Denied));
        assert_eq!(args.since, Some(Since::Ago(Duration::from_secs(600))));
        usage_error(&["audit", "list", "--outcome", "maybe"]);
        usage_error(&["audit", "list", "--since", "last tuesday"]);
    }

    #[test]
    fn watch_takes_audit_filters_and_a_resume_point() {
        let Command::Watch(args) = parse(&[
            "watch",
            "--tenant",
            "uid-0",
            "--outcome",
            "failed",
            "--after-id",
            "41",
        ])
        .unwrap()
        .command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.events.tenant.as_deref(), Some("uid-0"));
        assert_eq!(args.events.outcome, Some(OutcomeArg::Failed));
        assert_eq!(args.after_id, Some(41));
        usage_error(&["watch", "--after-id", "-1"]);
        let Command::Segment(SegmentCommand::List(args)) =
            parse(&["segment", "list", "-w"]).unwrap().command
        else {
            panic!("wrong command");
        };
        assert!(args.watch);
    }

    #[test]
    fn agent_health_asks_about_the_whole_agent_by_default() {
        let Command::Agent(AgentCommand::Health(args)) =
            parse(&["agent", "health"]).unwrap().command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.service, "");
    }

    #[test]
    fn help_documents_exit_codes() {
        let err = parse(&["--help"]).unwrap_err();
        assert_eq!(err.exit_code(), 0);
        let help = err.to_string();
        assert!(help.contains("69  agent unavailable"), "{help}");
        assert!(help.contains("5  quota exceeded"), "{help}");
    }

    #[test]
    fn unknown_commands_and_bad_timeouts_are_usage_errors() {
        usage_error(&["segment", "frobnicate"]);
        usage_error(&["--timeout", "5", "agent", "info"]);
        usage_error(&["-o", "xml", "agent", "info"]);
    }
}
