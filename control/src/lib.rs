//! `ipcctl`, the ipcplane admin CLI: `ipcctl <noun> <verb>` over the agent's
//! gRPC control API on its UNIX control socket.
//!
//! Results go to stdout as a table, a wide table, JSON or YAML (`-o`);
//! errors go to stderr as one `ipcctl: ...` line each, and the exit code says
//! what kind of failure it was (see [`Error::exit_code`] and `ipcctl --help`).
//! Nothing is colored.
//!
//! # Layout
//! - [`cli`]: the clap types ([`Cli`]).
//! - `command`: one module per noun, one function per verb; connecting,
//!   filters and paging.
//! - `output`: view structs and their table/json/yaml rendering.
//! - [`units`]: sizes, durations and times as typed and shown.
//! - [`Error`]: failures, their stderr report and exit code.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> Result<(), ipcctl::Error> {
//! let cli = ipcctl::Cli::try_parse_args(["ipcctl", "segment", "list", "-o", "json"])
//!     .unwrap_or_else(|usage| usage.exit());
//! ipcctl::run(&cli, &mut std::io::stdout()).await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod cli;
mod command;
mod error;
mod output;
pub mod units;

use std::io::Write;
use std::path::PathBuf;

use ipcplane_proto::paths;

pub use cli::Cli;
pub use error::Error;

use cli::{
    AgentCommand, AuditCommand, ClientCommand, Command, QuotaCommand, SegmentCommand, TenantCommand,
};
use output::Output;

/// Runs the command `cli` names against the agent, printing the result to `out`.
///
/// The whole command, connecting included, must finish within `--timeout`;
/// a watch (`watch`, `segment list -w`) must start within it, then runs
/// until interrupted or ended by the agent.
///
/// # Errors
/// See [`Error`]; [`Error::report`] and [`Error::exit_code`] say what to print and return.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    let socket = socket_path(cli);
    let mut out = Output::new(cli.output, out);
    let work = async {
        let channel = command::connect(&socket).await?;
        let done = match &cli.command {
            Command::Watch(args) => return command::watch::open(channel, args).await.map(Some),
            Command::Segment(SegmentCommand::List(args)) => {
                return command::segment::list(channel, args, &mut out).await;
            }
            Command::Segment(SegmentCommand::Get(args)) => {
                command::segment::get(channel, args, &mut out).await
            }
            Command::Segment(SegmentCommand::Create(args)) => {
                command::segment::create(channel, args, &mut out).await
            }
            Command::Segment(SegmentCommand::Delete(args)) => {
                command::segment::delete(channel, args, &mut out).await
            }
            Command::Segment(SegmentCommand::Purge(args)) => {
                command::segment::purge(channel, args, &mut out).await
            }
            Command::Quota(QuotaCommand::Get(args)) => {
                command::quota::get(channel, args, &mut out).await
            }
            Command::Quota(QuotaCommand::Set(args)) => {
                command::quota::set(channel, args, &mut out).await
            }
            Command::Client(ClientCommand::List(args)) => {
                command::client::list(channel, args, &mut out).await
            }
            Command::Tenant(TenantCommand::List(args)) => {
                command::tenant::list(channel, args, &mut out).await
            }
            Command::Audit(AuditCommand::List(args)) => {
                command::audit::list(channel, args, &mut out).await
            }
            Command::Agent(AgentCommand::Info) => command::agent::info(channel, &mut out).await,
            Command::Agent(AgentCommand::Health(args)) => {
                command::agent::health(channel, args, &mut out).await
            }
        };
        done.map(|()| None)
    };
    let watch = tokio::time::timeout(cli.timeout, work)
        .await
        .map_err(|_| Error::Timeout(cli.timeout))??;
    match watch {
        Some(events) => events.follow(&mut out).await,
        None => Ok(()),
    }
}

/// `--socket`, else `$IPCPLANE_CONTROL_SOCKET`, else the default of
/// [`ipcplane_proto::paths::client_socket`]: this user's agent if it runs,
/// else the system agent in `/run/ipcplane`.
fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket.clone().unwrap_or_else(|| {
        let uid = rustix::process::getuid().as_raw();
        paths::client_socket(uid, paths::ENV_CONTROL_SOCKET, paths::CONTROL_SOCKET)
    })
}
