//! `ipcctl` as a process against the real agent: paging, output formats,
//! error details, exit codes, the stdout/stderr split and how it finds (or
//! fails to reach) the control socket. Each test starts its own agent.

use std::process::{Command, Output};

use ipcplane_e2e::{TestAgent, run, workspace_bin};
use ipcplane_proto::paths::ENV_CONTROL_SOCKET;
use ipcplane_proto::v1;
use serde_json::Value;

use super::{eventually, runtime};

/// `ipcctl --socket <agent's control.sock> <args>`.
fn ipcctl(agent: &TestAgent, args: &[&str]) -> Output {
    run(agent.ipcctl().args(args))
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("ipcctl prints UTF-8")
}

/// Asserts exit code `code`, showing stdout and stderr if it differs.
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// The JSON a successful command printed; its stderr must be empty.
fn json(output: &Output) -> Value {
    assert_exit(output, 0);
    assert_eq!(
        text(&output.stderr),
        "",
        "a success prints nothing on stderr"
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("not JSON ({err}):\n{}", text(&output.stdout)))
}

/// The elements of a JSON array.
fn array(value: &Value) -> &[Value] {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
}

/// The `id` of each element of a JSON array.
fn ids(list: &Value) -> Vec<u64> {
    array(list)
        .iter()
        .map(|item| item["id"].as_u64().expect("a numeric id"))
        .collect()
}

/// The tenant of this (test) process.
fn own_tenant() -> String {
    format!("uid-{}", rustix::process::getuid().as_raw())
}

/// Creates persistent segments named `names` through the SDK and returns
/// their ids in creation order.
fn create_segments(agent: &TestAgent, names: &[&str]) -> Vec<u64> {
    let client = agent.client();
    names
        .iter()
        .map(|name| {
            let segment = client
                .segment_builder()
                .name(*name)
                .size(4096)
                .create()
                .expect("create a segment");
            let id = segment.id().get();
            segment.detach().expect("detach");
            id
        })
        .collect()
}

/// A table checked for layout: a header of one-word column names, every
/// cell starting exactly under its header, columns at least two spaces
/// apart, no trailing spaces. Returns the header and the rows' cells.
fn table(stdout: &str) -> (Vec<String>, Vec<Vec<String>>) {
    assert!(stdout.is_ascii(), "{stdout}");
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    let cells = |line: &str| -> Vec<String> {
        assert!(!line.ends_with(' '), "trailing space in {line:?}");
        starts
            .iter()
            .enumerate()
            .map(|(column, &start)| {
                let end = starts.get(column + 1).map_or(line.len(), |&next| next);
                assert!(
                    line.len() > start && line.as_bytes()[start] != b' ',
                    "column {column} does not start at {start} in\n{header}\n{line}"
                );
                assert!(
                    start == 0 || line[..start].ends_with("  "),
                    "column {column} is not two spaces from the previous one in\n{header}\n{line}"
                );
                let cell = line[start..end.min(line.len())].trim_end();
                assert!(!cell.contains(' '), "cell {cell:?} spills over in {line:?}");
                cell.to_owned()
            })
            .collect()
    };
    let header_cells = cells(header);
    let rows = lines.map(cells).collect();
    (header_cells, rows)
}

