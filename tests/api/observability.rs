//! Observability (issue 10): `/metrics` is valid Prometheus text, its counters move after
//! requests and a sync, it is refused without credentials, and the logs of a real login keep
//! every secret out.
//!
//! The metrics recorder is global to the test process and tests run in parallel, so counters
//! are compared before and after: exactly where the labels are unique to one test, with `>=`
//! where other tests may add to the same series.

use std::{
    collections::{HashMap, HashSet},
    io::Read,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use quotebook::{
    config::{DEV_CLIENT_ID, DEV_CLIENT_SECRET, Secret},
    observability::names,
    users::{
        auth0_api::{ApiOptions, ManagementApi},
        foreground, job,
        sync::{SyncOptions, Syncer},
        sync_runs::{self, RunStatus, SyncMode, SyncTrigger},
    },
};
use reqwest::StatusCode;

use crate::helpers::{TestApp, client, cluster, find_form, location, spawn_app, spawn_app_with};

// ---------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text exposition format (version 0.0.4):
// prometheus.io/docs/instrumenting/exposition_formats/#text-based-format

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// Parses a whole exposition, checking every line and the rules that tie lines together: a
/// family's TYPE comes once and before its samples, no series is repeated, histogram buckets
/// carry `le`, are cumulative and end with `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut with_samples: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = |msg: &str| format!("line {}: {msg}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment
                .strip_prefix(' ')
                .ok_or_else(|| at("a comment starts with `# `"))?;
            let (keyword, rest) = comment
                .split_once(' ')
                .ok_or_else(|| at("a HELP or TYPE comment names a metric"))?;
            match keyword {
                "HELP" => {
                    let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
                    check_metric_name(name).map_err(|e| at(&e))?;
                    check_help_escapes(doc).map_err(|e| at(&e))?;
                    if !helped.insert(name.to_owned()) {
                        return Err(at("second HELP for one metric"));
                    }
                }
                "TYPE" => {
                    let (name, kind) = rest
                        .split_once(' ')
                        .ok_or_else(|| at("TYPE needs a name and a type"))?;
                    check_metric_name(name).map_err(|e| at(&e))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at("unknown metric type"));
                    }
                    if with_samples.contains(name) {
                        return Err(at("TYPE after the metric's samples"));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("second TYPE for one metric"));
                    }
                }
                // Other comments are legal but this exporter writes none: anything else is a bug.
                _ => return Err(at("a comment that is neither HELP nor TYPE")),
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|e| at(&e))?;
        let family = family_of(&sample.name, &types);
        let kind = types
            .get(&family)
            .ok_or_else(|| at("a sample without a TYPE"))?;
        if kind == "histogram" {
            let suffix = &sample.name[family.len()..];
            if !["_bucket", "_sum", "_count"].contains(&suffix) {
                return Err(at("a histogram sample must be _bucket, _sum or _count"));
            }
            let le = sample.labels.iter().find(|(k, _)| k == "le");
            if (suffix == "_bucket") != le.is_some() {
                return Err(at("`le` belongs on histogram buckets and only there"));
            }
        } else if sample.name != family {
            return Err(at("a sample of a family of another name"));
        }
        with_samples.insert(family);
        let mut key_labels = sample.labels.clone();
        key_labels.sort();
        if !series.insert(format!("{}{key_labels:?}", sample.name)) {
            return Err(at("the same series twice"));
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).map(String::as_str) == Some("histogram")
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("invalid label name {name:?}"))
    }
}

/// HELP text may escape only `\\` and `\n`.
fn check_help_escapes(doc: &str) -> Result<(), String> {
    let mut chars = doc.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            return Err("bad escape in HELP".to_owned());
        }
    }
    Ok(())
}

