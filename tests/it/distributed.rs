//! The same SQL on a Ballista cluster: a `tracelake scheduler` and two `tracelake executor`
//! processes on loopback, queried through [`tracelake::distributed::remote_context`], give the
//! rows one process gives (aggregates, a lookup by trace id, `trace_tree`, `trace_summaries`,
//! `service_graph`, a parent/child self-join), and an `INSERT` run on the cluster is committed
//! to the lake. The client itself reads nothing while the cluster runs its queries.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use ballista::prelude::SessionConfigExt;
use datafusion::prelude::{SessionConfig, SessionContext};
use tracelake::store::telemetry::{BACKENDS, OPERATIONS};
use tracelake::{TableOptions, TraceLake};

use crate::common::{day, tracelake_bin};

/// Child processes killed when the test ends, however it ends.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that is free, and whose next port is free too (an executor takes both).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports on loopback");
}

fn wait_for_port(port: u16, nodes: &mut Nodes) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        for child in &mut nodes.0 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("a cluster node exited early: {status}");
            }
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every request the client's stores made so far.
fn requests(lake: &TraceLake) -> u64 {
    BACKENDS
        .iter()
        .flat_map(|b| OPERATIONS.iter().map(move |o| (b, o)))
        .map(|(b, o)| lake.metrics().operation_count(b, o))
        .sum()
}