#[test]
fn segment_list_fetches_every_page_and_prints_one_json_array_in_id_order() {
    let agent = TestAgent::start();
    let created = create_segments(&agent, &["s1", "s2", "s3", "s4", "s5"]);

    let listed = json(&ipcctl(
        &agent,
        &["segment", "list", "--page-size", "2", "-o", "json"],
    ));
    assert_eq!(ids(&listed), created);
    assert!(created.is_sorted(), "ids ascend: {created:?}");
    let names: Vec<_> = array(&listed).iter().map(|s| &s["name"]).collect();
    assert_eq!(names, ["s1", "s2", "s3", "s4", "s5"]);
    for segment in array(&listed) {
        assert_eq!(segment["tenant"], own_tenant());
        assert_eq!(segment["size_bytes"], 4096);
        assert_eq!(segment["state"], "ACTIVE");
    }

    // The filter flags reach the agent, on every page.
    let tenant = own_tenant();
    let mine = json(&ipcctl(
        &agent,
        &[
            "segment",
            "list",
            "--page-size",
            "2",
            "--tenant",
            &tenant,
            "-o",
            "json",
        ],
    ));
    assert_eq!(ids(&mine), created);
    let theirs = json(&ipcctl(
        &agent,
        &["segment", "list", "--tenant", "uid-4242", "-o", "json"],
    ));
    assert_eq!(ids(&theirs), [0u64; 0]);
    let named = json(&ipcctl(
        &agent,
        &["segment", "list", "--name", "s4", "-o", "json"],
    ));
    assert_eq!(ids(&named), [created[3]]);

    // The same in a table: one header, then every segment of every page.
    let output = ipcctl(&agent, &["segment", "list", "--page-size", "2"]);
    assert_exit(&output, 0);
    let (_, rows) = table(text(&output.stdout));
    let table_ids: Vec<u64> = rows.iter().map(|row| row[0].parse().unwrap()).collect();
    assert_eq!(table_ids, created);
}

