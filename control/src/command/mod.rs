//! One module per noun, one function per verb, plus what they share:
//! connecting to the control socket, AIP-160 filters and paging.

pub(crate) mod agent;
pub(crate) mod audit;
pub(crate) mod client;
pub(crate) mod quota;
pub(crate) mod segment;
pub(crate) mod tenant;
pub(crate) mod watch;

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;
use crate::cli::ListArgs;

/// Opens a gRPC channel to the agent over its UNIX control socket.
///
/// # Errors
/// [`Error::Connect`] with the innermost cause if the socket cannot be connected.
pub(crate) async fn connect(socket: &Path) -> Result<Channel, Error> {
    let path = socket.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    });
    // The authority is only a placeholder for the :authority header; the
    // connector ignores the URI.
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|err| {
            let mut innermost: &dyn std::error::Error = &err;
            let mut kind = std::io::ErrorKind::Other;
            while let Some(source) = innermost.source() {
                innermost = source;
                if let Some(io) = innermost.downcast_ref::<std::io::Error>() {
                    kind = io.kind();
                }
            }
            Error::Connect {
                socket: PathBuf::from(socket),
                kind,
                reason: innermost.to_string(),
            }
        })
}

/// An AIP-160 filter of `field = value` comparisons joined by `AND`.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    terms: Vec<String>,
}

impl Filter {
    /// Adds `field = "value"` (quoted, with `"` and `\` escaped) if `value` is given.
    pub(crate) fn string(mut self, field: &str, value: Option<&str>) -> Self {
        if let Some(value) = value {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
            self.terms.push(format!("{field} = \"{escaped}\""));
        }
        self
    }

    /// Adds `field = number` if `value` is given.
    pub(crate) fn number(mut self, field: &str, value: Option<u32>) -> Self {
        if let Some(value) = value {
            self.terms.push(format!("{field} = {value}"));
        }
        self
    }

    /// Adds a raw expression from `--filter`, unless it is blank.
    pub(crate) fn raw(mut self, expression: Option<&str>) -> Self {
        if let Some(expression) = expression.map(str::trim).filter(|e| !e.is_empty()) {
            self.terms.push(expression.to_owned());
        }
        self
    }

    /// The filter text; empty when nothing was added.
    pub(crate) fn build(self) -> String {
        self.terms.join(" AND ")
    }
}

/// One page of a list call: its items and the next page token ("" at the end).
pub(crate) type Page<T> = (Vec<T>, String);

/// Calls `fetch(page_size, page_token)` page after page as `list` asks:
/// every page or one, from `--page-token`, up to `--limit` items.
///
/// # Errors
/// The first failed call's status, or [`Error::Protocol`] if the agent
/// repeats a page token.
pub(crate) async fn fetch_pages<T>(
    list: &ListArgs,
    mut fetch: impl AsyncFnMut(i32, String) -> Result<Page<T>, Status>,
) -> Result<Vec<T>, Error> {
    let limit = list
        .limit
        .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    let page_size = page_size(list.page_size, list.limit);
    let mut items = Vec::new();
    let mut token = list.page_token.clone().unwrap_or_default();
    loop {
        let (page, next) = fetch(page_size, token.clone()).await?;
        items.extend(page);
        if let Some(limit) = limit
            && items.len() >= limit
        {
            items.truncate(limit);
            return Ok(items);
        }
        if next.is_empty() {
            return Ok(items);
        }
        if !list.all_pages {
            eprintln!("ipcctl: more results: continue with --page-token {next}");
            return Ok(items);
        }
        if next == token {
            return Err(Error::Protocol(format!("page token {next:?} repeated")));
        }
        token = next;
    }
}

