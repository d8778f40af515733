//! The Flight SQL endpoint (`tracelake::flight_sql`) driven by a real client: the ADBC Flight
//! SQL driver (Go, from PyPI) through `tests/clients/flight_sql_client.py`.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;

use serde_json::{Value, json};
use tracelake::TraceLake;
use tracelake::flight_sql::FlightSqlConfig;

/// A Flight SQL endpoint over `ctx` on an ephemeral loopback port, until the test ends.
async fn start(ctx: datafusion::prelude::SessionContext, config: FlightSqlConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(tracelake::flight_sql::serve(
        ctx,
        config,
        listener,
        std::future::pending(),
    ));
    tracelake::flight_sql::client_uri(addr)
}

/// The client's JSON answer (`Err`: its error message).
async fn client(uri: &str, auth: &str, args: &[&str]) -> Result<Value, String> {
    let clients = common::clients();
    let (uri, auth) = (uri.to_string(), auth.to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&clients.python)
            .arg(common::repo().join("tests/clients/flight_sql_client.py"))
            .arg(&uri)
            .arg(&auth)
            .args(&args)
            .output()
            .expect("run the Flight SQL client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client answered no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match answer.get("error") {
        Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
        None => Ok(answer),
    }
}

async fn lake(traces: usize) -> (tempfile::TempDir, TraceLake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = TraceLake::create(dir.path().to_str().unwrap())
        .await
        .unwrap();
    lake.append_spans(&common::spans(7, traces)).await.unwrap();
    (dir, lake)
}

/// A read-only context as `tracelake serve --flight-sql` builds it.
fn read_only(lake: &TraceLake) -> datafusion::prelude::SessionContext {
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_information_schema(true),
    );
    lake.register_with(&ctx, &tracelake::Registration::default().read_only(true))
        .unwrap();
    ctx
}