/// `name{label="value",...} value [timestamp]`
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("a sample needs a value after its name")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        let mut closed_at = None;
        // Each turn: a label name up to `=`, or `}` (empty set or after a trailing comma).
        while let Some(&(start, c)) = chars.peek() {
            if c == '}' {
                closed_at = Some(start);
                break;
            }
            let mut key = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            check_label_name(&key)?;
            if chars.next().map(|(_, c)| c) != Some('=')
                || chars.next().map(|(_, c)| c) != Some('"')
            {
                return Err(format!("label {key} needs =\"value\""));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    None => return Err("unterminated label value".to_owned()),
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err("bad escape in a label value".to_owned()),
                    },
                    Some('\n') => return Err("raw newline in a label value".to_owned()),
                    Some(c) => value.push(c),
                }
            }
            if labels.iter().any(|(k, _)| *k == key) {
                return Err(format!("label {key} twice"));
            }
            labels.push((key, value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    closed_at = Some(i);
                    break;
                }
                _ => return Err("labels are separated by `,` and end with `}`".to_owned()),
            }
        }
        let closed_at = closed_at.ok_or("unclosed label set")?;
        rest = &after_brace[closed_at + 1..];
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("one space between a sample's name and its value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields after the value".to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(raw: &str) -> Result<f64, String> {
    match raw {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        // Go's ParseFloat syntax; Rust's accepts the same decimal and exponent forms, but also
        // words like "inf" and "infinity" that the format spells differently: refuse those.
        _ if raw
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            Err(format!("bad value {raw:?}"))
        }
        _ => raw.parse::<f64>().map_err(|_| format!("bad value {raw:?}")),
    }
}

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
    let histograms: Vec<&String> = types
        .iter()
        .filter(|(_, kind)| *kind == "histogram")
        .map(|(name, _)| name)
        .collect();
    for family in histograms {
        let bucket_name = format!("{family}_bucket");
        let count_name = format!("{family}_count");
        // Group buckets by their labels other than `le`.
        let mut groups: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
        for s in samples.iter().filter(|s| s.name == bucket_name) {
            let mut rest: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            rest.sort();
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| parse_value(v))
                .ok_or("bucket without le")??;
            groups.entry(rest).or_default().push((le, s.value));
        }
        for (labels, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets are not cumulative"));
            }
            let inf = buckets
                .last()
                .filter(|(le, _)| *le == f64::INFINITY)
                .ok_or(format!("{family}{labels:?}: no +Inf bucket"))?;
            let count = samples
                .iter()
                .find(|s| s.name == count_name && sorted(&s.labels) == labels)
                .ok_or(format!("{family}{labels:?}: no _count"))?;
            if count.value != inf.1 {
                return Err(format!("{family}{labels:?}: +Inf bucket != _count"));
            }
        }
    }
    Ok(())
}

fn sorted(labels: &[(String, String)]) -> Vec<(String, String)> {
    let mut labels = labels.to_vec();
    labels.sort();
    labels
}

/// The sum of the series of `name` whose labels include all of `labels` (0 when none).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn the_parser_accepts_the_format_and_refuses_what_it_is_not() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\n\n\
                # TYPE g gauge\ng -1.5e3 1700000000000\ng{z=\"\"} NaN\n\
                # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
    let samples = parse_exposition(good).expect("valid exposition");
    assert_eq!(samples.len(), 7);
    assert_eq!(samples[0].labels[1].1, "q\"\\\n");
    assert_eq!(samples[1].value, -1500.0);
    assert!(samples[2].value.is_nan());
    assert_eq!(value(&samples, "h_bucket", &[("le", "+Inf")]), 2.0);

    let bad = [
        "no_type 1\n",
        "# TYPE a counter\na{x=\"1\"}\n",
        "# TYPE a counter\na 1 2 3\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na{1x=\"1\"} 1\n",
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",
        "# TYPE a counter\na{x=\"1\" 1\n",
        "# TYPE a counter\na{x=\"\\q\"} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na inf\n",
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE a counter\n# TYPE a gauge\na 1\n",
        "# TYPE a counter\na 1\n# TYPE a counter\n",
        "# TYPE a wobbly\na 1\n",
        "# comment\n",
        "# TYPE 9a counter\n",
        "# TYPE h histogram\nh_bucket 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_total 1\n",
    ];
    for text in bad {
        assert!(parse_exposition(text).is_err(), "accepted: {text:?}");
    }
}

// ---------------------------------------------------------------------------------------------

async fn scrape(app: &TestApp, bearer: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("GET /metrics")
}

