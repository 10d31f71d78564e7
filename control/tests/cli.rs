//! `ipcctl` as a process against a fake agent on a temporary UNIX socket:
//! the transport, paging, error details, exit codes and the stdout/stderr split.
//! The real agent's end-to-end tests live in `tests/`.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Output;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ipcplane_proto::v1::segment_service_server::{SegmentService, SegmentServiceServer};
    use ipcplane_proto::v1::{
        CreateSegmentRequest, DeleteSegmentRequest, DeleteSegmentResponse, GetSegmentRequest,
        ListSegmentsRequest, ListSegmentsResponse, Segment, SegmentState,
    };
    use tokio::net::UnixListener;
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::{Code, Request, Response, Status};
    use tonic_health::ServingStatus;
    use tonic_types::{ErrorDetails, QuotaViolation, StatusExt};

    /// Segment 1..=3 exist; creating more than 1MiB hits `max_bytes`; getting
    /// segment 666 never answers. Every list request is recorded.
    #[derive(Debug, Default)]
    struct FakeAgent {
        lists: Arc<Mutex<Vec<ListSegmentsRequest>>>,
    }

    fn segment(id: u64) -> Segment {
        Segment {
            id,
            name: format!("seg-{id}"),
            tenant: "uid-1000".into(),
            size_bytes: 4096,
            state: SegmentState::Active.into(),
            ..Segment::default()
        }
    }

    #[tonic::async_trait]
    impl SegmentService for FakeAgent {
        async fn list_segments(
            &self,
            request: Request<ListSegmentsRequest>,
        ) -> Result<Response<ListSegmentsResponse>, Status> {
            let request = request.into_inner();
            self.lists.lock().unwrap().push(request.clone());
            let start: u64 = if request.page_token.is_empty() {
                1
            } else {
                request
                    .page_token
                    .parse()
                    .map_err(|_| Status::invalid_argument("bad page token"))?
            };
            let size = if request.page_size == 0 {
                2
            } else {
                u64::try_from(request.page_size).unwrap()
            };
            let end = (start + size).min(4);
            let next_page_token = if end <= 3 {
                end.to_string()
            } else {
                String::new()
            };
            Ok(Response::new(ListSegmentsResponse {
                segments: (start..end).map(segment).collect(),
                next_page_token,
            }))
        }

        async fn get_segment(
            &self,
            request: Request<GetSegmentRequest>,
        ) -> Result<Response<Segment>, Status> {
            match request.into_inner().id {
                id @ 1..=3 => Ok(Response::new(segment(id))),
                666 => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Err(Status::internal("answered too late"))
                }
                id => Err(Status::not_found(format!("segment {id} not found"))),
            }
        }

        async fn create_segment(
            &self,
            request: Request<CreateSegmentRequest>,
        ) -> Result<Response<Segment>, Status> {
            let request = request.into_inner();
            if request.size_bytes > 1 << 20 {
                let details = ErrorDetails::with_quota_failure(vec![QuotaViolation::new(
                    "max_bytes",
                    "tenant uid-1000",
                )]);
                return Err(Status::with_error_details(
                    Code::ResourceExhausted,
                    "quota exceeded: max_bytes of tenant uid-1000 is 1048576",
                    details,
                ));
            }
            Ok(Response::new(Segment {
                id: 4,
                name: request.name,
                size_bytes: request.size_bytes,
                mode: request.mode,
                lifetime: request.lifetime,
                ttl_ms: request.ttl_ms,
                ..segment(4)
            }))
        }

        async fn delete_segment(
            &self,
            request: Request<DeleteSegmentRequest>,
        ) -> Result<Response<DeleteSegmentResponse>, Status> {
            match request.into_inner().id {
                id @ 1..=3 => Ok(Response::new(DeleteSegmentResponse {
                    segment: Some(Segment {
                        state: SegmentState::Draining.into(),
                        ..segment(id)
                    }),
                })),
                id => Err(Status::not_found(format!("segment {id} not found"))),
            }
        }
    }

    /// A fake agent serving on `<tempdir>/control.sock` until dropped.
    struct Harness {
        dir: tempfile::TempDir,
        lists: Arc<Mutex<Vec<ListSegmentsRequest>>>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    impl Harness {
        async fn start() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let listener = UnixListener::bind(dir.path().join("control.sock")).unwrap();
            let agent = FakeAgent::default();
            let lists = Arc::clone(&agent.lists);
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("broken", ServingStatus::NotServing)
                .await;
            let server = tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(health)
                    .add_service(SegmentServiceServer::new(agent))
                    .serve_with_incoming(UnixListenerStream::new(listener))
                    .await
                    .unwrap();
            });
            Harness { dir, lists, server }
        }

        fn socket(&self) -> PathBuf {
            self.dir.path().join("control.sock")
        }

        async fn ipcctl(&self, args: &[&str]) -> Output {
            ipcctl_with_socket(&self.socket(), args).await
        }
    }

    async fn ipcctl_with_socket(socket: &Path, args: &[&str]) -> Output {
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ipcctl"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output();
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("ipcctl hung")
            .unwrap()
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn list_fetches_every_page_and_prints_one_json_array() {
        let sut = Harness::start().await;
        let output = sut
            .ipcctl(&["segment", "list", "--tenant", "uid-1000", "-o", "json"])
            .await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let segments: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let ids: Vec<_> = segments
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(segments[0]["state"], "ACTIVE");
        assert_eq!(segments[0]["size_bytes"], 4096);

        let lists = sut.lists.lock().unwrap().clone();
        let tokens: Vec<_> = lists.iter().map(|r| r.page_token.as_str()).collect();
        assert_eq!(tokens, ["", "3"]);
        assert!(
            lists.iter().all(|r| r.filter == r#"tenant = "uid-1000""#),
            "{lists:?}"
        );
    }

    #[tokio::test]
    async fn list_limit_and_single_page_stop_early() {
        let sut = Harness::start().await;
        let output = sut.ipcctl(&["segment", "list", "--limit", "1"]).await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        assert_eq!(
            text(&output.stdout).lines().count(),
            2,
            "{}",
            text(&output.stdout)
        );

        let output = sut.ipcctl(&["segment", "list", "--all-pages=false"]).await;
        assert_eq!(output.status.code(), Some(0));
        assert_eq!(
            text(&output.stdout).lines().count(),
            3,
            "{}",
            text(&output.stdout)
        );
        assert_eq!(
            text(&output.stderr),
            "ipcctl: more results: continue with --page-token 3\n"
        );
    }

    #[tokio::test]
    async fn table_output_is_aligned_with_a_header() {
        let sut = Harness::start().await;
        let output = sut.ipcctl(&["segment", "get", "segments/2"]).await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        assert_eq!(
            text(&output.stdout),
            "ID  NAME   TENANT    SIZE  LIFETIME    STATE   ATTACHED  CREATED\n\
         2   seg-2  uid-1000  4KiB  persistent  active  0         -\n"
        );
        assert!(output.stderr.is_empty());
    }

    #[tokio::test]
    async fn not_found_exits_3_with_the_agents_message() {
        let sut = Harness::start().await;
        let output = sut.ipcctl(&["segment", "get", "9"]).await;
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(text(&output.stderr), "ipcctl: segment 9 not found\n");
        assert!(output.stdout.is_empty());
    }

    #[tokio::test]
    async fn quota_exceeded_exits_5_naming_the_quota() {
        let sut = Harness::start().await;
        let output = sut.ipcctl(&["segment", "create", "--size", "2MiB"]).await;
        assert_eq!(output.status.code(), Some(5));
        assert_eq!(
            text(&output.stderr),
            "ipcctl: quota exceeded: max_bytes (tenant uid-1000): max_bytes of tenant uid-1000 is 1048576\n"
        );
    }

    #[tokio::test]
    async fn create_sends_the_flags_and_prints_one_object() {
        let sut = Harness::start().await;
        let output = sut
            .ipcctl(&[
                "segment", "create", "--name", "frames", "--size", "64KiB", "--ttl", "30s", "-o",
                "yaml",
            ])
            .await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let stdout = text(&output.stdout);
        for line in [
            "id: 4\n",
            "name: frames\n",
            "size_bytes: 65536\n",
            "lifetime: TTL\n",
            "ttl_ms: 30000\n",
        ] {
            assert!(stdout.contains(line), "{line:?} missing from {stdout}");
        }
    }

    #[tokio::test]
    async fn delete_reports_each_failure_and_prints_the_rest() {
        let sut = Harness::start().await;
        let output = sut
            .ipcctl(&["segment", "delete", "1", "9", "-o", "json"])
            .await;
        assert_eq!(output.status.code(), Some(3));
        let deleted: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(deleted[0]["id"], 1);
        assert_eq!(deleted[0]["state"], "DRAINING");
        assert_eq!(
            text(&output.stderr),
            "ipcctl: segment 9: segment 9 not found\n"
        );
    }

    #[tokio::test]
    async fn health_prints_the_status_and_fails_unless_serving() {
        let sut = Harness::start().await;
        let output = sut.ipcctl(&["agent", "health"]).await;
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        assert_eq!(text(&output.stdout), "SERVING\n");

        let output = sut
            .ipcctl(&["agent", "health", "--service", "broken"])
            .await;
        assert_eq!(output.status.code(), Some(69));
        assert_eq!(text(&output.stdout), "NOT_SERVING\n");
        assert_eq!(
            text(&output.stderr),
            "ipcctl: the agent reports NOT_SERVING\n"
        );
    }

    #[tokio::test]
    async fn a_slow_agent_times_out_as_unavailable() {
        let sut = Harness::start().await;
        let output = sut
            .ipcctl(&["segment", "get", "666", "--timeout", "200ms"])
            .await;
        assert_eq!(output.status.code(), Some(69));
        assert_eq!(
            text(&output.stderr),
            "ipcctl: the agent did not answer within 200ms (see --timeout)\n"
        );
    }

    #[tokio::test]
    async fn a_service_the_agent_lacks_is_another_error() {
        let sut = Harness::start().await;
        let output = sut.ipcctl(&["agent", "info"]).await;
        assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    }

    #[tokio::test]
    async fn a_missing_socket_exits_69() {
        let dir = tempfile::tempdir().unwrap();
        let output = ipcctl_with_socket(&dir.path().join("nope.sock"), &["agent", "health"]).await;
        assert_eq!(output.status.code(), Some(69));
        let stderr = text(&output.stderr);
        assert!(
            stderr.starts_with("ipcctl: cannot connect to the agent at "),
            "{stderr}"
        );
        assert!(
            stderr.contains("nope.sock: No such file or directory"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }

    #[tokio::test]
    async fn the_socket_comes_from_the_environment_without_the_flag() {
        let sut = Harness::start().await;
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ipcctl"))
            .args(["agent", "health"])
            .env(ipcplane_proto::paths::ENV_CONTROL_SOCKET, sut.socket())
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    }

    #[tokio::test]
    async fn usage_errors_exit_2_without_contacting_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let output = ipcctl_with_socket(
            &dir.path().join("nope.sock"),
            &["segment", "create", "--size", "0"],
        )
        .await;
        assert_eq!(output.status.code(), Some(2));
        assert!(
            text(&output.stderr).contains("must be positive"),
            "{}",
            text(&output.stderr)
        );
        assert!(output.stdout.is_empty());
    }
}