/// Statements, prepared statements with parameters (`?` and `$1`), `trace_tree`, the catalog
/// calls, and what a read-only endpoint refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_queries_prepared_statements_and_catalog_calls() {
    let (_dir, lake) = lake(40).await;
    let ctx = read_only(&lake);
    let id = common::spans(7, 40)[0].trace_id.clone();
    let uri = start(ctx.clone(), FlightSqlConfig::default()).await;

    let answer = client(&uri, "-", &["query", "SELECT count(*) AS n FROM spans"])
        .await
        .unwrap();
    assert_eq!(answer["rows"], json!([[200]]), "{answer}");
    assert_eq!(answer["schema"], json!([["n", "int64"]]));

    for sql in [
        "SELECT count(*) AS n FROM spans WHERE trace_id = ?",
        "SELECT count(*) AS n FROM spans WHERE trace_id = $1",
    ] {
        let answer = client(&uri, "-", &["prepared", sql, &id]).await.unwrap();
        assert_eq!(answer["rows"], json!([[5]]), "{sql}: {answer}");
    }
    // Two parameters of two types, and a literal '?' that is not one.
    let answer = client(
        &uri,
        "-",
        &[
            "prepared",
            "SELECT count(*) AS n, '?' AS q FROM spans WHERE trace_id = ? AND duration_ns >= ?",
            &id,
            "0",
        ],
    )
    .await
    .unwrap();
    assert_eq!(answer["rows"], json!([[5, "?"]]), "{answer}");

    // trace_tree through Flight SQL: the same rows as in process.
    let sql = format!("SELECT span_id, depth FROM trace_tree('{id}')");
    let answer = client(&uri, "-", &["query", &sql]).await.unwrap();
    let expected: Vec<Value> = ctx
        .sql(&sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .iter()
        .flat_map(|b| {
            let spans = arrow::array::AsArray::as_string::<i32>(b.column(0)).clone();
            let depths = b.column(1).clone();
            (0..b.num_rows())
                .map(move |i| {
                    let depth = arrow::util::display::array_value_to_string(&depths, i).unwrap();
                    json!([spans.value(i), depth.parse::<i64>().unwrap()])
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(answer["rows"], Value::Array(expected), "{answer}");
    assert_eq!(answer["rows"].as_array().unwrap().len(), 5);

    // Discovery: the catalog tree, the table's schema, the server's info.
    let objects = client(&uri, "-", &["objects"]).await.unwrap();
    let public = &objects["datafusion"]["public"];
    assert!(
        public.as_array().unwrap().contains(&json!("spans")),
        "{objects}"
    );
    assert!(
        objects["datafusion"]["information_schema"]
            .as_array()
            .unwrap()
            .contains(&json!("tables")),
        "{objects}"
    );
    let schema = client(
        &uri,
        "-",
        &["table_schema", "datafusion", "public", "spans"],
    )
    .await
    .unwrap();
    let names: Vec<&str> = schema["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[0].as_str().unwrap())
        .collect();
    let expected: Vec<String> = tracelake::schema::sql_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, expected);
    let info = client(&uri, "-", &["info"]).await.unwrap();
    assert_eq!(info["vendor_name"], "tracelake", "{info}");

    // Read-only: INSERT, DDL and COPY are refused; nothing is written.
    for sql in [
        "INSERT INTO spans (trace_id, span_id, name, start_time, end_time) VALUES \
         ('4bf92f3577b34da6a3ce929d0e0e4736', 'a000000000000001', 'x', \
         '2024-05-01T12:00:00Z', '2024-05-01T12:00:01Z')",
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/tracelake-flight-copy.parquet'",
    ] {
        let error = client(&uri, "-", &["execute", sql]).await.unwrap_err();
        assert!(error.contains("read-only"), "{sql}: {error}");
    }
    // Malformed input: a clear error, and the server keeps serving.
    let error = client(&uri, "-", &["query", "SELEC 1"]).await.unwrap_err();
    assert!(error.contains("SELEC"), "{error}");
    let error = client(
        &uri,
        "-",
        &["prepared", "SELECT * FROM trace_tree(?)", "nothex"],
    )
    .await
    .unwrap_err();
    assert!(error.contains("trace"), "{error}");
    let error = client(
        &uri,
        "-",
        &[
            "prepared",
            "SELECT count(*) FROM spans WHERE trace_id = ?",
            "a",
            "b",
        ],
    )
    .await
    .unwrap_err();
    assert!(error.contains("parameters"), "{error}");
    let answer = client(&uri, "-", &["query", "SELECT count(*) AS n FROM spans"])
        .await
        .unwrap();
    assert_eq!(answer["rows"], json!([[200]]));
}

/// A large result arrives in many batches, as the scan produces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_is_streamed_in_batches() {
    let (_dir, lake) = lake(10_000).await;
    let uri = start(read_only(&lake), FlightSqlConfig::default()).await;
    let answer = client(&uri, "-", &["stream", "SELECT * FROM spans"])
        .await
        .unwrap();
    assert_eq!(answer["rows"], 50_000, "{answer}");
    assert!(answer["batches"].as_u64().unwrap() >= 6, "{answer}");
    assert!(
        answer["largest_batch"].as_u64().unwrap() <= 8_192,
        "{answer}"
    );
}

/// With a token, calls without it (or with another) are refused, the bearer header and the
/// handshake are accepted; with inserts allowed, `INSERT INTO spans` writes and the rest of
/// DML and DDL is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_required_and_inserts_are_accepted_when_allowed() {
    let (_dir, lake) = lake(2).await;
    let ctx = lake.session_context().unwrap();
    let config = FlightSqlConfig::default()
        .with_bearer_token(Some("flight-s3cret".into()))
        .with_allow_insert(true);
    let uri = start(ctx, config).await;
    let count = ["query", "SELECT count(*) AS n FROM spans"];
    for auth in ["-", "bearer:wrong", "basic:user:wrong"] {
        let error = client(&uri, auth, &count).await.unwrap_err();
        assert!(
            error.to_lowercase().contains("unauthenticated"),
            "{auth}: {error}"
        );
    }
    for auth in ["bearer:flight-s3cret", "basic:anyone:flight-s3cret"] {
        let answer = client(&uri, auth, &count).await.unwrap();
        assert_eq!(answer["rows"], json!([[10]]), "{auth}: {answer}");
    }
    let insert = "INSERT INTO spans (trace_id, span_id, name, start_time, end_time) VALUES \
        ('4bf92f3577b34da6a3ce929d0e0e4736', 'a000000000000001', 'inserted', \
        '2024-05-01T12:00:00Z', '2024-05-01T12:00:01Z')";
    let answer = client(&uri, "bearer:flight-s3cret", &["execute", insert])
        .await
        .unwrap();
    assert_eq!(answer["fetched"], json!([[1]]), "{answer}");
    assert_eq!(common::count_spans(&lake).await, 11);
    for sql in [
        "DELETE FROM spans",
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/tracelake-flight-copy.parquet'",
    ] {
        let error = client(&uri, "bearer:flight-s3cret", &["execute", sql])
            .await
            .unwrap_err();
        assert!(
            error.contains("read-only") || error.contains("INSERT and queries only"),
            "{sql}: {error}"
        );
    }
    assert_eq!(common::count_spans(&lake).await, 11);
}

/// The bound on queries running at once and the timeout give their gRPC codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_and_the_concurrency_bound_give_their_status_codes() {
    let (_dir, lake) = lake(2).await;
    // A query that runs until cancelled: an unbounded cross join, streamed slowly.
    let slow = "SELECT max(a.value + b.value) AS m FROM generate_series(1, 100000000) a \
        CROSS JOIN generate_series(1, 1000) b";
    let uri = start(
        read_only(&lake),
        FlightSqlConfig::default().with_query_timeout(std::time::Duration::from_millis(500)),
    )
    .await;
    let error = client(&uri, "-", &["query", slow]).await.unwrap_err();
    assert!(
        error.to_lowercase().contains("deadline") || error.contains("timeout"),
        "{error}"
    );
    let uri = start(
        read_only(&lake),
        FlightSqlConfig::default()
            .with_max_concurrent_queries(1)
            .with_query_timeout(std::time::Duration::from_secs(4)),
    )
    .await;
    let busy = {
        let uri = uri.clone();
        tokio::spawn(async move { client(&uri, "-", &["query", slow]).await })
    };
    // While the slow query holds the one slot, another is refused.
    let mut refused = None;
    for _ in 0..100 {
        match client(&uri, "-", &["query", "SELECT 1 AS one"]).await {
            Err(e)
                if e.to_lowercase().contains("resource") || e.contains("queries are running") =>
            {
                refused = Some(e);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert!(refused.is_some(), "a second query was never refused");
    busy.abort();
}

/// On a cluster: the same endpoint over a Ballista context (an in-process scheduler and
/// executor) answers as in one process, `trace_tree` included; it still refuses INSERT.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_runs_its_queries_on_ballista() {
    let (_dir, lake) = lake(40).await;
    let id = common::spans(7, 40)[3].trace_id.clone();
    let ctx = tracelake::distributed::standalone_context(
        &lake,
        datafusion::prelude::SessionConfig::new().with_target_partitions(2),
        tracelake::distributed::StandaloneOptions::default(),
    )
    .await
    .unwrap();
    let uri = start(ctx, FlightSqlConfig::default()).await;
    let answer = client(
        &uri,
        "-",
        &["query", "SELECT service_name, count(*) AS n FROM spans GROUP BY service_name ORDER BY service_name"],
    )
    .await
    .unwrap();
    let local = read_only(&lake);
    let expected = local
        .sql("SELECT service_name, count(*) AS n FROM spans GROUP BY service_name ORDER BY service_name")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        answer["rows"].as_array().unwrap().len(),
        common::rows(&expected),
        "{answer}"
    );
    let answer = client(
        &uri,
        "-",
        &["prepared", "SELECT count(*) AS n FROM trace_tree(?)", &id],
    )
    .await
    .unwrap();
    assert_eq!(answer["rows"], json!([[5]]), "{answer}");
    let error = client(
        &uri,
        "-",
        &[
            "execute",
            "INSERT INTO spans (trace_id, span_id, name, start_time, end_time) VALUES \
          ('4bf92f3577b34da6a3ce929d0e0e4736', 'a000000000000001', 'x', \
          '2024-05-01T12:00:00Z', '2024-05-01T12:00:01Z')",
        ],
    )
    .await
    .unwrap_err();
    assert!(error.contains("read-only"), "{error}");
}
