//! The HTTP endpoints with real PostgreSQL and dcmtk: `/healthz`, `/readyz`
//! and `/metrics` answer; the exposition passes a strict parser of the text
//! format; counters move when storescu sends an instance and when the
//! pipeline enhances one; `/readyz` turns 503 when the spool or the database
//! goes away, and back; unknown paths, other methods, garbage, huge and slow
//! requests get their answers without disturbing the others.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{exchange, parse_answer, request};
use common::*;
use cxr_led_daemon::config::DestinationConfig;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A strictly parsed exposition: sample values by series (`name{k="v",...}`,
/// labels sorted), and each family's type.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn value(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no series {series}"))
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_metric_name(name) && !name.contains(':')
}

/// `{k="v",...}` starting at the `{`; returns the labels and the rest after `}`.
fn parse_labels(text: &str) -> (Vec<(String, String)>, &str) {
    let mut labels = Vec::new();
    let mut rest = &text[1..];
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("label in {text:?}"));
        assert!(is_label_name(name), "label name {name:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?} in {text:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {text:?}"),
            }
        };
        assert!(labels.iter().all(|(n, _)| n != name), "label {name} twice in {text:?}");
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else {
            assert!(rest.starts_with('}'), "expected , or }} in {text:?}");
        }
    }
}

fn series_key(name: &str, labels: &[(String, String)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    if inner.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", inner.join(","))
    }
}

/// A label value as a key: `le` bounds as numbers (`1.0` and `1` are one bound).
fn label_key(name: &str, value: &str) -> String {
    match (name, value.parse::<f64>()) {
        ("le", Ok(bound)) if value != "+Inf" => format!("{bound}"),
        _ => value.to_string(),
    }
}

