//! Configuration: clap flags and `IPCPLANE_*` variables (`Cli`), an optional
//! TOML file (`FileConfig`), and embedded defaults, validated into `Config`.
//! Precedence: flag > env > file > default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::core::{Limits, validate_tenant};
use ipcplane_proto::paths;

/// Sysexits code for a configuration error.
pub const EX_CONFIG: i32 = 64;

/// Path of the optional TOML config file.
pub const ENV_CONFIG: &str = "IPCPLANE_CONFIG";
/// Directory of the SQLite database.
pub const ENV_STATE_DIR: &str = "IPCPLANE_STATE_DIR";
/// The SQLite database file itself.
pub const ENV_DATABASE: &str = "IPCPLANE_DATABASE";
/// Group (name or gid) allowed to use the control socket.
pub const ENV_CONTROL_GROUP: &str = "IPCPLANE_CONTROL_GROUP";
/// tracing filter directives (default `info`).
pub const ENV_LOG: &str = "IPCPLANE_LOG";
/// `plain` (default) or `json`.
pub const ENV_LOG_FORMAT: &str = "IPCPLANE_LOG_FORMAT";

/// Default orphan grace: an owner's restart or a slow consumer has time to
/// come back before its segment can be purged.
pub const DEFAULT_ORPHAN_GRACE_SECONDS: u64 = 600;

/// Default time for holders to present their segments after a restart
/// (SDK clients reconnect with a backoff capped at one second).
pub const DEFAULT_REATTACH_GRACE_SECONDS: u64 = 30;

/// Default quota when neither the file nor an override sets one.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_bytes: Some(4 << 30),
    max_segments: Some(4096),
    max_segment_bytes: Some(1 << 30),
};

/// The ipcplane agent: owns the host's shared-memory segments, grants them as
/// sealed memfds over `grant.sock`, and serves the gRPC control API on
/// `control.sock`.
#[derive(Debug, Parser)]
#[command(name = "ipcplane-agent", version, about, long_about = None)]
pub struct Cli {
    /// Optional TOML config file (see deploy/config/agent.example.toml).
    #[arg(long, env = ENV_CONFIG)]
    pub config: Option<PathBuf>,
    /// Directory for grant.sock and control.sock [default: /run/ipcplane for
    /// root, else $XDG_RUNTIME_DIR/ipcplane, else /tmp/ipcplane-$UID].
    #[arg(long, env = paths::ENV_RUNTIME_DIR)]
    pub runtime_dir: Option<PathBuf>,
    /// Directory for the SQLite database [default: /var/lib/ipcplane for root,
    /// else $XDG_STATE_HOME/ipcplane, else ~/.local/state/ipcplane].
    #[arg(long, env = ENV_STATE_DIR)]
    pub state_dir: Option<PathBuf>,
    /// SQLite database file [default: $STATE_DIR/ipcplane.db].
    #[arg(long, env = ENV_DATABASE)]
    pub database: Option<PathBuf>,
    /// Group (name or numeric gid) given access to control.sock (mode 0660)
    /// [default: the agent's own group].
    #[arg(long, env = ENV_CONTROL_GROUP)]
    pub control_group: Option<String>,
    /// Log format.
    #[arg(long, env = ENV_LOG_FORMAT, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// The TOML file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub runtime_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub database: Option<PathBuf>,
    pub control_group: Option<String>,
    pub log_format: Option<LogFormat>,
    /// Uids that are admins besides root.
    #[serde(default)]
    pub admin_uids: Vec<u32>,
    /// Gids whose members are admins.
    #[serde(default)]
    pub admin_gids: Vec<u32>,
    /// Default per-tenant limits.
    pub quota: Option<FileQuota>,
    /// Rules mapping callers to tenants, first match wins.
    #[serde(default)]
    pub tenants: Vec<TenantRule>,
    /// How long an unattached segment of an exited owner waits before it is
    /// an orphan that `PurgeSegments` may remove.
    pub orphan_grace_seconds: Option<u64>,
    /// After a restart, how long holders have to present the segments they
    /// hold before the ones nobody presented are lost.
    pub reattach_grace_seconds: Option<u64>,
}

/// `[quota]`: sizes as integers or strings such as "4GiB"; "unlimited" lifts a limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuota {
    pub max_bytes: Option<Limit>,
    pub max_segments: Option<Limit>,
    pub max_segment_bytes: Option<Limit>,
}

/// One limit as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Limit {
    Number(u64),
    Text(String),
}