/// Reads and parses `/metrics`; any line that is not valid exposition fails the test.
async fn metrics_of(response: reqwest::Response) -> Vec<Sample> {
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("metrics body");
    parse_exposition(&text).unwrap_or_else(|err| panic!("{err}\n---\n{text}"))
}

#[tokio::test]
async fn metrics_parse_and_http_counters_move_by_route_template() {
    let app = spawn_app().await;
    // A route and method no other test uses, so its counter moves by exactly our requests.
    let odd = [
        ("route", "/healthz"),
        ("method", "DELETE"),
        ("status", "405"),
    ];
    let get = [("route", "/healthz"), ("method", "GET"), ("status", "200")];
    let before = metrics_of(scrape(&app, None).await).await;
    for _ in 0..3 {
        let r = app.client.delete(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    }
    // Raw paths never become labels: this one lands on the template.
    assert_eq!(
        app.get("/assets/no-such-file-7f3a.css").await.status(),
        StatusCode::NOT_FOUND
    );
    let after = metrics_of(scrape(&app, None).await).await;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta(names::HTTP_REQUESTS_TOTAL, &odd), 3.0);
    assert!(delta(names::HTTP_REQUESTS_TOTAL, &get) >= 3.0);
    let odd_latency = [("route", "/healthz"), ("method", "DELETE")];
    assert_eq!(
        delta(
            &format!("{}_count", names::HTTP_REQUEST_DURATION),
            &odd_latency
        ),
        3.0
    );
    assert!(
        delta(
            &format!("{}_sum", names::HTTP_REQUEST_DURATION),
            &odd_latency
        ) > 0.0
    );
    assert!(
        after
            .iter()
            .all(|s| !s.labels.iter().any(|(_, v)| v.contains("no-such-file"))),
        "a raw path became a label"
    );
    assert!(
        delta(
            names::HTTP_REQUESTS_TOTAL,
            &[("route", "/assets/:name"), ("status", "404")]
        ) >= 1.0
    );
    // The scrape itself is in flight while it renders.
    assert!(value(&after, names::HTTP_REQUESTS_IN_FLIGHT, &[]) >= 1.0);
    // Pool, sessions and sync series are present from the first scrape.
    for name in [
        "db_pool_connections",
        "db_pool_max_connections",
        "sessions_active",
        names::SYNC_RUNS_TOTAL,
        names::USERS_SYNCED_TOTAL,
    ] {
        assert!(after.iter().any(|s| s.name == name), "{name} missing");
    }
}