/// Parses the OpenMetrics text format strictly: every family has HELP and
/// TYPE before its samples and appears once; every sample is `name{labels}
/// value` of the family just declared (counters `<family>_total`, info
/// `<family>_info` with value 1, histograms `_bucket`, `_sum` and `_count`);
/// histogram buckets ascend in `le`, are cumulative and end with `le="+Inf"`
/// equal to `_count`, and come with `_sum`; the text ends with `# EOF`.
fn parse_exposition(text: &str) -> Exposition {
    let body = text.strip_suffix("# EOF\n").expect("the exposition ends with # EOF and a newline");
    let mut parsed = Exposition::default();
    let mut helped: Vec<String> = Vec::new();
    let mut current: Option<(String, String)> = None;
    // Histogram series (family + labels without le) -> (le, value) in order.
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in body.lines() {
        assert!(!line.is_empty(), "empty line in the exposition");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_metric_name(name) && !help.is_empty(), "{line}");
            assert!(!helped.contains(&name.to_string()), "HELP for {name} twice");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert_eq!(helped.last().map(String::as_str), Some(name), "HELP right before TYPE for {name}");
            assert!(matches!(kind, "counter" | "gauge" | "histogram" | "info"), "{line}");
            assert!(parsed.types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE for {name} twice");
            if matches!(kind, "counter" | "info") {
                assert!(!name.ends_with("_total") && !name.ends_with("_info"), "{kind} family {name} has a suffix");
            }
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("sample {line:?}"));
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])
        } else {
            (Vec::new(), &line[name_end..])
        };
        let labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.clone(), label_key(&k, &v))).collect();
        let value_text = rest.strip_prefix(' ').unwrap_or_else(|| panic!("one space before the value: {line:?}"));
        assert!(!value_text.contains(' '), "no timestamp expected: {line:?}");
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or_else(|_| panic!("value {other:?} in {line:?}")),
        };
        let (family, kind) = current.as_ref().unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
        match kind.as_str() {
            "histogram" => {
                let own: Vec<(String, String)> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                let key = series_key(family, &own);
                if name == format!("{family}_bucket") {
                    let le =
                        labels.iter().find(|(k, _)| k == "le").unwrap_or_else(|| panic!("bucket without le: {line}"));
                    let bound = if le.1 == "+Inf" { f64::INFINITY } else { le.1.parse().expect("le is a number") };
                    buckets.entry(key).or_default().push((bound, value));
                } else {
                    assert!(
                        name == format!("{family}_count") || name == format!("{family}_sum"),
                        "sample {line} outside its family {family}"
                    );
                }
            }
            "counter" => assert_eq!(name, format!("{family}_total"), "sample {line} outside its family"),
            "info" => {
                assert_eq!(name, format!("{family}_info"), "sample {line} outside its family");
                assert_eq!(value, 1.0, "an info sample is 1: {line}");
            }
            _ => assert_eq!(name, family, "sample {line} outside its family"),
        }
        assert!(parsed.samples.insert(series_key(name, &labels), value).is_none(), "series {line} appears twice");
    }
    for (key, series) in &buckets {
        let (family, labels) = key.find('{').map_or((key.as_str(), ""), |i| (&key[..i], &key[i..]));
        let count = parsed.samples.get(&format!("{family}_count{labels}"));
        let count = *count.unwrap_or_else(|| panic!("histogram {key} has no _count"));
        assert!(parsed.samples.contains_key(&format!("{family}_sum{labels}")), "histogram {key} has no _sum");
        let last = series.last().unwrap();
        assert_eq!(last.0, f64::INFINITY, "the last bucket of {key} is +Inf");
        assert_eq!(last.1, count, "+Inf bucket equals _count for {key}");
        assert!(series.windows(2).all(|w| w[0].0 < w[1].0), "le ascends in {key}");
        assert!(series.windows(2).all(|w| w[0].1 <= w[1].1), "buckets are cumulative in {key}");
    }
    for (name, kind) in &parsed.types {
        if kind == "histogram" {
            let prefix = format!("{name}_count");
            let counts = parsed.samples.keys().filter(|k| k.starts_with(&prefix)).count();
            let series = buckets.keys().filter(|k| k.split('{').next() == Some(name.as_str())).count();
            assert_eq!(counts, series, "every _count of {name} has buckets");
        }
    }
    assert_eq!(helped.len(), parsed.types.len(), "every HELP has a TYPE");
    parsed
}

async fn scrape(addr: SocketAddr) -> Exposition {
    let answer = request(addr, "GET", "/metrics").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("Content-Type"), Some(cxr_led_daemon::ops::metrics::CONTENT_TYPE));
    assert_eq!(answer.header("Content-Length"), Some(answer.body.len().to_string().as_str()));
    parse_exposition(&answer.body)
}

