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
    use std::path::{Path, PathBuf};

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
            _ if uid == 0 => PathBuf::from(SYSTEM_RUNTIME_DIR),
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

    /// The system agent's runtime directory, where root's agent listens.
    const SYSTEM_RUNTIME_DIR: &str = "/run/ipcplane";

    /// The socket a client should use, by the first rule that applies:
    /// 1. `$<env_var>` (e.g. [`ENV_GRANT_SOCKET`]) if set;
    /// 2. `<file>` in `$IPCPLANE_RUNTIME_DIR` if set;
    /// 3. for root, `/run/ipcplane/<file>`;
    /// 4. for other users, `<file>` in their own runtime directory
    ///    ([`default_runtime_dir`]: `$XDG_RUNTIME_DIR/ipcplane` or
    ///    `/tmp/ipcplane-<uid>`) if that socket exists, so a per-user agent
    ///    wins;
    /// 5. else the system agent's `/run/ipcplane/<file>`.
    ///
    /// Empty variables count as unset.
    pub fn client_socket(uid: u32, env_var: &str, file: &str) -> PathBuf {
        let var = |name| std::env::var(name).ok();
        choose_client_socket(
            uid,
            ClientEnv {
                socket: var(env_var).as_deref(),
                runtime_dir: var(ENV_RUNTIME_DIR).as_deref(),
                xdg_runtime_dir: var("XDG_RUNTIME_DIR").as_deref(),
            },
            file,
            Path::exists,
        )
    }

    /// The environment variables [`client_socket`] reads.
    #[derive(Clone, Copy, Debug)]
    struct ClientEnv<'a> {
        /// `$<env_var>`, the socket's own override.
        socket: Option<&'a str>,
        /// `$IPCPLANE_RUNTIME_DIR`.
        runtime_dir: Option<&'a str>,
        /// `$XDG_RUNTIME_DIR`.
        xdg_runtime_dir: Option<&'a str>,
    }

    /// The rules of [`client_socket`], on explicit inputs: `exists` tells
    /// whether a socket file is present.
    fn choose_client_socket(
        uid: u32,
        env: ClientEnv<'_>,
        file: &str,
        exists: impl Fn(&Path) -> bool,
    ) -> PathBuf {
        let set = |value: Option<&str>| value.filter(|value| !value.is_empty()).map(PathBuf::from);
        if let Some(path) = set(env.socket) {
            return path;
        }
        if let Some(dir) = set(env.runtime_dir) {
            return dir.join(file);
        }
        if uid != 0 {
            let per_user = default_runtime_dir(uid, env.xdg_runtime_dir).join(file);
            if exists(&per_user) {
                return per_user;
            }
        }
        Path::new(SYSTEM_RUNTIME_DIR).join(file)
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

        /// Inputs of `choose_client_socket` with every variable unset.
        const UNSET: ClientEnv<'static> = ClientEnv {
            socket: None,
            runtime_dir: None,
            xdg_runtime_dir: None,
        };

        fn choose(uid: u32, env: ClientEnv<'_>, existing: &[&str]) -> PathBuf {
            choose_client_socket(uid, env, GRANT_SOCKET, |path| {
                existing.iter().any(|existing| path == Path::new(existing))
            })
        }

        #[test]
        fn client_socket_variable_wins_over_everything() {
            let env = ClientEnv {
                socket: Some("/custom/g.sock"),
                runtime_dir: Some("/rt"),
                xdg_runtime_dir: Some("/run/user/1000"),
            };

            for uid in [0, 1000] {
                assert_eq!(
                    choose(uid, env, &["/run/user/1000/ipcplane/grant.sock"]),
                    PathBuf::from("/custom/g.sock")
                );
            }
        }

        #[test]
        fn client_runtime_dir_variable_wins_over_the_defaults() {
            let env = ClientEnv {
                runtime_dir: Some("/rt"),
                xdg_runtime_dir: Some("/run/user/1000"),
                ..UNSET
            };

            assert_eq!(
                choose(1000, env, &["/run/user/1000/ipcplane/grant.sock"]),
                PathBuf::from("/rt/grant.sock")
            );
            assert_eq!(choose(0, env, &[]), PathBuf::from("/rt/grant.sock"));
        }

        #[test]
        fn empty_client_variables_count_as_unset() {
            let env = ClientEnv {
                socket: Some(""),
                runtime_dir: Some(""),
                xdg_runtime_dir: Some(""),
            };

            assert_eq!(
                choose(1000, env, &[]),
                PathBuf::from("/run/ipcplane/grant.sock")
            );
        }

        #[test]
        fn user_client_prefers_an_existing_per_user_socket() {
            let env = ClientEnv {
                xdg_runtime_dir: Some("/run/user/1000"),
                ..UNSET
            };

            assert_eq!(
                choose(1000, env, &["/run/user/1000/ipcplane/grant.sock"]),
                PathBuf::from("/run/user/1000/ipcplane/grant.sock")
            );
            assert_eq!(
                choose(1000, UNSET, &["/tmp/ipcplane-1000/grant.sock"]),
                PathBuf::from("/tmp/ipcplane-1000/grant.sock")
            );
        }

        #[test]
        fn user_client_falls_back_to_the_system_agent() {
            let env = ClientEnv {
                xdg_runtime_dir: Some("/run/user/1000"),
                ..UNSET
            };

            assert_eq!(
                choose(1000, env, &["/run/ipcplane/grant.sock"]),
                PathBuf::from("/run/ipcplane/grant.sock")
            );
            assert_eq!(
                choose(1000, UNSET, &[]),
                PathBuf::from("/run/ipcplane/grant.sock")
            );
        }

        #[test]
        fn root_client_uses_the_system_agent_even_with_a_per_user_socket() {
            let env = ClientEnv {
                xdg_runtime_dir: Some("/run/user/0"),
                ..UNSET
            };

            assert_eq!(
                choose(0, env, &["/run/user/0/ipcplane/grant.sock"]),
                PathBuf::from("/run/ipcplane/grant.sock")
            );
        }

        #[test]
        fn client_socket_joins_the_requested_file() {
            let env = ClientEnv {
                runtime_dir: Some("/rt"),
                ..UNSET
            };

            assert_eq!(
                choose_client_socket(1000, env, CONTROL_SOCKET, |_| false),
                PathBuf::from("/rt/control.sock")
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