/// `[[tenants]]`: callers whose uid or gid is listed belong to `name`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRule {
    pub name: String,
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub gids: Vec<u32>,
    /// This tenant's orphan grace, overriding `orphan_grace_seconds`.
    pub orphan_grace_seconds: Option<u64>,
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub runtime_dir: PathBuf,
    pub database: PathBuf,
    /// Gid that owns control.sock; `None` keeps the agent's own.
    pub control_gid: Option<u32>,
    pub log_format: LogFormat,
    pub admin_uids: Vec<u32>,
    pub admin_gids: Vec<u32>,
    pub default_limits: Limits,
    pub tenant_rules: Vec<TenantRule>,
    pub orphan_grace: Duration,
    pub reattach_grace: Duration,
}

impl Config {
    /// Path of the grant socket.
    pub fn grant_socket(&self) -> PathBuf {
        self.runtime_dir.join(paths::GRANT_SOCKET)
    }

    /// Path of the control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir.join(paths::CONTROL_SOCKET)
    }
}

/// What the defaults depend on, passed in so tests need no environment.
#[derive(Debug, Clone)]
pub struct Host {
    pub uid: u32,
    pub xdg_runtime_dir: Option<String>,
    pub xdg_state_home: Option<String>,
    pub home: Option<String>,
}

impl Host {
    /// The real process's uid and XDG variables.
    pub fn current() -> Host {
        Host {
            uid: rustix::process::getuid().as_raw(),
            xdg_runtime_dir: std::env::var("XDG_RUNTIME_DIR").ok(),
            xdg_state_home: std::env::var("XDG_STATE_HOME").ok(),
            home: std::env::var("HOME").ok(),
        }
    }

    fn default_state_dir(&self) -> PathBuf {
        let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        if self.uid == 0 {
            PathBuf::from("/var/lib/ipcplane")
        } else if let Some(dir) = non_empty(&self.xdg_state_home) {
            PathBuf::from(dir).join("ipcplane")
        } else {
            let home =
                non_empty(&self.home).unwrap_or_else(|| format!("/tmp/ipcplane-{}", self.uid));
            PathBuf::from(home).join(".local/state/ipcplane")
        }
    }
}

/// Reads the file named by `cli.config`, if any, and validates everything.
///
/// # Errors
/// A message for the operator; main prints it and exits with [`EX_CONFIG`].
pub fn load(cli: Cli, host: &Host) -> Result<Config, String> {
    let file = match &cli.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    resolve(cli, file, host)
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}

/// Merges flags/env over the file over defaults.
///
/// # Errors
/// A message naming the bad setting.
pub fn resolve(cli: Cli, file: FileConfig, host: &Host) -> Result<Config, String> {
    let runtime_dir = cli
        .runtime_dir
        .or(file.runtime_dir)
        .unwrap_or_else(|| paths::default_runtime_dir(host.uid, host.xdg_runtime_dir.as_deref()));
    let state_dir = cli
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| host.default_state_dir());
    let database = cli
        .database
        .or(file.database)
        .unwrap_or_else(|| state_dir.join("ipcplane.db"));
    for (what, path) in [("runtime_dir", &runtime_dir), ("database", &database)] {
        if !path.is_absolute() {
            return Err(format!(
                "{what} must be an absolute path, got {}",
                path.display()
            ));
        }
    }
    let control_gid = cli
        .control_group
        .or(file.control_group)
        .map(|group| resolve_group(&group))
        .transpose()?;
    let quota = file.quota.unwrap_or_default();
    let limit = |name: &str, value: Option<Limit>, default: Option<u64>| match value {
        None => Ok(default),
        Some(Limit::Number(0)) => Err(format!("quota.{name} must be positive or \"unlimited\"")),
        Some(Limit::Number(n)) => Ok(Some(n)),
        Some(Limit::Text(text)) if text == "unlimited" => Ok(None),
        Some(Limit::Text(text)) => ipcplane_proto::units::parse_size(&text)
            .map(Some)
            .map_err(|e| format!("quota.{name}: {e}")),
    };
    let default_limits = Limits {
        max_bytes: limit("max_bytes", quota.max_bytes, DEFAULT_LIMITS.max_bytes)?,
        max_segments: limit(
            "max_segments",
            quota.max_segments,
            DEFAULT_LIMITS.max_segments,
        )?,
        max_segment_bytes: limit(
            "max_segment_bytes",
            quota.max_segment_bytes,
            DEFAULT_LIMITS.max_segment_bytes,
        )?,
    };
    for rule in &file.tenants {
        validate_tenant(&rule.name).map_err(|e| format!("tenants: {e}"))?;
        if rule.uids.is_empty() && rule.gids.is_empty() {
            return Err(format!(
                "tenants: rule {:?} matches nobody: give uids or gids",
                rule.name
            ));
        }
    }
    Ok(Config {
        runtime_dir,
        database,
        control_gid,
        log_format: cli
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Plain),
        admin_uids: file.admin_uids,
        admin_gids: file.admin_gids,
        default_limits,
        tenant_rules: file.tenants,
        orphan_grace: Duration::from_secs(
            file.orphan_grace_seconds
                .unwrap_or(DEFAULT_ORPHAN_GRACE_SECONDS),
        ),
        reattach_grace: Duration::from_secs(
            file.reattach_grace_seconds
                .unwrap_or(DEFAULT_REATTACH_GRACE_SECONDS),
        ),
    })
}