#[test]
fn the_parser_refuses_what_it_should() {
    let good = "# HELP a help\n# TYPE a counter\na_total{x=\"1\"} 2\n\
                # HELP h help\n# TYPE h histogram\nh_sum 3\nh_count 2\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                # HELP i help\n# TYPE i info\ni_info{v=\"x\"} 1\n# EOF\n";
    let parsed = parse_exposition(good);
    assert_eq!(parsed.value("a_total{x=\"1\"}"), 2.0);
    assert_eq!(parsed.value("h_count"), 2.0);
    assert_eq!(parsed.value("h_bucket{le=\"1\"}"), 1.0);
    for bad in [
        "# TYPE a counter\na_total 1\n# EOF\n",               // no HELP
        "# HELP a help\n# TYPE a counter\na 1\n# EOF\n",      // counter sample without _total
        "# HELP a help\n# TYPE a gauge\na 1\n",               // no EOF
        "# HELP a help\n# TYPE a gauge\nb 1\n# EOF\n",        // sample outside its family
        "# HELP a help\n# TYPE a gauge\na{x=\"1} 1\n# EOF\n", // unterminated label
        "# HELP i help\n# TYPE i info\ni_info 2\n# EOF\n",    // info not 1
        "# HELP h help\n# TYPE h histogram\nh_sum 0\nh_count 1\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n# EOF\n", // not cumulative
        "# HELP h help\n# TYPE h histogram\nh_sum 0\nh_count 3\nh_bucket{le=\"+Inf\"} 2\n# EOF\n", // +Inf != count
        "# HELP h help\n# TYPE h histogram\nh_sum 0\nh_count 2\nh_bucket{le=\"1\"} 2\n# EOF\n",    // no +Inf
    ] {
        assert!(std::panic::catch_unwind(|| parse_exposition(bad)).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_and_counters_move_with_a_stored_instance() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let http = running.http_addr.expect("[http] is on by default");

    let healthz = request(http, "GET", "/healthz").await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let head = request(http, "HEAD", "/healthz").await;
    assert_eq!((head.status, head.body.as_str(), head.header("Content-Length")), (200, "", Some("3")));
    let readyz = request(http, "GET", "/readyz").await;
    assert_eq!(readyz.status, 200, "{}", readyz.body);

    let before = scrape(http).await;
    for outcome in ["stored", "duplicate", "failed", "abandoned"] {
        assert_eq!(before.value(&format!("cxr_led_instances_received_total{{outcome=\"{outcome}\"}}")), 0.0);
    }
    assert_eq!(before.value("cxr_led_associations_total{outcome=\"accepted\"}"), 0.0);
    assert_eq!(before.types["cxr_led_stage_seconds"], "histogram");
    assert_eq!(before.types["cxr_led_hallucination_score"], "histogram");
    assert_eq!(before.value("cxr_led_database_up"), 1.0);
    assert_eq!(before.value("cxr_led_jobs{state=\"queued\"}"), 0.0);
    assert!(!before.types.contains_key("cxr_led_bundle"), "no bundle without a pipeline");
    assert!(!before.samples.keys().any(|k| k.starts_with("cxr_led_bundle_info")), "no bundle without a pipeline");

    // Stored once, then the same instance again: a duplicate.
    let file = fixture("CR1_6154.dcm");
    for _ in 0..2 {
        let out = storescu(running.local_addr, "MODALITY", &[], std::slice::from_ref(&file)).await;
        assert!(out.status.success(), "storescu: {}", text(&out));
    }
    // The association task ends just after storescu is answered.
    wait_until(Duration::from_secs(10), "the associations to end", || async move {
        scrape(http).await.value("cxr_led_associations_active") == 0.0
    })
    .await;
    let after = scrape(http).await;
    assert_eq!(after.value("cxr_led_associations_total{outcome=\"accepted\"}"), 2.0);
    assert_eq!(after.value("cxr_led_instances_received_total{outcome=\"stored\"}"), 1.0);
    assert_eq!(after.value("cxr_led_instances_received_total{outcome=\"duplicate\"}"), 1.0);
    assert_eq!(after.value("cxr_led_stage_seconds_count{stage=\"receive\"}"), 2.0);
    assert!(after.value("cxr_led_stage_seconds_sum{stage=\"receive\"}") > 0.0);
    assert_eq!(after.value("cxr_led_stage_seconds_count{stage=\"enhancement\"}"), 0.0);

    // A refused association counts as rejected.
    let out = dcmtk(
        "echoscu",
        vec![
            "-aet".into(),
            "X".into(),
            "-aec".into(),
            "NOTUS".into(),
            "127.0.0.1".into(),
            running.local_addr.port().to_string(),
        ],
    )
    .await;
    assert!(!out.status.success());
    wait_until(Duration::from_secs(10), "the rejection to be counted", || async move {
        scrape(http).await.value("cxr_led_associations_total{outcome=\"rejected\"}") == 1.0
    })
    .await;

    // What is not an endpoint, or not GET/HEAD, or not HTTP.
    assert_eq!(request(http, "GET", "/").await.status, 404);
    assert_eq!(request(http, "GET", "/metrics/x").await.status, 404);
    let post = request(http, "POST", "/metrics").await;
    let allowed: Vec<&str> = post.header("Allow").unwrap_or_default().split(',').map(str::trim).collect();
    assert_eq!((post.status, allowed), (405, vec!["GET", "HEAD"]));
    assert_eq!(request(http, "DELETE", "/readyz").await.status, 405);
    // hyper's own answer to a malformed head; reading it to the end shows the connection closed.
    assert_eq!(exchange(http, b"\x16\x03\x01 hello\r\n\r\n").await.status, 400);
    assert_eq!(request(http, "GET", "/healthz?verbose=1").await.status, 200);

    // A huge head is refused without reading it all.
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(64 * 1024));
    let mut stream = TcpStream::connect(http).await.unwrap();
    let _ = stream.write_all(huge.as_bytes()).await; // the server may close before all of it is written
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await.unwrap();
    assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 431 "), "{}", String::from_utf8_lossy(&bytes));

    // A client that sends half a request and waits: others are served meanwhile,
    // and it gets 408 once the request time is up.
    let slow_started = Instant::now();
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(http).await.unwrap();
        stream.write_all(b"GET /metrics HT").await.unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        parse_answer(&bytes)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(request(http, "GET", "/healthz").await.status, 200);
    assert!(slow_started.elapsed() < Duration::from_secs(2), "the healthz answer did not wait for the slow client");
    let slow = tokio::time::timeout(Duration::from_secs(20), slow).await.unwrap().unwrap();
    assert_eq!((slow.status, slow.header("Connection")), (408, Some("close")));
    assert!(slow_started.elapsed() >= Duration::from_secs(4), "408 only after the request time");

    running.stop().await;
    // Stopped with the service.
    assert!(TcpStream::connect(http).await.is_err(), "the HTTP listener is closed after stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_without_spool_or_database_and_recovers() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let running = start(test_config(&db, spool.path())).await;
    let http = running.http_addr.unwrap();
    assert_eq!(request(http, "GET", "/readyz").await.status, 200);

    // The spool's tmp/ replaced by a file: nothing can be created in it (also as root).
    let tmp = spool.path().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a folder").unwrap();
    let answer = request(http, "GET", "/readyz").await;
    assert_eq!(answer.status, 503);
    assert!(answer.body.starts_with("spool: cannot create a file in "), "{}", answer.body);
    assert_eq!(answer.body.lines().count(), 1, "only the spool fails: {}", answer.body);
    assert_eq!(request(http, "GET", "/healthz").await.status, 200, "liveness does not depend on readiness");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(request(http, "GET", "/readyz").await.status, 200);
    assert_eq!(temp_files(spool.path()), 0, "the probe leaves nothing behind");

    // The database refuses connections and its sessions are terminated.
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name)).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db.name)
        .execute(&mut admin)
        .await
        .unwrap();
    let started = Instant::now();
    let answer = request(http, "GET", "/readyz").await;
    assert_eq!(answer.status, 503);
    assert!(answer.body.starts_with("database: "), "{}", answer.body);
    assert!(started.elapsed() < Duration::from_secs(5), "the database check is bounded");
    let offline = scrape(http).await;
    assert_eq!(offline.value("cxr_led_database_up"), 0.0);
    assert!(!offline.types.contains_key("cxr_led_jobs"), "no queue depth without the database");

    sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name)).execute(&mut admin).await.unwrap();
    admin.close().await.unwrap();
    wait_until(Duration::from_secs(30), "/readyz to recover with the database", || async move {
        request(http, "GET", "/readyz").await.status == 200
    })
    .await;
    assert_eq!(scrape(http).await.value("cxr_led_database_up"), 1.0);
    running.stop().await;
}