/// The page size to ask for: `--page-size`, else a `--limit` that fits in one
/// page, else 0 (the agent's default).
fn page_size(page_size: Option<i32>, limit: Option<u64>) -> i32 {
    const MAX_PAGE_SIZE: i32 = 1000;
    page_size
        .or_else(|| {
            limit
                .and_then(|limit| i32::try_from(limit).ok())
                .filter(|&n| n <= MAX_PAGE_SIZE)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_args(all_pages: bool, limit: Option<u64>, page_token: Option<&str>) -> ListArgs {
        ListArgs {
            filter: None,
            page_size: None,
            all_pages,
            page_token: page_token.map(str::to_owned),
            limit,
        }
    }

    /// Serves `pages` in order, recording the tokens asked for.
    async fn run_pages(
        list: &ListArgs,
        pages: &[(&[u32], &str)],
    ) -> (Result<Vec<u32>, Error>, Vec<(i32, String)>) {
        let mut asked = Vec::new();
        let mut next = pages.iter();
        let result = fetch_pages(list, async |page_size, token| {
            asked.push((page_size, token));
            let (items, token) = next.next().expect("asked for a page past the end");
            Ok((items.to_vec(), (*token).to_owned()))
        })
        .await;
        (result, asked)
    }

    #[test]
    fn filters_quote_strings_and_join_with_and() {
        let sut = Filter::default()
            .string("tenant", Some("t"))
            .string("name", Some("n"))
            .number("owner_pid", Some(42))
            .build();
        assert_eq!(sut, r#"tenant = "t" AND name = "n" AND owner_pid = 42"#);
    }

    #[test]
    fn filters_escape_quotes_and_backslashes() {
        let sut = Filter::default()
            .string("name", Some(r#"say "hi" \o/"#))
            .build();
        assert_eq!(sut, r#"name = "say \"hi\" \\o/""#);
    }

    #[test]
    fn filters_skip_absent_values_and_and_the_raw_expression() {
        assert_eq!(
            Filter::default()
                .string("tenant", None)
                .number("pid", None)
                .build(),
            ""
        );
        let sut = Filter::default()
            .string("tenant", Some("t"))
            .raw(Some(" state = \"DRAINING\" "))
            .build();
        assert_eq!(sut, r#"tenant = "t" AND state = "DRAINING""#);
        assert_eq!(Filter::default().raw(Some("  ")).build(), "");
    }

    #[test]
    fn page_size_follows_the_flag_or_a_small_limit() {
        assert_eq!(page_size(None, None), 0);
        assert_eq!(page_size(Some(50), Some(10)), 50);
        assert_eq!(page_size(None, Some(10)), 10);
        assert_eq!(page_size(None, Some(5_000)), 0);
    }

    #[tokio::test]
    async fn fetches_every_page_by_default() {
        let pages: &[(&[u32], &str)] = &[(&[1, 2], "a"), (&[3], "b"), (&[4], "")];
        let (result, asked) = run_pages(&list_args(true, None, None), pages).await;
        assert_eq!(result.unwrap(), [1, 2, 3, 4]);
        let tokens: Vec<_> = asked.into_iter().map(|(_, token)| token).collect();
        assert_eq!(tokens, ["", "a", "b"]);
    }

    #[tokio::test]
    async fn stops_at_the_limit() {
        let pages: &[(&[u32], &str)] = &[(&[1, 2], "a"), (&[3, 4], "b")];
        let (result, asked) = run_pages(&list_args(true, Some(3), None), pages).await;
        assert_eq!(result.unwrap(), [1, 2, 3]);
        assert_eq!(asked, [(3, String::new()), (3, "a".to_owned())]);
    }

    #[tokio::test]
    async fn fetches_one_page_from_a_token_when_asked() {
        let pages: &[(&[u32], &str)] = &[(&[5, 6], "c")];
        let (result, asked) = run_pages(&list_args(false, None, Some("b")), pages).await;
        assert_eq!(result.unwrap(), [5, 6]);
        assert_eq!(asked, [(0, "b".to_owned())]);
    }

    #[tokio::test]
    async fn a_repeated_page_token_is_an_error_not_a_loop() {
        let pages: &[(&[u32], &str)] = &[(&[1], "a"), (&[1], "a")];
        let (result, _) = run_pages(&list_args(true, None, None), pages).await;
        assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_failed_page_fails_the_list() {
        let result = fetch_pages::<u32>(&list_args(true, None, None), async |_, _| {
            Err(Status::permission_denied("not an admin"))
        })
        .await;
        assert_eq!(result.unwrap_err().exit_code(), 4);
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_is_unavailable() {
        let dir = std::env::temp_dir().join(format!("ipcctl-test-{}", std::process::id()));
        let socket = dir.join("missing.sock");
        let err = connect(&socket).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Connect {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 69);
        let report = err.report();
        assert!(report.contains("missing.sock"), "{report}");
        assert!(report.contains("No such file or directory"), "{report}");
    }
}