/// A group name from /etc/group, or a numeric gid.
fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("control_group {group:?}: cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("control_group {group:?}: no such group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_host() -> Host {
        Host {
            uid: 1000,
            xdg_runtime_dir: Some("/run/user/1000".into()),
            xdg_state_home: None,
            home: Some("/home/alice".into()),
        }
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("ipcplane-agent").chain(args.iter().copied())).unwrap()
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_need_no_file() {
        let sut = resolve(cli(&[]), FileConfig::default(), &user_host()).unwrap();
        assert_eq!(sut.runtime_dir, PathBuf::from("/run/user/1000/ipcplane"));
        assert_eq!(
            sut.database,
            PathBuf::from("/home/alice/.local/state/ipcplane/ipcplane.db")
        );
        assert_eq!(sut.default_limits, DEFAULT_LIMITS);
        assert_eq!(sut.control_gid, None);
        let root = Host {
            uid: 0,
            ..user_host()
        };
        let sut = resolve(cli(&[]), FileConfig::default(), &root).unwrap();
        assert_eq!(
            sut.grant_socket(),
            PathBuf::from("/run/ipcplane/grant.sock")
        );
        assert_eq!(sut.database, PathBuf::from("/var/lib/ipcplane/ipcplane.db"));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let from_file = file("runtime_dir = \"/file/run\"\nstate_dir = \"/file/state\"\n");
        let sut = resolve(
            cli(&["--runtime-dir", "/flag/run"]),
            from_file,
            &user_host(),
        )
        .unwrap();
        assert_eq!(sut.runtime_dir, PathBuf::from("/flag/run"));
        assert_eq!(sut.database, PathBuf::from("/file/state/ipcplane.db"));
    }

    #[test]
    fn quota_accepts_sizes_numbers_and_unlimited() {
        let sut = resolve(
            cli(&[]),
            file("[quota]\nmax_bytes = \"2GiB\"\nmax_segments = 10\nmax_segment_bytes = \"unlimited\"\n"),
            &user_host(),
        )
        .unwrap();
        assert_eq!(
            sut.default_limits,
            Limits {
                max_bytes: Some(2 << 30),
                max_segments: Some(10),
                max_segment_bytes: None
            }
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            ("[quota]\nmax_bytes = \"lots\"\n", "quota.max_bytes"),
            ("[quota]\nmax_segments = 0\n", "quota.max_segments"),
            ("[[tenants]]\nname = \"bad name\"\nuids = [1]\n", "tenants"),
            ("[[tenants]]\nname = \"empty\"\n", "matches nobody"),
            ("runtime_dir = \"relative\"\n", "absolute"),
            ("control_group = \"no-such-group-here\"\n", "no such group"),
        ];
        for (text, expected) in cases {
            let err = resolve(cli(&[]), file(text), &user_host()).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(toml::from_str::<FileConfig>("colour = 1").is_err());
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let example = include_str!("../../deploy/config/agent.example.toml");
        let sut = resolve(cli(&[]), file(example), &user_host()).unwrap();
        assert_eq!(sut.orphan_grace, Duration::from_secs(600));
        assert_eq!(sut.tenant_rules.len(), 2);
    }

    #[test]
    fn group_names_resolve_through_etc_group() {
        let sut = resolve(
            cli(&["--control-group", "root"]),
            FileConfig::default(),
            &user_host(),
        )
        .unwrap();
        assert_eq!(sut.control_gid, Some(0));
    }
}