/// A copy of dx_image.dcm with Deviation Index -7 (flagged) in its own study.
fn under_exposed_copy(dir: &Path) -> std::path::PathBuf {
    let study = format!("2.25.1{}4242", std::process::id());
    let (path, _) = make_copies(&fixture("dx_image.dcm"), dir, 1, &study, "metrics").remove(0);
    let mut object = dicom_object::open_file(&path).unwrap();
    object.put(DataElement::new(tags::DEVIATION_INDEX, VR::DS, PrimitiveValue::from("-7.0")));
    object.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(format!("{study}.1"))));
    object.write_to_file(&path).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_metrics_follow_an_enhancement_and_a_failing_delivery() {
    let db = TestDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, &work.path().join("spool"));
    config.tracker.quiet_period_secs = 0.5;
    config.pipeline.enabled = true;
    config.pipeline.bundle = tiny_bundle();
    config.pipeline.device = "cpu".into();
    config.pipeline.poll_interval_ms = 50;
    // The tiny bundle has random weights: hold nothing.
    config.pipeline.hold_threshold = 1.0;
    // Nobody listens there: every delivery attempt fails and is retried.
    config.delivery.destinations = vec![DestinationConfig {
        name: "pacs".into(),
        ae_title: "PACS".into(),
        address: format!("127.0.0.1:{}", free_port()),
        tls: None,
    }];
    config.delivery.connect_timeout_secs = 1;
    config.delivery.retry_initial_secs = 1;
    config.delivery.retry_max_secs = 1;
    config.delivery.poll_interval_ms = 100;
    let running = start(config).await;
    let http = running.http_addr.unwrap();
    let readyz = request(http, "GET", "/readyz").await;
    assert_eq!(readyz.status, 200, "bundle loaded: {}", readyz.body);
    let info = scrape(http).await;
    let bundle_series: Vec<&String> = info.samples.keys().filter(|k| k.starts_with("cxr_led_bundle_info{")).collect();
    assert_eq!(bundle_series.len(), 1, "{bundle_series:?}");
    assert!(bundle_series[0].contains("device=\"cpu"), "{}", bundle_series[0]);

    let out = storescu(running.local_addr, "MODALITY", &[], &[under_exposed_copy(work.path())]).await;
    assert!(out.status.success(), "storescu: {}", text(&out));
    wait_until(Duration::from_secs(180), "the job done and a delivery retried", || async move {
        let m = scrape(http).await;
        m.value("cxr_led_jobs{state=\"done\"}") == 1.0
            && m.value("cxr_led_delivery_attempts_total{outcome=\"retry\"}") >= 1.0
    })
    .await;
    let m = scrape(http).await;
    assert_eq!(m.value("cxr_led_instances_processed_total{outcome=\"enhanced\"}"), 1.0);
    assert_eq!(m.value("cxr_led_instances_processed_total{outcome=\"passed\"}"), 0.0);
    assert_eq!(m.value("cxr_led_job_attempts_total{outcome=\"done\"}"), 1.0);
    for stage in ["triage", "enhancement", "derive"] {
        assert_eq!(m.value(&format!("cxr_led_stage_seconds_count{{stage=\"{stage}\"}}")), 1.0, "{stage}");
    }
    for part in ["estimate", "refinement", "score"] {
        assert_eq!(m.value(&format!("cxr_led_enhancement_seconds_count{{part=\"{part}\"}}")), 1.0, "{part}");
    }
    assert_eq!(m.value("cxr_led_hallucination_score_count"), 1.0);
    let score = m.value("cxr_led_hallucination_score_sum");
    assert!((0.0..=1.0).contains(&score), "score {score}");
    assert_eq!(m.value("cxr_led_hallucination_score_bucket{le=\"1\"}"), 1.0);
    assert_eq!(m.value("cxr_led_delivery_attempts_total{outcome=\"sent\"}"), 0.0);
    assert_eq!(m.value("cxr_led_outbox{state=\"pending\"}"), 1.0);
    assert_eq!(m.value("cxr_led_jobs{state=\"queued\"}") + m.value("cxr_led_jobs{state=\"running\"}"), 0.0);
    running.stop().await;
}
