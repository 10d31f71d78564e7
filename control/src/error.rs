//! What can go wrong after the command line parsed, and the exit code for each.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::units::format_duration;

/// A failed command. [`Error::report`] is what goes to stderr,
/// [`Error::exit_code`] what the process returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control socket could not be connected to.
    #[error(
        "cannot connect to the agent at {}: {reason} (is ipcplane-agent running? see --socket)",
        socket.display()
    )]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// What kind of I/O error it was (`PermissionDenied` gets exit code 4).
        kind: io::ErrorKind,
        /// The innermost cause, e.g. "No such file or directory (os error 2)".
        reason: String,
    },
    /// The whole command took longer than `--timeout`.
    #[error("the agent did not answer within {} (see --timeout)", format_duration(*.0))]
    Timeout(Duration),
    /// The agent answered with an error.
    #[error("{}", describe(.0))]
    Rpc(Status),
    /// Several segments of one `segment delete` could not be deleted.
    #[error("{}", delete_failures(.0).join("; "))]
    Delete(Vec<(u64, Status)>),
    /// The agent ended a watch: it is stopping, or the connection broke.
    #[error("the agent ended the watch: {0}")]
    WatchEnded(String),
    /// The health service answered with a status other than SERVING.
    #[error("the agent reports {0}")]
    NotServing(String),
    /// The agent broke the API contract.
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Rpc(status)
    }
}

impl Error {
    /// The process exit code, as documented in `ipcctl --help`.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Connect {
                kind: io::ErrorKind::PermissionDenied,
                ..
            } => 4,
            Error::Connect { .. }
            | Error::Timeout(_)
            | Error::NotServing(_)
            | Error::WatchEnded(_) => 69,
            Error::Rpc(status) => code_exit(status.code()),
            Error::Delete(failures) => failures
                .first()
                .map_or(1, |(_, status)| code_exit(status.code())),
            Error::Protocol(_) | Error::Output(_) => 1,
        }
    }

    /// The text for stderr: one `ipcctl: ` line per failure.
    pub fn report(&self) -> String {
        match self {
            Error::Delete(failures) => delete_failures(failures)
                .iter()
                .map(|line| format!("ipcctl: {line}\n"))
                .collect(),
            other => format!("ipcctl: {other}\n"),
        }
    }
}

/// One message per segment that could not be deleted.
fn delete_failures(failures: &[(u64, Status)]) -> Vec<String> {
    failures
        .iter()
        .map(|(id, status)| format!("segment {id}: {}", describe(status)))
        .collect()
}

/// The exit code for a gRPC status code.
fn code_exit(code: Code) -> u8 {
    match code {
        Code::Ok => 0,
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound => 3,
        Code::PermissionDenied | Code::Unauthenticated => 4,
        Code::ResourceExhausted => 5,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 6,
        Code::Unavailable | Code::DeadlineExceeded => 69,
        Code::Cancelled | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => {
            1
        }
    }
}

/// The agent's message, plus the quota names from `QuotaFailure` details
/// when a quota was hit: `quota exceeded: max_bytes (tenant uid-1000): <message>`.
fn describe(status: &Status) -> String {
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    let details = status.get_error_details();
    let violations = details.quota_failure().map(|failure| {
        failure
            .violations
            .iter()
            .map(|violation| match violation.description.as_str() {
                "" => violation.subject.clone(),
                description => format!("{} ({description})", violation.subject),
            })
            .collect::<Vec<_>>()
            .join(", ")
    });
    match violations {
        Some(quotas) if !quotas.is_empty() => {
            let message = message.strip_prefix("quota exceeded: ").unwrap_or(message);
            format!("quota exceeded: {quotas}: {message}")
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, QuotaViolation};

    use super::*;

    #[test]
    fn status_codes_map_to_documented_exit_codes() {
        let cases = [
            (Code::NotFound, 3),
            (Code::PermissionDenied, 4),
            (Code::Unauthenticated, 4),
            (Code::ResourceExhausted, 5),
            (Code::AlreadyExists, 6),
            (Code::FailedPrecondition, 6),
            (Code::Unavailable, 69),
            (Code::DeadlineExceeded, 69),
            (Code::InvalidArgument, 2),
            (Code::Internal, 1),
            (Code::Unknown, 1),
        ];
        for (code, exit) in cases {
            assert_eq!(
                Error::Rpc(Status::new(code, "x")).exit_code(),
                exit,
                "{code:?}"
            );
        }
    }

    #[test]
    fn local_failures_map_to_exit_codes() {
        let connect = |kind| Error::Connect {
            socket: "/run/x.sock".into(),
            kind,
            reason: "x".into(),
        };
        assert_eq!(connect(io::ErrorKind::NotFound).exit_code(), 69);
        assert_eq!(connect(io::ErrorKind::ConnectionRefused).exit_code(), 69);
        assert_eq!(connect(io::ErrorKind::PermissionDenied).exit_code(), 4);
        assert_eq!(Error::Timeout(Duration::from_secs(5)).exit_code(), 69);
        assert_eq!(Error::NotServing("NOT_SERVING".into()).exit_code(), 69);
        assert_eq!(Error::WatchEnded("shutting down".into()).exit_code(), 69);
        assert_eq!(Error::Protocol("x".into()).exit_code(), 1);
        assert_eq!(Error::Output(io::Error::other("disk full")).exit_code(), 1);
    }

    #[test]
    fn reports_are_one_prefixed_line_per_failure() {
        let sut = Error::Rpc(Status::not_found("segment 42 not found"));
        assert_eq!(sut.report(), "ipcctl: segment 42 not found\n");

        let sut = Error::Timeout(Duration::from_secs(5));
        assert_eq!(
            sut.report(),
            "ipcctl: the agent did not answer within 5s (see --timeout)\n"
        );

        let sut = Error::Connect {
            socket: "/run/ipcplane/control.sock".into(),
            kind: io::ErrorKind::ConnectionRefused,
            reason: "refused".into(),
        };
        assert!(sut.report().starts_with(
            "ipcctl: cannot connect to the agent at /run/ipcplane/control.sock: refused"
        ));

        let sut = Error::Delete(vec![
            (7, Status::not_found("segment 7 not found")),
            (8, Status::permission_denied("not yours")),
        ]);
        assert_eq!(
            sut.report(),
            "ipcctl: segment 7: segment 7 not found\nipcctl: segment 8: not yours\n"
        );
        assert_eq!(sut.exit_code(), 3);
    }

    #[test]
    fn empty_status_messages_fall_back_to_the_code() {
        assert_eq!(
            Error::Rpc(Status::unavailable("")).to_string(),
            Code::Unavailable.description()
        );
    }

    #[test]
    fn quota_failures_name_the_quota() {
        let details = ErrorDetails::with_quota_failure(vec![QuotaViolation::new(
            "max_bytes",
            "tenant uid-1000",
        )]);
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "quota exceeded: max_bytes of tenant uid-1000 is 1MiB, 1MiB in use, 4KiB requested",
            details,
        );
        let sut = Error::Rpc(status);
        assert_eq!(
            sut.report(),
            "ipcctl: quota exceeded: max_bytes (tenant uid-1000): max_bytes of tenant uid-1000 \
             is 1MiB, 1MiB in use, 4KiB requested\n"
        );
        assert_eq!(sut.exit_code(), 5);
    }

    #[test]
    fn resource_exhausted_without_details_shows_the_message() {
        let sut = Error::Rpc(Status::resource_exhausted("too many segments"));
        assert_eq!(sut.report(), "ipcctl: too many segments\n");
    }
}