/// The rows of `sql`, pretty-printed, in order.
async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches: Vec<RecordBatch> = ctx
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_and_two_executor_processes_answer_as_one_process_does() {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("spans");
    let options = TableOptions::default();
    let lake = TraceLake::create_with_options(location.to_str().unwrap(), &options)
        .await
        .unwrap();
    // Several commits over three days: several files and partitions to spread over tasks.
    for d in 0..3 {
        for part in 0..2 {
            lake.append_spans(&day(10 * d as u64 + part, d, 150))
                .await
                .unwrap();
        }
    }

    let scheduler_port = free_port_pair();
    let mut nodes = Nodes(Vec::new());
    let scheduler_bind = format!("127.0.0.1:{scheduler_port}");
    let spans_of = |node: &str| dir.path().join(format!("{node}.spans.jsonl"));
    nodes.0.push(
        Command::new(tracelake_bin())
            .args(["scheduler", "--bind", &scheduler_bind, "--export-spans"])
            .arg(spans_of("scheduler"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(scheduler_port, &mut nodes);
    let mut metrics_ports = Vec::new();
    for i in 0..2 {
        let port = free_port_pair();
        let metrics_port = free_port_pair();
        let work_dir = dir.path().join(format!("executor-{i}"));
        std::fs::create_dir_all(&work_dir).unwrap();
        nodes.0.push(
            Command::new(tracelake_bin())
                .args([
                    "executor",
                    "--scheduler",
                    &scheduler_bind,
                    "--bind",
                    &format!("127.0.0.1:{port}"),
                    "--slots",
                    "2",
                    "--work-dir",
                    work_dir.to_str().unwrap(),
                    "--metrics-addr",
                    &format!("127.0.0.1:{metrics_port}"),
                    "--export-spans",
                ])
                .arg(spans_of(&format!("executor-{i}")))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for_port(port, &mut nodes);
        wait_for_port(metrics_port, &mut nodes);
        metrics_ports.push(metrics_port);
    }

    let config = SessionConfig::new().with_target_partitions(4);
    let local = lake.session_context_with_config(config.clone()).unwrap();
    let cluster = tracelake::distributed::remote_context(
        &lake,
        &format!("df://127.0.0.1:{scheduler_port}"),
        config,
    )
    .await
    .unwrap();

    let some_trace = {
        let batches = local
            .sql("SELECT trace_id FROM spans ORDER BY trace_id LIMIT 1 OFFSET 77")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .nth(3)
            .unwrap()
            .trim_matches(|c: char| c == '|' || c.is_whitespace())
            .to_string()
    };
    assert_eq!(some_trace.len(), 32, "{some_trace}");

    let queries = [
        // Aggregates, over every file.
        "SELECT service_name, count(*) AS spans, count(DISTINCT trace_id) AS traces, \
         sum(end_time - start_time) AS busy FROM spans GROUP BY service_name ORDER BY service_name"
            .to_string(),
        "SELECT date_trunc('day', start_time) AS day, kind, count(*) FROM spans GROUP BY 1, 2 ORDER BY 1, 2".to_string(),
        // A lookup by trace id (LookupExec on the scheduler, shipped to an executor).
        format!(
            "SELECT trace_id, span_id, parent_span_id, name, start_time FROM spans \
             WHERE trace_id = '{some_trace}' ORDER BY span_id"
        ),
        format!("SELECT * FROM spans WHERE trace_id = '{some_trace}' ORDER BY span_id"),
        // trace_tree.
        format!(
            "SELECT span_id, depth, span_order, path, child_count FROM trace_tree('{some_trace}') \
             ORDER BY span_order"
        ),
        // trace_summaries and service_graph (views over spans).
        "SELECT trace_id, root_service_name, root_span_name, span_count, error_count, services \
         FROM trace_summaries(NULL, NULL) ORDER BY trace_id"
            .to_string(),
        "SELECT * FROM service_graph(NULL, NULL) ORDER BY 1, 2".to_string(),
        // A parent/child self-join.
        "SELECT p.service_name AS parent, c.service_name AS child, count(*) AS calls \
         FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id \
         GROUP BY 1, 2 ORDER BY 1, 2"
            .to_string(),
    ];
    for sql in &queries {
        let expected = rows(&local, sql).await;
        assert!(expected.len() > 4, "{sql} returned no rows locally");
        let before = requests(&lake);
        let got = rows(&cluster, sql).await;
        assert_eq!(
            requests(&lake),
            before,
            "the client read objects itself for {sql}"
        );
        assert_eq!(got, expected, "{sql}");
    }

    // An INSERT run on the cluster (its sink on an executor) is one commit of the lake.
    let version = lake.version();
    let inserted = rows(
        &cluster,
        "INSERT INTO spans (trace_id, span_id, name, service_name, start_time, end_time) VALUES \
         ('feedfeedfeedfeedfeedfeedfeedfeed', '00000000000000aa', 'remote', 'cluster', \
          '2024-05-02T12:00:00Z', '2024-05-02T12:00:01Z')",
    )
    .await;
    assert!(inserted.iter().any(|l| l.contains(" 1 ")), "{inserted:?}");
    assert_eq!(lake.refresh().await.unwrap(), version + 1);
    let lookup =
        "SELECT name, service_name FROM spans WHERE trace_id = 'feedfeedfeedfeedfeedfeedfeedfeed'";
    assert_eq!(rows(&local, lookup).await, rows(&cluster, lookup).await);
    assert!(
        rows(&local, lookup)
            .await
            .iter()
            .any(|l| l.contains("remote"))
    );

    // Bad input still gets the one-process error.
    let error = cluster
        .sql("SELECT * FROM trace_tree('not-a-trace-id')")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("trace_tree"), "{error}");

    // Each node reports what it did: the executors read the data files (their object-store
    // requests, served at /metrics), and every node's spans are written when it stops.
    let data_reads: u64 = metrics_ports
        .iter()
        .map(|&port| data_gets(&http_get(port, "/metrics")))
        .sum();
    assert!(data_reads > 0, "the executors read no data file");
    for child in &mut nodes.0 {
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: `kill` only sends a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(status.success(), "a node ended with {status} on SIGTERM");
    }
    let scheduler_spans = std::fs::read_to_string(spans_of("scheduler")).unwrap();
    assert!(
        scheduler_spans.contains("\"df.physical.plan\""),
        "{scheduler_spans:.2000}"
    );
    let executor_spans: String = (0..2)
        .map(|i| std::fs::read_to_string(spans_of(&format!("executor-{i}"))).unwrap())
        .collect();
    for name in ["\"df.collect\"", "\"object_store.request\""] {
        assert!(
            executor_spans.contains(name),
            "no {name} span from the executors"
        );
    }
}

/// The body of `GET http://127.0.0.1:port{path}`.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

/// Data-file reads counted in a Prometheus exposition.
fn data_gets(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("tracelake_object_store_requests_total{"))
        .filter(|l| l.contains("path_kind=\"parquet_data\"") && l.contains("operation=\"get"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test]
async fn a_scheduler_that_is_not_there_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let lake = TraceLake::create(dir.path().join("spans").to_str().unwrap())
        .await
        .unwrap();
    let port = free_port_pair();
    let error = tracelake::distributed::remote_context(
        &lake,
        &format!("df://127.0.0.1:{port}"),
        SessionConfig::new(),
    )
    .await
    .err()
    .expect("no scheduler there")
    .to_string();
    assert!(error.contains("cannot reach the scheduler"), "{error}");
    let error = tracelake::distributed::remote_context(&lake, "http://x:1", SessionConfig::new())
        .await
        .err()
        .expect("not a df:// URL")
        .to_string();
    assert!(error.contains("df://HOST:PORT"), "{error}");
}

/// The plan of `sql` in `ctx`, shipped through tracelake's physical codec (as Ballista ships a
/// stage to an executor) and decoded in a node's session, run there.
async fn shipped(
    ctx: &SessionContext,
    sql: &str,
    node: &datafusion::execution::SessionState,
) -> (String, String, Vec<String>) {
    use datafusion::physical_plan::displayable;
    use datafusion_proto::physical_plan::AsExecutionPlan;
    use datafusion_proto::protobuf::PhysicalPlanNode;
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let codec = node.config().ballista_physical_extension_codec();
    let proto = PhysicalPlanNode::try_from_physical_plan(plan.clone(), codec.as_ref()).unwrap();
    let decoded = proto
        .try_into_physical_plan(&node.task_ctx(), codec.as_ref())
        .unwrap();
    let batches = datafusion::physical_plan::collect(decoded.clone(), node.task_ctx())
        .await
        .unwrap();
    let rows = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
        .lines()
        .map(str::to_string)
        .collect();
    (
        displayable(plan.as_ref()).indent(false).to_string(),
        displayable(decoded.as_ref()).indent(false).to_string(),
        rows,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracelake_plan_nodes_travel_through_the_physical_codec() {
    let dir = tempfile::tempdir().unwrap();
    let lake = TraceLake::create(dir.path().join("spans").to_str().unwrap())
        .await
        .unwrap();
    lake.append_spans(&day(1, 0, 40)).await.unwrap();
    lake.append_spans(&day(2, 1, 40)).await.unwrap();
    let ctx = lake.session_context().unwrap();
    let trace = rows(&ctx, "SELECT min(trace_id) FROM spans").await[3]
        .trim_matches(|c: char| c == '|' || c.is_whitespace())
        .to_string();
    // A node that never opened the lake: it reads through the store the plan's URL names.
    let lakes = tracelake::distributed::Lakes::new(TableOptions::default());
    let node = tracelake::distributed::node_session_state(&lakes, SessionConfig::new()).unwrap();

    let lookup =
        format!("SELECT span_id, name FROM spans WHERE trace_id = '{trace}' ORDER BY span_id");
    let (before, after, got) = shipped(&ctx, &lookup, &node).await;
    assert!(
        before.contains("LookupExec") && before.contains("TraceLakeCollectExec"),
        "{before}"
    );
    assert!(
        after.contains("DataSourceExec") && !after.contains("LookupExec"),
        "a shipped lookup is read by DataFusion's parquet scan: {after}"
    );
    assert!(after.contains("TraceLakeCollectExec"), "{after}");
    assert_eq!(got, rows(&ctx, &lookup).await);

    let tree =
        format!("SELECT span_id, depth, path FROM trace_tree('{trace}') ORDER BY span_order");
    let (before, after, got) = shipped(&ctx, &tree, &node).await;
    assert!(before.contains("TraceTreeExec"), "{before}");
    assert!(after.contains("TraceTreeExec"), "{after}");
    assert_eq!(got, rows(&ctx, &tree).await);

    let scan = "SELECT service_name, count(*) FROM spans GROUP BY 1 ORDER BY 1";
    let (_, after, got) = shipped(&ctx, scan, &node).await;
    assert!(after.contains("DataSourceExec"), "{after}");
    assert_eq!(got, rows(&ctx, scan).await);

    // An INSERT's sink travels as the table location; the node commits to the lake.
    let version = lake.version();
    let insert = "INSERT INTO spans (trace_id, span_id, name, service_name, start_time, end_time) \
         VALUES ('feedfeedfeedfeedfeedfeedfeedfeed', '00000000000000aa', 'shipped', 'node', \
         '2024-05-02T12:00:00Z', '2024-05-02T12:00:01Z')";
    let (_, after, _) = shipped(&ctx, insert, &node).await;
    assert!(after.contains("SpanSink"), "{after}");
    assert_eq!(lake.refresh().await.unwrap(), version + 1);
    assert_eq!(
        common::count(&ctx, "SELECT count(*) FROM spans WHERE name = 'shipped'").await,
        1
    );
}

#[tokio::test]
async fn a_malformed_shipped_node_is_an_error_not_a_panic() {
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;
    let lakes = tracelake::distributed::Lakes::new(TableOptions::default());
    let node = tracelake::distributed::node_session_state(&lakes, SessionConfig::new()).unwrap();
    let codec = node.config().ballista_physical_extension_codec();
    let store = "tracelake://table-0-66696c653a2f2f2f746d702f/";
    let payloads = [
        // A column of spans that does not exist.
        format!(
            r#"tracelake:{{"node":"lookup","store_url":"{store}","files":[],"ids":["a"],"projection":[0],"columns":[999]}}"#
        ),
        // A file column that does not exist.
        format!(
            r#"tracelake:{{"node":"lookup","store_url":"{store}","files":[],"ids":["a"],"projection":[999],"columns":[0]}}"#
        ),
        // A row group past the file's.
        format!(
            r#"tracelake:{{"node":"lookup","store_url":"{store}","files":[{{"path":"x.parquet","size":1,"row_groups":1,"read":[3]}}],"ids":["a"],"projection":[0],"columns":[0]}}"#
        ),
        // Not JSON, and a tree node without its input.
        "tracelake:{not json".to_string(),
        r#"tracelake:{"node":"trace_tree","trace_id":"a","start":null,"end":null,"output":[0]}"#
            .to_string(),
    ];
    for payload in payloads {
        let result = codec.try_decode(
            payload.as_bytes(),
            &[],
            &node.task_ctx(),
            &DefaultPhysicalProtoConverter {},
        );
        assert!(result.is_err(), "{payload} decoded");
    }
}
