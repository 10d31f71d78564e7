//! The ipcplane wire contracts, generated from `ipcplane/v1/*.proto`.
//!
//! # Layout
//! - [`v1`]: all messages, plus the gRPC clients and servers of the control API.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//! - [`paths`]: where the sockets are by default; [`units`]: byte sizes as text.
//! - [`GRANT_PROTOCOL_VERSION`] and [`MAX_GRANT_DATAGRAM`]: the grant socket's framing.
#![forbid(unsafe_code)]

/// Generated code for package `ipcplane.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    tonic::include_proto!("ipcplane.v1");
}

/// Encoded `FileDescriptorSet` of every ipcplane proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ipcplane_descriptor");

/// The grant protocol version this build speaks (sent in `Hello`).
pub const GRANT_PROTOCOL_VERSION: u32 = 1;

/// Largest grant-socket datagram either side sends or accepts, in bytes.
pub const MAX_GRANT_DATAGRAM: usize = 4096;

/// Where the agent's sockets live by default: part of the contract between the
/// agent, the SDK and `ipcctl`, so all three agree without configuration.
pub mod paths {
    use std::path::PathBuf;

    /// Overrides the runtime directory (sockets) for the agent and its clients.
    pub const ENV_RUNTIME_DIR: &str = "IPCPLANE_RUNTIME_DIR";
    /// Overrides the grant socket path for SDK clients.
    pub const ENV_GRANT_SOCKET: &str = "IPCPLANE_GRANT_SOCKET";
    /// Overrides the control socket path for `ipcctl`.
    pub const ENV_CONTROL_SOCKET: &str = "IPCPLANE_CONTROL_SOCKET";
    /// File name of the grant socket inside the runtime directory.
    pub const GRANT_SOCKET: &str = "grant.sock";
    /// File name of the control socket inside the runtime directory.
    pub const CONTROL_SOCKET: &str = "control.sock";

    /// The runtime directory when nothing overrides it: `/run/ipcplane` for root,
    /// else `$XDG_RUNTIME_DIR/ipcplane`, else `/tmp/ipcplane-<uid>`.
    pub fn default_runtime_dir(uid: u32, xdg_runtime_dir: Option<&str>) -> PathBuf {
        match xdg_runtime_dir.filter(|dir| !dir.is_empty()) {
            _ if uid == 0 => PathBuf::from("/run/ipcplane"),
            Some(dir) => PathBuf::from(dir).join("ipcplane"),
            None => PathBuf::from(format!("/tmp/ipcplane-{uid}")),
        }
    }

    /// The runtime directory for this process: `$IPCPLANE_RUNTIME_DIR` or the default.
    pub fn runtime_dir(uid: u32) -> PathBuf {
        match std::env::var(ENV_RUNTIME_DIR) {
            Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => default_runtime_dir(uid, std::env::var("XDG_RUNTIME_DIR").ok().as_deref()),
        }
    }

    /// The socket a client should use: `$<env_var>` if set, else `<runtime_dir>/<file>`.
    pub fn client_socket(uid: u32, env_var: &str, file: &str) -> PathBuf {
        match std::env::var(env_var) {
            Ok(path) if !path.is_empty() => PathBuf::from(path),
            _ => runtime_dir(uid).join(file),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn root_uses_run_even_with_xdg_set() {
            assert_eq!(
                default_runtime_dir(0, Some("/run/user/0")),
                PathBuf::from("/run/ipcplane")
            );
        }

        #[test]
        fn users_use_xdg_runtime_dir_then_tmp() {
            assert_eq!(
                default_runtime_dir(1000, Some("/run/user/1000")),
                PathBuf::from("/run/user/1000/ipcplane")
            );
            assert_eq!(
                default_runtime_dir(1000, Some("")),
                PathBuf::from("/tmp/ipcplane-1000")
            );
            assert_eq!(
                default_runtime_dir(1000, None),
                PathBuf::from("/tmp/ipcplane-1000")
            );
        }
    }
}

pub mod units;