#[tokio::test]
async fn a_sync_moves_the_sync_and_management_api_metrics() {
    let app = spawn_app_with(&[("AUTH0_EMULATOR_USERS", "30")]).await;
    let emulator = app.emulator.clone().expect("the app runs the emulator");
    let api_options = ApiOptions {
        request_timeout: Duration::from_secs(5),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..ApiOptions::default()
    };
    let api = ManagementApi::new(
        emulator.issuer(),
        DEV_CLIENT_ID,
        Secret::new(DEV_CLIENT_SECRET),
        api_options.clone(),
    )
    .expect("api client");
    let syncer = Syncer::new(app.db.clone(), api, SyncOptions::default());
    let before = metrics_of(scrape(&app, None).await).await;
    let started = chrono::Utc::now().timestamp() as f64;

    // One rate-limit answer and one server error on the way: both are retried and counted.
    emulator.faults().fail_next(1, 429);
    emulator.faults().fail_next(1, 500);
    let run = foreground::sync_in_foreground(&syncer, SyncMode::Full, false)
        .await
        .expect("sync runs");
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.upserted, 30);

    // A run that fails for good: the Management API answers 503 to everything.
    let failing = Syncer::new(
        app.db.clone(),
        ManagementApi::new(
            emulator.issuer(),
            DEV_CLIENT_ID,
            Secret::new(DEV_CLIENT_SECRET),
            ApiOptions {
                max_attempts: 1,
                ..api_options
            },
        )
        .expect("api client"),
        SyncOptions::default(),
    );
    emulator.faults().fail_next(20, 503);
    let (queued, created) = {
        let mut conn = app.db.acquire().await.unwrap();
        sync_runs::create_or_in_flight(&mut conn, SyncMode::Incremental, SyncTrigger::Cli, None)
            .await
            .unwrap()
    };
    assert!(created);
    let failed = job::execute_with_retries(
        &failing,
        queued.id,
        &job::WorkerOptions {
            max_attempts: 1,
            ..job::WorkerOptions::default()
        },
    )
    .await
    .unwrap()
    .expect("the run is ended");
    assert_eq!(failed.status, RunStatus::Failed);

    let after = metrics_of(scrape(&app, None).await).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let succeeded = [("mode", "full"), ("outcome", "succeeded")];
    assert!(delta(names::SYNC_RUNS_TOTAL, &succeeded) >= 1.0);
    let failed_runs = [("mode", "incremental"), ("outcome", "failed")];
    assert!(delta(names::SYNC_RUNS_TOTAL, &failed_runs) >= 1.0);
    assert!(delta(names::USERS_SYNCED_TOTAL, &[]) >= 30.0);
    let api = names::AUTH0_API_REQUESTS_TOTAL;
    // The token and at least one page of users.
    assert!(delta(api, &[("status", "200")]) >= 2.0);
    assert!(delta(api, &[("status", "429")]) >= 1.0);
    assert!(delta(api, &[("status", "500")]) >= 1.0);
    assert!(delta(api, &[("status", "503")]) >= 1.0);
    // Only status codes (and `error`) label the API counter: bounded cardinality.
    for s in after.iter().filter(|s| s.name == api) {
        assert_eq!(s.labels.len(), 1, "{s:?}");
        let status = &s.labels[0].1;
        assert!(
            status == "error" || status.parse::<u16>().is_ok_and(|c| (100..600).contains(&c)),
            "{s:?}"
        );
    }
    // The last success is this run's (or a later one from a parallel test): never older.
    let last = value(&after, names::SYNC_LAST_SUCCESS, &[]);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        last >= started - 1.0 && last <= now + 1.0,
        "{last} not in [{started}, {now}]"
    );
}