#[test]
fn segment_list_stops_at_the_limit_or_after_one_page_with_the_token_for_the_next() {
    let agent = TestAgent::start();
    let created = create_segments(&agent, &["a", "b", "c", "d", "e"]);

    // --limit across pages and within one.
    let limited = json(&ipcctl(
        &agent,
        &[
            "segment",
            "list",
            "--page-size",
            "2",
            "--limit",
            "3",
            "-o",
            "json",
        ],
    ));
    assert_eq!(ids(&limited), created[..3]);
    let one = ipcctl(&agent, &["segment", "list", "--limit", "1"]);
    assert_exit(&one, 0);
    let (_, rows) = table(text(&one.stdout));
    assert_eq!(rows.len(), 1, "{}", text(&one.stdout));
    assert_eq!(rows[0][0], created[0].to_string());

    // --all-pages=false: one page, and the token for the next on stderr.
    let first = ipcctl(
        &agent,
        &[
            "segment",
            "list",
            "--page-size",
            "2",
            "--all-pages=false",
            "-o",
            "json",
        ],
    );
    assert_exit(&first, 0);
    let page: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(ids(&page), created[..2]);
    let hint = text(&first.stderr);
    let token = hint
        .strip_prefix("ipcctl: more results: continue with --page-token ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("no continuation hint in {hint:?}"));
    assert!(!token.is_empty() && !token.contains(char::is_whitespace));

    // Following the token (all pages from there) returns the rest.
    let rest = json(&ipcctl(
        &agent,
        &[
            "segment",
            "list",
            "--page-size",
            "2",
            "--page-token",
            token,
            "-o",
            "json",
        ],
    ));
    assert_eq!(ids(&rest), created[2..]);

    // Page by page, every hint leads to the next page until none is printed.
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let mut args = vec![
            "segment",
            "list",
            "--page-size",
            "2",
            "--all-pages=false",
            "-o",
            "json",
        ];
        if !token.is_empty() {
            args.extend(["--page-token", &token]);
        }
        let output = ipcctl(&agent, &args);
        assert_exit(&output, 0);
        pages.push(ids(&serde_json::from_slice(&output.stdout).unwrap()));
        let hint = text(&output.stderr);
        if hint.is_empty() {
            break;
        }
        token = hint
            .strip_prefix("ipcctl: more results: continue with --page-token ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("unexpected stderr {hint:?}"))
            .to_owned();
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    assert_eq!(
        pages,
        [
            created[..2].to_vec(),
            created[2..4].to_vec(),
            created[4..].to_vec()
        ]
    );
}

#[test]
fn table_output_is_aligned_under_a_header_and_wide_output_has_more_columns() {
    let agent = TestAgent::start();
    let client = agent.client();
    let short = client
        .segment_builder()
        .name("a")
        .size(4096)
        .create()
        .unwrap();
    let long = client
        .segment_builder()
        .name("a-much-longer-name")
        .size(1 << 20)
        .create()
        .unwrap();

    let output = ipcctl(&agent, &["segment", "list"]);
    assert_exit(&output, 0);
    assert_eq!(text(&output.stderr), "");
    let (header, rows) = table(text(&output.stdout));
    assert_eq!(
        header,
        [
            "ID", "NAME", "TENANT", "KIND", "SIZE", "LIFETIME", "STATE", "ATTACHED", "CREATED"
        ]
    );
    assert_eq!(rows.len(), 2, "{}", text(&output.stdout));
    for (row, (segment, name, size)) in rows
        .iter()
        .zip([(&short, "a", "4KiB"), (&long, "a-much-longer-name", "1MiB")])
    {
        let created = &row[8];
        assert_eq!(
            row[..8],
            [
                segment.id().to_string(),
                name.to_owned(),
                own_tenant(),
                "plain".to_owned(),
                size.to_owned(),
                "persistent".to_owned(),
                "active".to_owned(),
                "1".to_owned(),
            ],
            "{}",
            text(&output.stdout)
        );
        // RFC 3339 to the second.
        assert!(
            created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
            "{created}"
        );
    }

    let output = ipcctl(&agent, &["segment", "list", "-o", "wide"]);
    assert_exit(&output, 0);
    let (wide_header, wide_rows) = table(text(&output.stdout));
    assert_eq!(
        wide_header,
        [
            "ID",
            "NAME",
            "TENANT",
            "KIND",
            "SIZE",
            "PARAMS",
            "MODE",
            "LIFETIME",
            "TTL",
            "STATE",
            "ATTACHED",
            "OWNER_PID",
            "OWNER_UID",
            "CREATED",
            "LAST_ATTACHED",
        ]
    );
    assert!(wide_header.len() > header.len());
    for row in &wide_rows {
        assert_eq!(row[5], "-", "no parameters");
        assert_eq!(row[6], "rw");
        assert_eq!(row[8], "-", "no ttl");
        assert_eq!(row[11], std::process::id().to_string());
        assert_eq!(
            row[12],
            rustix::process::getuid().as_raw().to_string(),
            "{row:?}"
        );
    }
    let wide_names: Vec<_> = wide_rows.iter().map(|row| row[1].as_str()).collect();
    assert_eq!(wide_names, ["a", "a-much-longer-name"]);
}

#[test]
fn yaml_output_parses_to_the_same_document_as_json() {
    let agent = TestAgent::start();
    let created = create_segments(&agent, &["left", "right"]);
    let id = created[0].to_string();

    for args in [
        vec!["segment", "list"],
        vec!["segment", "get", &id],
        vec!["quota", "get"],
        vec!["tenant", "list"],
    ] {
        let as_json = json(&ipcctl(&agent, &[&args[..], &["-o", "json"]].concat()));
        let output = ipcctl(&agent, &[&args[..], &["-o", "yaml"]].concat());
        assert_exit(&output, 0);
        let as_yaml: Value = serde_yaml::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("not YAML ({err}):\n{}", text(&output.stdout)));
        assert_eq!(as_yaml, as_json, "{args:?}");
        // Block style, not JSON (which would parse as YAML too).
        let yaml = text(&output.stdout);
        assert!(!yaml.starts_with(['{', '[']), "{args:?}: {yaml}");
    }
    let output = ipcctl(&agent, &["segment", "list", "-o", "yaml"]);
    assert_exit(&output, 0);
    let yaml = text(&output.stdout);
    assert!(yaml.starts_with("- id: "), "{yaml}");
    assert!(yaml.contains("\n  name: right\n"), "{yaml}");
    let listed: Value = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(ids(&listed), created);
    assert_eq!(listed[1]["name"], "right");
}

#[test]
fn getting_a_missing_segment_exits_3_with_the_agents_message() {
    let agent = TestAgent::start();
    let message = runtime().block_on(async {
        let mut segments =
            v1::segment_service_client::SegmentServiceClient::new(agent.channel().await);
        let status = segments
            .get_segment(v1::GetSegmentRequest { id: 999 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        status.message().to_owned()
    });
    assert!(!message.is_empty());

    for id in ["999", "segments/999"] {
        let output = ipcctl(&agent, &["segment", "get", id]);
        assert_exit(&output, 3);
        assert_eq!(text(&output.stderr), format!("ipcctl: {message}\n"));
        assert_eq!(text(&output.stdout), "");
    }
}

#[test]
fn a_segment_over_the_configured_size_limit_exits_5_naming_max_segment_bytes() {
    let agent = TestAgent::start_with("[quota]\nmax_segment_bytes = \"1MiB\"\n");
    let output = ipcctl(&agent, &["segment", "create", "--size", "2MiB"]);
    assert_exit(&output, 5);
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    let prefix = format!(
        "ipcctl: quota exceeded: max_segment_bytes (tenant {}): ",
        own_tenant()
    );
    assert!(stderr.starts_with(&prefix), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.len() > prefix.len() + 1,
        "the agent's message follows"
    );

    let listed = json(&ipcctl(&agent, &["segment", "list", "-o", "json"]));
    assert_eq!(array(&listed).len(), 0, "nothing was created");
}

#[test]
fn a_segment_over_a_max_segments_set_with_ipcctl_exits_5_naming_max_segments() {
    let agent = TestAgent::start();
    let tenant = own_tenant();
    create_segments(&agent, &["one", "two"]);
    let set = json(&ipcctl(
        &agent,
        &["quota", "set", &tenant, "--max-segments", "2", "-o", "json"],
    ));
    assert_eq!(set["max_segments"], 2);

    let output = ipcctl(&agent, &["segment", "create", "--size", "4096"]);
    assert_exit(&output, 5);
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "ipcctl: quota exceeded: max_segments (tenant {tenant}): "
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let listed = json(&ipcctl(&agent, &["segment", "list", "-o", "json"]));
    assert_eq!(array(&listed).len(), 2, "nothing was created");
}

#[test]
fn create_sends_every_flag_and_prints_the_one_segment_created() {
    let agent = TestAgent::start();
    let output = ipcctl(
        &agent,
        &[
            "segment",
            "create",
            "--name",
            "frames",
            "--size",
            "64KiB",
            "--mode",
            "ro-others",
            "--lifetime",
            "ttl",
            "--ttl",
            "30s",
            "-o",
            "json",
        ],
    );
    let created = json(&output);
    assert!(created.is_object(), "one object, not a list: {created}");
    assert_eq!(created["name"], "frames");
    assert_eq!(created["size_bytes"], 65536);
    assert_eq!(created["mode"], "READ_ONLY_FOR_OTHERS");
    assert_eq!(created["lifetime"], "TTL");
    assert_eq!(created["ttl_ms"], 30_000);
    assert_eq!(created["tenant"], own_tenant());
    assert_eq!(created["state"], "ACTIVE");
    let id = created["id"].as_u64().expect("an id");

    // The agent holds exactly what was asked for.
    let stored = runtime().block_on(async {
        let mut segments =
            v1::segment_service_client::SegmentServiceClient::new(agent.channel().await);
        segments
            .get_segment(v1::GetSegmentRequest { id })
            .await
            .expect("the created segment exists")
            .into_inner()
    });
    assert_eq!(stored.name, "frames");
    assert_eq!(stored.size_bytes, 65536);
    assert_eq!(stored.mode(), v1::SharingMode::ReadOnlyForOthers);
    assert_eq!(stored.lifetime(), v1::Lifetime::Ttl);
    assert_eq!(stored.ttl_ms, 30_000);

    // --ttl alone implies --lifetime ttl; a table shows the one row.
    let output = ipcctl(
        &agent,
        &[
            "segment", "create", "--name", "cache", "--size", "4096", "--ttl", "10m",
        ],
    );
    assert_exit(&output, 0);
    let (header, rows) = table(text(&output.stdout));
    assert_eq!(rows.len(), 1, "{}", text(&output.stdout));
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows[0][column("NAME")], "cache");
    assert_eq!(rows[0][column("LIFETIME")], "ttl");
    assert_eq!(rows[0][column("SIZE")], "4KiB");
}

#[test]
fn deleting_several_segments_reports_each_failure_and_prints_the_deleted_ones() {
    let agent = TestAgent::start();
    let created = create_segments(&agent, &["first", "second"]);
    let message = |id: u64| {
        runtime().block_on(async {
            let mut segments =
                v1::segment_service_client::SegmentServiceClient::new(agent.channel().await);
            segments
                .delete_segment(v1::DeleteSegmentRequest { id })
                .await
                .unwrap_err()
                .message()
                .to_owned()
        })
    };
    let (first, second) = (created[0].to_string(), created[1].to_string());

    let output = ipcctl(
        &agent,
        &[
            "segment", "delete", &first, "998", &second, "999", "-o", "json",
        ],
    );
    assert_exit(&output, 3);
    let deleted: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", text(&output.stdout)));
    assert_eq!(ids(&deleted), created);
    assert_eq!(deleted[0]["name"], "first");
    assert_eq!(
        text(&output.stderr),
        format!(
            "ipcctl: segment 998: {}\nipcctl: segment 999: {}\n",
            message(998),
            message(999)
        )
    );

    let listed = json(&ipcctl(&agent, &["segment", "list", "-o", "json"]));
    assert_eq!(array(&listed).len(), 0, "{listed}");

    // Deleting one missing segment is a plain not-found.
    let output = ipcctl(&agent, &["segment", "delete", &first]);
    assert_exit(&output, 3);
    assert_eq!(
        text(&output.stderr),
        format!("ipcctl: {}\n", message(created[0]))
    );
}

#[test]
fn quota_set_and_get_round_trip_and_reset_restores_the_configured_defaults() {
    let agent = TestAgent::start_with(
        "[quota]\nmax_bytes = \"1GiB\"\nmax_segments = 100\nmax_segment_bytes = \"64MiB\"\n",
    );
    let tenant = own_tenant();
    create_segments(&agent, &["used"]);

    let defaults = json(&ipcctl(&agent, &["quota", "get", &tenant, "-o", "json"]));
    assert_eq!(defaults["tenant"], tenant.as_str());
    assert_eq!(defaults["max_bytes"], 1u64 << 30);
    assert_eq!(defaults["max_segments"], 100);
    assert_eq!(defaults["max_segment_bytes"], 64u64 << 20);
    assert_eq!(defaults["used_segments"], 1);
    assert_eq!(defaults["used_bytes"], 4096);
    assert_eq!(defaults["overridden"], false);
    // Without a tenant, quota get shows the caller's own.
    assert_eq!(
        json(&ipcctl(&agent, &["quota", "get", "-o", "json"])),
        defaults
    );

    let set = json(&ipcctl(
        &agent,
        &[
            "quota",
            "set",
            &tenant,
            "--max-bytes",
            "64MiB",
            "--max-segments",
            "7",
            "-o",
            "json",
        ],
    ));
    assert_eq!(set["max_bytes"], 64u64 << 20);
    assert_eq!(set["max_segments"], 7);
    assert_eq!(set["max_segment_bytes"], 64u64 << 20, "left as it was");
    assert_eq!(set["overridden"], true);
    assert_eq!(
        json(&ipcctl(&agent, &["quota", "get", &tenant, "-o", "json"])),
        set
    );

    // Only the limit named changes; unlimited is null.
    let unlimited = json(&ipcctl(
        &agent,
        &[
            "quota",
            "set",
            &tenant,
            "--max-segment-bytes",
            "unlimited",
            "-o",
            "json",
        ],
    ));
    assert_eq!(unlimited["max_segment_bytes"], Value::Null);
    assert_eq!(unlimited["max_bytes"], 64u64 << 20);
    assert_eq!(unlimited["max_segments"], 7);
    let table_output = ipcctl(&agent, &["quota", "get", &tenant]);
    assert_exit(&table_output, 0);
    let (header, rows) = table(text(&table_output.stdout));
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows[0][column("MAX_SEGMENT_BYTES")], "unlimited");
    assert_eq!(rows[0][column("MAX_BYTES")], "64MiB");
    assert_eq!(rows[0][column("OVERRIDDEN")], "true");

    let reset = json(&ipcctl(
        &agent,
        &["quota", "set", &tenant, "--reset", "-o", "json"],
    ));
    assert_eq!(reset, defaults);
    assert_eq!(
        json(&ipcctl(&agent, &["quota", "get", &tenant, "-o", "json"])),
        defaults
    );
}

#[test]
fn client_list_shows_each_client_process_until_it_exits() {
    let agent = TestAgent::start();
    let client = agent.client();
    let segment = client
        .segment_builder()
        .name("held")
        .size(4096)
        .create()
        .unwrap();
    let pid = std::process::id();
    let uid = rustix::process::getuid().as_raw();

    let clients = json(&ipcctl(&agent, &["client", "list", "-o", "json"]));
    let ours: Vec<_> = array(&clients).iter().filter(|c| c["pid"] == pid).collect();
    assert_eq!(ours.len(), 1, "{clients}");
    assert_eq!(ours[0]["uid"], uid);
    assert_eq!(ours[0]["tenant"], own_tenant());
    assert_eq!(ours[0]["attachment_count"], 1);
    assert!(ours[0]["connect_time"].is_string(), "{clients}");

    // Filtered by pid, and as a table.
    let by_pid = json(&ipcctl(
        &agent,
        &["client", "list", "--pid", &pid.to_string(), "-o", "json"],
    ));
    assert_eq!(ids(&by_pid), [ours[0]["id"].as_u64().unwrap()]);
    let output = ipcctl(&agent, &["client", "list"]);
    assert_exit(&output, 0);
    let (header, rows) = table(text(&output.stdout));
    assert_eq!(
        header,
        ["ID", "PID", "UID", "TENANT", "ATTACHMENTS", "CONNECTED"]
    );
    assert!(
        rows.iter().any(|row| row[1] == pid.to_string()),
        "{}",
        text(&output.stdout)
    );

    // A client is a process: detaching and disconnecting keep it listed,
    // with no attachment, until it exits.
    drop(segment);
    drop(client);
    eventually("the dropped segment is detached", || {
        let clients = json(&ipcctl(&agent, &["client", "list", "-o", "json"]));
        array(&clients)
            .iter()
            .any(|c| c["pid"] == pid && c["attachment_count"] == 0)
    });
    let mut holder = agent
        .peer(super::PEER.as_ref())
        .args(["hold", "held-by-child", "4096"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut first_line,
    )
    .unwrap();
    assert!(first_line.starts_with("id="), "{first_line}");
    let child = holder.id();
    let listed = |pid: u32| {
        let clients = json(&ipcctl(&agent, &["client", "list", "-o", "json"]));
        array(&clients).iter().any(|c| c["pid"] == pid)
    };
    assert!(listed(child));
    drop(holder.stdin.take());
    holder.wait().unwrap();
    eventually("the exited process is no longer listed", || !listed(child));
}

#[test]
fn tenant_list_shows_each_tenant_with_its_clients_and_usage() {
    let agent = TestAgent::start();
    let client = agent.client();
    let _segment = client
        .segment_builder()
        .name("mine")
        .size(8192)
        .create()
        .unwrap();

    let tenants = json(&ipcctl(&agent, &["tenant", "list", "-o", "json"]));
    let ours: Vec<_> = array(&tenants)
        .iter()
        .filter(|t| t["name"] == own_tenant())
        .collect();
    assert_eq!(ours.len(), 1, "{tenants}");
    assert_eq!(ours[0]["client_count"], 1);
    assert_eq!(ours[0]["quota"]["tenant"], own_tenant());
    assert_eq!(ours[0]["quota"]["used_segments"], 1);
    assert_eq!(ours[0]["quota"]["used_bytes"], 8192);

    let output = ipcctl(&agent, &["tenant", "list"]);
    assert_exit(&output, 0);
    let (header, rows) = table(text(&output.stdout));
    assert_eq!(header, ["NAME", "CLIENTS", "SEGMENTS", "BYTES"]);
    assert!(
        rows.contains(&vec![
            own_tenant(),
            "1".to_owned(),
            "1".to_owned(),
            "8KiB".to_owned()
        ]),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn audit_list_filters_by_outcome_action_and_since() {
    let agent = TestAgent::start_with("[quota]\nmax_segment_bytes = \"64KiB\"\n");
    let allowed = create_segments(&agent, &["fits"]);
    let refused = ipcctl(&agent, &["segment", "create", "--size", "128KiB"]);
    assert_exit(&refused, 5);

    let denied = json(&ipcctl(
        &agent,
        &["audit", "list", "--outcome", "denied", "-o", "json"],
    ));
    assert!(!array(&denied).is_empty(), "{denied}");
    assert!(
        array(&denied).iter().all(|e| e["outcome"] == "DENIED"),
        "{denied}"
    );
    let refusal: Vec<_> = array(&denied)
        .iter()
        .filter(|e| e["action"] == "segment.create")
        .collect();
    assert_eq!(refusal.len(), 1, "{denied}");
    assert!(
        refusal[0]["detail"]
            .as_str()
            .unwrap()
            .contains("max_segment_bytes"),
        "{denied}"
    );

    let creates = json(&ipcctl(
        &agent,
        &["audit", "list", "--action", "segment.create", "-o", "json"],
    ));
    assert!(
        array(&creates)
            .iter()
            .all(|e| e["action"] == "segment.create"),
        "{creates}"
    );
    let outcomes: Vec<_> = array(&creates).iter().map(|e| &e["outcome"]).collect();
    assert_eq!(outcomes, ["ALLOWED", "DENIED"], "oldest first");
    assert_eq!(creates[0]["resource"], format!("segments/{}", allowed[0]));
    let both = json(&ipcctl(
        &agent,
        &[
            "audit",
            "list",
            "--action",
            "segment.create",
            "--outcome",
            "allowed",
            "-o",
            "json",
        ],
    ));
    assert_eq!(ids(&both), [creates[0]["id"].as_u64().unwrap()]);

    // Everything so far happened in the last ten minutes.
    let before = runtime().block_on(agent.audit_events());
    let recent = json(&ipcctl(
        &agent,
        &["audit", "list", "--since", "10m", "-o", "json"],
    ));
    let recent_ids = ids(&recent);
    assert!(recent_ids.is_sorted(), "{recent_ids:?}");
    for event in &before {
        assert!(recent_ids.contains(&event.id), "{} missing", event.id);
    }
    assert!(array(&recent).iter().any(|e| e["action"] == "agent.start"));
    // From the refusal on: the agent's start is left out.
    let since = refusal[0]["time"].as_str().unwrap();
    let later = json(&ipcctl(
        &agent,
        &["audit", "list", "--since", since, "-o", "json"],
    ));
    assert_eq!(later[0]["id"], refusal[0]["id"], "{later}");
    assert!(
        !array(&later).iter().any(|e| e["action"] == "agent.start"),
        "{later}"
    );
    let future = json(&ipcctl(
        &agent,
        &[
            "audit",
            "list",
            "--since",
            "2999-01-01T00:00:00Z",
            "-o",
            "json",
        ],
    ));
    assert_eq!(future, Value::Array(Vec::new()));
}

#[test]
fn agent_info_reports_the_running_agents_version_pid_and_counts() {
    let agent = TestAgent::start();
    let client = agent.client();
    let _small = client.segment_builder().size(4096).create().unwrap();
    let _large = client.segment_builder().size(8192).create().unwrap();

    let info = json(&ipcctl(&agent, &["agent", "info", "-o", "json"]));
    assert!(info.is_object(), "{info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["pid"], agent.pid());
    assert_eq!(info["segment_count"], 2);
    assert_eq!(info["client_count"], 1);
    assert_eq!(info["tenant_count"], 1);
    assert_eq!(info["total_bytes"], 4096 + 8192);
    assert_eq!(
        info["grant_socket"],
        agent.grant_socket().display().to_string()
    );
    assert_eq!(
        info["protocol_version"],
        ipcplane_proto::GRANT_PROTOCOL_VERSION
    );
    assert!(info["uptime_ms"].is_u64(), "{info}");
    assert!(info["start_time"].is_string(), "{info}");

    let output = ipcctl(&agent, &["agent", "info"]);
    assert_exit(&output, 0);
    let (header, rows) = table(text(&output.stdout));
    assert_eq!(
        header,
        [
            "VERSION", "PID", "UPTIME", "SEGMENTS", "CLIENTS", "TENANTS", "BYTES"
        ]
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], agent.pid().to_string());
    assert_eq!(rows[0][3..], ["2", "1", "1", "12KiB"]);
}

#[test]
fn health_prints_serving_for_the_agent_and_each_service_and_exits_0() {
    let agent = TestAgent::start();
    let output = ipcctl(&agent, &["agent", "health"]);
    assert_exit(&output, 0);
    assert_eq!(text(&output.stdout), "SERVING\n");
    assert_eq!(text(&output.stderr), "");

    let as_json = json(&ipcctl(&agent, &["agent", "health", "-o", "json"]));
    assert_eq!(as_json, serde_json::json!({"status": "SERVING"}));

    // Each service reports too, as probes of one API expect.
    let segments = ipcctl(
        &agent,
        &["agent", "health", "--service", "ipcplane.v1.SegmentService"],
    );
    assert_exit(&segments, 0);
    assert_eq!(text(&segments.stdout), "SERVING\n");
}

#[test]
fn the_socket_comes_from_ipcplane_control_socket_without_the_flag() {
    let agent = TestAgent::start();
    let from_env = run(Command::new(workspace_bin("ipcctl"))
        .env(ENV_CONTROL_SOCKET, agent.control_socket())
        .args(["agent", "info", "-o", "json"]));
    assert_eq!(json(&from_env)["pid"], agent.pid());

    // The variable is really what is used ...
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("elsewhere.sock");
    let wrong = run(Command::new(workspace_bin("ipcctl"))
        .env(ENV_CONTROL_SOCKET, &missing)
        .args(["agent", "health"]));
    assert_exit(&wrong, 69);
    assert!(
        text(&wrong.stderr).contains(&missing.display().to_string()),
        "{}",
        text(&wrong.stderr)
    );
    // ... and --socket wins over it.
    let flag = run(Command::new(workspace_bin("ipcctl"))
        .env(ENV_CONTROL_SOCKET, &missing)
        .arg("--socket")
        .arg(agent.control_socket())
        .args(["agent", "health"]));
    assert_exit(&flag, 0);
}

#[test]
fn a_filter_the_agent_rejects_exits_2_with_its_message() {
    let agent = TestAgent::start();
    let output = ipcctl(&agent, &["segment", "list", "--filter", "colour = red"]);
    assert_exit(&output, 2);
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("ipcctl: "), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