#[tokio::test]
async fn a_metrics_token_is_required_once_set_and_the_private_listener_serves_without_it() {
    let private_port = free_port();
    let private_addr = format!("127.0.0.1:{private_port}");
    let app = spawn_app_with(&[
        ("METRICS_TOKEN", "metrics-token-for-tests"),
        ("METRICS_ADDR", &private_addr),
    ])
    .await;
    assert_eq!(scrape(&app, None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        scrape(&app, Some("wrong-token")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let basic = app
        .client
        .get(app.url("/metrics"))
        .basic_auth("metrics-token-for-tests", None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let refused = scrape(&app, None).await.text().await.unwrap();
    assert!(!refused.contains(names::HTTP_REQUESTS_TOTAL), "{refused}");
    let samples = metrics_of(scrape(&app, Some("metrics-token-for-tests")).await).await;
    assert!(samples.iter().any(|s| s.name == names::HTTP_REQUESTS_TOTAL));
    // The refusals were counted under the template, with their status.
    assert!(
        value(
            &samples,
            names::HTTP_REQUESTS_TOTAL,
            &[("route", "/metrics"), ("status", "401")]
        ) >= 3.0
    );

    let private = client()
        .get(format!("http://{private_addr}/metrics"))
        .send()
        .await
        .expect("the private metrics listener answers");
    let samples = metrics_of(private).await;
    assert!(samples.iter().any(|s| s.name == names::HTTP_REQUESTS_TOTAL));
}

#[tokio::test]
async fn production_without_a_token_has_no_metrics_route() {
    let app = spawn_app_with(&[
        ("APP_ENV", "production"),
        ("HOST", "127.0.0.1"),
        ("APP_BASE_URL", "https://quotebook.test"),
        // A tenant that is never reached: discovery failing at start is not fatal.
        ("AUTH0_DOMAIN", "127.0.0.1:9"),
        ("AUTH0_CLIENT_ID", "client-id"),
        ("AUTH0_CLIENT_SECRET", "client-secret"),
        ("SESSION_SECRET", "0123456789abcdef0123456789abcdef"),
    ])
    .await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(scrape(&app, None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        scrape(&app, Some("anything")).await.status(),
        StatusCode::NOT_FOUND
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary: `quotebook worker`'s own metrics, and the logs of a login.

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The child process and the threads draining its output (a full pipe would block it).
struct Server {
    child: Child,
    readers: Vec<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(args: &[&str], vars: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quotebook"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // A scratch directory: no .env from the checkout leaks in.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start quotebook");
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for mut pipe in [out, err] {
            readers.push(std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            }));
        }
        Self { child, readers }
    }

    /// Waits (up to a minute) for the process to end by itself; everything it wrote.
    fn wait(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop()
    }

    /// SIGTERM, as Fly sends, then everything it wrote.
    fn stop(mut self) -> String {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
        std::mem::take(&mut self.readers)
            .into_iter()
            .map(|r| r.join().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed assertion before stop(): never leave the server running.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `name=` in a log line (quoted or not).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split(' ').next(),
    }
}

/// Every `Set-Cookie` value in a response (the part after `name=` up to `;`).
fn cookie_values(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            v.split(';')
                .next()?
                .split_once('=')
                .map(|(_, v)| v.to_owned())
        })
        .filter(|v| !v.is_empty())
        .collect()
}

#[tokio::test]
async fn no_log_line_of_a_login_holds_a_secret_code_token_or_cookie() {
    let cluster = cluster();
    let db_name = cluster.create_database().await;
    let port = free_port();
    let emulator_port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client_secret = format!("client-secret-{}", crate::helpers::random_suffix());
    // The emulator delivers its Event Stream and Log Stream to the app with these.
    let events_token = format!("events-token-{}", crate::helpers::random_suffix());
    let log_stream_token = format!("log-stream-token-{}", crate::helpers::random_suffix());
    let data_dir =
        std::env::temp_dir().join(format!("qb-logs-{}", crate::helpers::random_suffix()));
    let server = Server::start(
        &["serve", "--no-worker"],
        &[
            ("APP_ENV", "development".into()),
            ("HOST", "127.0.0.1".into()),
            ("PORT", port.to_string()),
            ("APP_BASE_URL", base.clone()),
            ("DATABASE_URL", cluster.url(&db_name)),
            ("AUTH0_EMULATOR_ADDR", format!("127.0.0.1:{emulator_port}")),
            ("AUTH0_EMULATOR_PERSIST_KEY", "false".into()),
            ("AUTH0_EMULATOR_USERS", "2".into()),
            ("AUTH0_CLIENT_SECRET", client_secret.clone()),
            ("AUTH0_EVENTS_TOKEN", events_token.clone()),
            ("AUTH0_LOG_STREAM_TOKEN", log_stream_token.clone()),
            ("DATA_DIR", data_dir.display().to_string()),
            // Our crate at its most verbose; dependencies at the level an operator would turn on.
            (
                "RUST_LOG",
                "info,quotebook=trace,poem=debug,openidconnect=debug".into(),
            ),
            ("NO_COLOR", "1".into()),
        ],
    );

    let http = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut health_checks = 0;
    loop {
        health_checks += 1;
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status() == StatusCode::OK
        {
            break;
        }
        assert!(Instant::now() < deadline, "the server never became healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The login, step by step, keeping everything a log line must not contain.
    let mut cookies = Vec::new();
    let start = http
        .get(format!("{base}/auth/login?next=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    cookies.extend(cookie_values(&start));
    let authorize = url::Url::parse(&location(&start)).expect("authorize URL");
    let page = http.get(authorize.clone()).send().await.unwrap();
    let form = find_form(&page.text().await.unwrap(), "email").expect("login form");
    let mut fields = form.hidden.clone();
    fields.push(("email".into(), "logs@example.com".into()));
    let back = http
        .post(authorize.join(&form.action).unwrap())
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert!(back.status().is_redirection());
    let callback = url::Url::parse(&location(&back)).expect("callback URL");
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("the callback carries a code");
    let signed_in = http.get(callback.clone()).send().await.unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER, "login succeeds");
    let session_cookies = cookie_values(&signed_in);
    assert!(!session_cookies.is_empty(), "the callback sets the session");
    cookies.extend(session_cookies);

    let home = http.get(format!("{base}/")).send().await.unwrap();
    cookies.extend(cookie_values(&home));
    let csrf = crate::helpers::csrf_token(&home.text().await.unwrap()).expect("csrf token");
    let saved = http
        .post(format!("{base}/quote"))
        .form(&[
            ("message", "Logs are for operators."),
            ("csrf_token", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    cookies.extend(cookie_values(&saved));

    // The sign-up's event and log events have reached the webhooks (so their tokens were sent).
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(cluster.options(&db_name))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let streams: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT stream FROM auth0_stream_events")
                .fetch_all(&db)
                .await
                .unwrap();
        if streams.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery from both streams");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await;

    let logs = server.stop();
    cluster.drop_database(db_name);
    let _ = std::fs::remove_dir_all(&data_dir);

    // The run was logged at all (or the searches below would pass on an empty string).
    assert!(logs.contains("listening"), "{logs}");
    let mut secrets = vec![
        ("the client secret", client_secret.clone()),
        ("the authorization code", code.clone()),
        ("the CSRF token", csrf.clone()),
        ("the Event Stream token", events_token.clone()),
        ("the Log Stream token", log_stream_token.clone()),
    ];
    secrets.extend(cookies.iter().map(|c| ("a cookie value", c.clone())));
    for (what, secret) in &secrets {
        assert!(
            secret.len() >= 8,
            "{what} is too short to search for: {secret:?}"
        );
        if let Some(line) = logs.lines().find(|l| l.contains(secret.as_str())) {
            panic!("{what} is in a log line: {line}");
        }
    }
    // ID and access tokens are JWTs (a base64 `{"` header starts `eyJ`); bearer headers neither.
    for marker in ["eyJ", "Bearer ", "access_token", "id_token="] {
        if let Some(line) = logs.lines().find(|l| l.contains(marker)) {
            panic!("a token ({marker}) is in a log line: {line}");
        }
    }

    // One request line per request, labelled with the route template.
    let requests: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(" request ") && field(l, "route").is_some())
        .collect();
    let count = |method: &str, route: &str| {
        requests
            .iter()
            .filter(|l| field(l, "method") == Some(method) && field(l, "route") == Some(route))
            .count()
    };
    assert_eq!(count("GET", "/auth/login"), 1, "{requests:#?}");
    assert_eq!(count("GET", "/auth/callback"), 1, "{requests:#?}");
    assert_eq!(count("GET", "/"), 1, "{requests:#?}");
    assert_eq!(count("POST", "/quote"), 1, "{requests:#?}");
    assert!(count("GET", "/healthz") <= health_checks, "{requests:#?}");
    // The emulator's deliveries of the sign-up and the login.
    let deliveries =
        count("POST", "/webhooks/auth0/events") + count("POST", "/webhooks/auth0/logs");
    assert!(deliveries >= 2, "{requests:#?}");
    assert_eq!(
        requests.len(),
        4 + count("GET", "/healthz") + deliveries,
        "{requests:#?}"
    );
    let callback_line = requests
        .iter()
        .find(|l| field(l, "route") == Some("/auth/callback"))
        .expect("callback line");
    for name in ["status", "latency_ms", "request_id", "user"] {
        assert!(
            field(callback_line, name).is_some(),
            "{name}: {callback_line}"
        );
    }
    assert_eq!(field(callback_line, "status"), Some("303"));
    // The signed-in requests carry the user's tag, a short hash rather than the id.
    let save_line = requests
        .iter()
        .find(|l| field(l, "route") == Some("/quote"))
        .expect("save line");
    let user = field(save_line, "user").unwrap_or("-");
    assert!(
        user.len() == 12 && user.chars().all(|c| c.is_ascii_hexdigit()),
        "{save_line}"
    );
    assert!(!save_line.contains("logs@example.com"), "{save_line}");
}

/// Fly runs the sync in a `worker` process group: its metrics must be scrapeable there.
#[tokio::test]
async fn the_worker_process_serves_its_own_metrics() {
    let cluster = cluster();
    let db_name = cluster.create_database().await;
    // A finished run in its database: the worker reports it as the last success.
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(cluster.options(&db_name))
        .await
        .expect("test pool");
    let (run, _) = {
        let mut conn = db.acquire().await.unwrap();
        sync_runs::create_or_in_flight(&mut conn, SyncMode::Full, SyncTrigger::Cli, None)
            .await
            .unwrap()
    };
    let finished = sync_runs::finish(&db, run.id, &sync_runs::Progress::default())
        .await
        .unwrap()
        .and_then(|run| run.finished_at)
        .expect("finished");
    db.close().await;

    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let data_dir =
        std::env::temp_dir().join(format!("qb-worker-{}", crate::helpers::random_suffix()));
    let never = "0 0 0 1 1 * 2099".to_owned();
    let worker = Server::start(
        &["worker"],
        &[
            ("APP_ENV", "development".into()),
            ("DATABASE_URL", cluster.url(&db_name)),
            ("METRICS_ADDR", metrics_addr.clone()),
            // Nothing listens there: the schedules never fire during the test anyway.
            ("AUTH0_EMULATOR_ADDR", format!("127.0.0.1:{}", free_port())),
            ("SYNC_SCHEDULE", never.clone()),
            ("SYNC_FULL_SCHEDULE", never),
            ("DATA_DIR", data_dir.display().to_string()),
            ("RUST_LOG", "info".into()),
            ("NO_COLOR", "1".into()),
        ],
    );
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let response = loop {
        if let Ok(r) = http
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's metrics listener never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let samples = metrics_of(response).await;
    let logs = worker.stop();
    cluster.drop_database(db_name);
    let _ = std::fs::remove_dir_all(&data_dir);

    for name in [
        names::SYNC_RUNS_TOTAL,
        names::USERS_SYNCED_TOTAL,
        "db_pool_max_connections",
    ] {
        assert!(samples.iter().any(|s| s.name == name), "{name} missing");
    }
    let last = value(&samples, names::SYNC_LAST_SUCCESS, &[]);
    assert!(
        (last - finished.timestamp_millis() as f64 / 1000.0).abs() < 0.002,
        "{last} vs {finished}"
    );
    assert!(logs.contains("metrics listener"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_profile_is_counted_and_logged_with_its_user_id() {
    let users_file = std::env::temp_dir().join(format!(
        "qb-skipped-users-{}.json",
        crate::helpers::random_suffix()
    ));
    let profiles = serde_json::json!([
        {"user_id": "auth0|nul\u{0}id", "email": "nulid@example.com"},
        {"user_id": "auth0|fine", "email": "fine@example.com", "name": "a\u{0}b"},
    ]);
    std::fs::write(&users_file, profiles.to_string()).unwrap();
    let emulator = quotebook::emulator::Emulator::start(quotebook::emulator::EmulatorConfig {
        users_file: Some(users_file.clone()),
        ..quotebook::emulator::EmulatorConfig::for_tests()
    })
    .await
    .expect("emulator starts");
    let cluster = cluster();
    let db_name = cluster.create_database().await;
    let sync = Server::start(
        &["sync", "--full"],
        &[
            ("APP_ENV", "development".into()),
            ("DATABASE_URL", cluster.url(&db_name)),
            ("AUTH0_ISSUER_BASE_URL", emulator.issuer().to_string()),
            ("AUTH0_CLIENT_ID", DEV_CLIENT_ID.into()),
            ("AUTH0_CLIENT_SECRET", DEV_CLIENT_SECRET.into()),
            ("RUST_LOG", "info".into()),
            ("NO_COLOR", "1".into()),
        ],
    );
    let output = tokio::task::spawn_blocking(move || sync.wait())
        .await
        .unwrap();
    emulator.shutdown();
    cluster.drop_database(db_name);
    let _ = std::fs::remove_file(users_file);

    let skipped = output
        .lines()
        .find(|line| line.contains("user profile skipped"))
        .unwrap_or_else(|| panic!("no skipped-profile line in:\n{output}"));
    assert!(skipped.contains(r#"user_id="auth0|nul\0id""#), "{skipped}");
    assert!(skipped.contains("U+0000"), "the reason: {skipped}");
    assert!(
        output.contains("succeeded")
            && output.contains("upserted 1")
            && output.contains("skipped 1"),
        "the summary: {output}"
    );
}
