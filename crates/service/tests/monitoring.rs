//! The monitoring files of the compose stack (`docker/prometheus`,
//! `docker/grafana`) against each other and against the code:
//!
//! * promtool accepts the Prometheus config, the alert rules and every
//!   dashboard query, and the rules' unit tests pass (promtool is needed:
//!   Debian's `prometheus` package; these tests fail without it, they do
//!   not skip);
//! * every `order_timeout_*` name in the rules, their tests and the
//!   dashboard is one the processes export ([`METRIC_NAMES`]);
//! * every job an alert watches with `up{job="..."}` is scraped;
//! * every dashboard panel uses a provisioned datasource;
//! * the paths the configs name are the ones `docker/compose.yml` mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use service::metrics::{Metrics, METRIC_NAMES};

const PROMETHEUS_YML: &str = "docker/prometheus/prometheus.yml";
const ALERTS_YML: &str = "docker/prometheus/alerts.yml";
const ALERTS_TEST_YML: &str = "docker/prometheus/alerts.test.yml";
const DASHBOARD_JSON: &str = "docker/grafana/dashboards/order-timeout.json";
const DATASOURCES_YML: &str = "docker/grafana/provisioning/datasources/prometheus.yml";
const DASHBOARD_PROVIDER_YML: &str = "docker/grafana/provisioning/dashboards/order-timeout.yml";
const COMPOSE_YML: &str = "docker/compose.yml";

/// Where Prometheus finds the metrics token inside its container (compose
/// mounts the `metrics-token` volume at its directory).
const TOKEN_IN_PROMETHEUS: &str = "/etc/prometheus/metrics-token/metrics.token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs promtool with `args`; panics with its output unless it succeeds,
/// and with how to install it when it is missing.
fn promtool(args: &[&str]) {
    let output = match Command::new("promtool").args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool not found on PATH: install Debian's `prometheus` package \
             (`apt-get install prometheus`, it ships promtool); the monitoring \
             checks need it and do not skip"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn path_arg(relative: &str) -> String {
    repo().join(relative).display().to_string()
}

// ---- promtool ---------------------------------------------------------------

/// promtool 2.42 insists that an `authorization.credentials_file` exists,
/// and the token is only generated when the stack first starts (inside the
/// `metrics-token` volume). So: the real file with `--syntax-only`, then a
/// copy whose token path points at a dummy token beside it, in full (which
/// also loads `rule_files` relative to the config, as Prometheus does).
#[test]
fn prometheus_config_is_valid() {
    promtool(&[
        "check",
        "config",
        "--syntax-only",
        &path_arg(PROMETHEUS_YML),
    ]);

    let config = read(PROMETHEUS_YML);
    let quoted = format!("credentials_file: {TOKEN_IN_PROMETHEUS}");
    assert_eq!(
        config.matches(&quoted).count(),
        config.matches("job_name:").count(),
        "every scrape job of {PROMETHEUS_YML} should read the token from {TOKEN_IN_PROMETHEUS}"
    );
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    std::fs::write(
        dir.join("prometheus.yml"),
        config.replace(&quoted, "credentials_file: metrics.token"),
    )
    .unwrap();
    std::fs::write(
        dir.join("metrics.token"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    std::fs::copy(repo().join(ALERTS_YML), dir.join("alerts.yml")).unwrap();
    promtool(&[
        "check",
        "config",
        &dir.join("prometheus.yml").display().to_string(),
    ]);
}

#[test]
fn alert_rules_are_valid() {
    promtool(&["check", "rules", &path_arg(ALERTS_YML)]);
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    promtool(&["test", "rules", &path_arg(ALERTS_TEST_YML)]);
}

/// Every `expr` of the dashboard, as a recording rule: promtool parses it
/// as `PromQL`.
#[test]
fn dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs();
    assert!(!exprs.is_empty(), "no `expr` in {DASHBOARD_JSON}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(expr).unwrap();
        writeln!(
            rules,
            "      - record: dashboard:query_{i}\n        expr: {quoted}"
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    promtool(&["check", "rules", &file.display().to_string()]);
}

// ---- metric names -----------------------------------------------------------

/// Every identifier `order_timeout_[a-z0-9_]+` in `text` (not part of a
/// longer identifier), in order of appearance.
fn metric_identifiers(text: &str) -> Vec<String> {
    const PREFIX: &str = "order_timeout_";
    let is_name_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find(PREFIX) {
        let start = from + offset;
        let mut end = start + PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let standalone = start == 0 || !is_name_byte(bytes[start - 1]);
        if standalone && end > start + PREFIX.len() {
            found.push(text[start..end].to_owned());
        }
        from = end;
    }
    found
}

/// The histograms among [`METRIC_NAMES`]: only those have `_bucket`,
/// `_sum` and `_count` series. The encoder's `# TYPE` line decides; it
/// leaves out families without series yet (those keyed by labels), and of
/// those a name in `_seconds` is a histogram (the gauges in seconds,
/// `outbox_oldest_age_seconds` and `snapshot_timestamp_seconds`, are always
/// declared).
fn histograms() -> BTreeSet<String> {
    let encoded = populated().encode();
    let declared: BTreeMap<&str, &str> = encoded
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    METRIC_NAMES
        .iter()
        .filter(|name| declared.get(*name) == Some(&"histogram"))
        .map(|name| (*name).to_owned())
        .collect()
}

/// A worker's metrics with a series in every family: a family without one
/// is not declared at all (no `# TYPE` line), which would leave its kind
/// unknown (the histogram families, and the snapshot gauges of a process
/// that does not hold the collector lock).
fn populated() -> Metrics {
    use payment_client::CallObserver as _;
    use service::snapshot::{NeedsHuman, Outbox, Overdue, Snapshot};
    let m = Metrics::new("worker");
    m.observe(
        payment_client::Call::Query,
        &payment_client::CallResult::Timeout,
        std::time::Duration::from_millis(1),
    );
    m.http_request(
        std::borrow::Cow::Borrowed("/healthz"),
        200,
        std::time::Duration::from_millis(1),
    );
    m.set_snapshot(&Snapshot {
        taken_at: chrono::Utc::now(),
        queues: Vec::new(),
        broker_error: None,
        orders: BTreeMap::new(),
        outbox: Outbox {
            backlog: 0,
            oldest: None,
            oldest_age_seconds: 0.0,
        },
        overdue: Overdue {
            orders: 0,
            oldest_deadline: None,
            oldest_seconds: 0.0,
        },
        payments_after_close: 0,
        refunds: BTreeMap::new(),
        needs_human: NeedsHuman {
            orders: 0,
            refunds: 0,
        },
        reconciliation: service::snapshot::Reconciliation {
            last_day: None,
            last_day_end: None,
            last_failure: None,
            open_discrepancies: [("unknown_order", 0)].into_iter().collect(),
            rows: [("matched", 0)].into_iter().collect(),
        },
    });
    m
}

/// The names among `names` that no process exports: not in
/// [`METRIC_NAMES`], and not a `_bucket`/`_sum`/`_count` series of a
/// histogram in it.
fn unknown_names(names: &[String], histograms: &BTreeSet<String>) -> BTreeSet<String> {
    names
        .iter()
        .filter(|name| {
            let histogram_series = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| histograms.contains(base))
            });
            !METRIC_NAMES.contains(&name.as_str()) && !histogram_series
        })
        .cloned()
        .collect()
}

/// Every `expr` string anywhere in the dashboard JSON.
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD_JSON))
        .unwrap_or_else(|e| panic!("{DASHBOARD_JSON} is not valid JSON: {e}"))
}

#[test]
fn histograms_are_known_to_the_encoder() {
    let histograms = histograms();
    for name in [
        "order_timeout_settlement_lag_seconds",
        "order_timeout_wechatpay_request_duration_seconds",
        "order_timeout_http_request_duration_seconds",
    ] {
        assert!(histograms.contains(name), "{name} not in {histograms:?}");
    }
    // Gauges in seconds are not histograms.
    assert!(!histograms.contains("order_timeout_outbox_oldest_age_seconds"));
    assert!(!histograms.contains("order_timeout_snapshot_timestamp_seconds"));
    assert_eq!(histograms.len(), 3, "{histograms:?}");
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    let histograms = histograms();
    let mut problems = Vec::new();
    for file in [ALERTS_YML, ALERTS_TEST_YML] {
        let names = metric_identifiers(&read(file));
        assert!(!names.is_empty(), "no order_timeout_ names found in {file}");
        let unknown = unknown_names(&names, &histograms);
        if !unknown.is_empty() {
            problems.push(format!("{file}: {unknown:?}"));
        }
    }
    let names: Vec<String> = dashboard_exprs()
        .iter()
        .flat_map(|expr| metric_identifiers(expr))
        .collect();
    assert!(
        !names.is_empty(),
        "no order_timeout_ names in the exprs of {DASHBOARD_JSON}"
    );
    let unknown = unknown_names(&names, &histograms);
    if !unknown.is_empty() {
        problems.push(format!("{DASHBOARD_JSON}: {unknown:?}"));
    }
    assert!(
        problems.is_empty(),
        "names that are not in service::metrics::METRIC_NAMES (nor a histogram's _bucket/_sum/_count):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_name_check_catches_made_up_names() {
    let sample = r"sum(rate(order_timeout_settlements_total[5m]))
        / max(order_timeout_made_up_total) > 0
        and histogram_quantile(0.99, rate(order_timeout_settlement_lag_seconds_bucket[5m]))
        and order_timeout_outbox_oldest_age_seconds_count
        and not_order_timeout_prefixed_elsewhere";
    let names = metric_identifiers(sample);
    assert_eq!(
        names,
        [
            "order_timeout_settlements_total",
            "order_timeout_made_up_total",
            "order_timeout_settlement_lag_seconds_bucket",
            "order_timeout_outbox_oldest_age_seconds_count",
        ]
    );
    let unknown = unknown_names(&names, &histograms());
    assert_eq!(
        unknown.into_iter().collect::<Vec<_>>(),
        [
            // Made up.
            "order_timeout_made_up_total",
            // A gauge in seconds has no _count series.
            "order_timeout_outbox_oldest_age_seconds_count",
        ]
    );
}

// ---- jobs and datasources ---------------------------------------------------

/// The `job` of every `up{job="..."}` in `rules`.
fn up_jobs(rules: &str) -> BTreeSet<String> {
    let mut jobs = BTreeSet::new();
    let mut from = 0;
    while let Some(offset) = rules[from..].find("up{") {
        let start = from + offset;
        from = start + 3;
        let standalone = start == 0 || {
            let b = rules.as_bytes()[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        };
        let Some(len) = rules[from..].find('}') else {
            continue;
        };
        let matchers = &rules[from..from + len];
        if !standalone {
            continue;
        }
        if let Some((_, rest)) = matchers.split_once("job=\"") {
            if let Some((job, _)) = rest.split_once('"') {
                jobs.insert(job.to_owned());
            }
        }
    }
    jobs
}

/// The values of `key: value` lines (quotes stripped), e.g. every
/// `job_name`.
fn yaml_values(text: &str, key: &str) -> BTreeSet<String> {
    let prefix = format!("{key}:");
    text.lines()
        .map(|line| line.trim_start().trim_start_matches("- "))
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

#[test]
fn every_job_an_alert_watches_is_scraped() {
    let watched = up_jobs(&read(ALERTS_YML));
    assert!(!watched.is_empty(), "no up{{job=\"...\"}} in {ALERTS_YML}");
    let scraped = yaml_values(&read(PROMETHEUS_YML), "job_name");
    let missing: Vec<_> = watched.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "jobs in up{{job=...}} of {ALERTS_YML} that {PROMETHEUS_YML} does not scrape: {missing:?} (scraped: {scraped:?})"
    );
}

#[test]
fn up_jobs_are_found() {
    let rules = r#"up{job="a"} == 0 or absent(up{instance="x", job="b"}) or setup{job="c"}"#;
    assert_eq!(up_jobs(rules).into_iter().collect::<Vec<_>>(), ["a", "b"]);
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn dashboard_panels_use_the_provisioned_datasource() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].is_string(), "the dashboard needs a uid");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "the dashboard needs a schemaVersion"
    );
    let declared = yaml_values(&read(DATASOURCES_YML), "uid");
    assert!(
        !declared.is_empty(),
        "no datasource uid in {DATASOURCES_YML}"
    );

    let panels = panels(&dashboard);
    assert!(!panels.is_empty(), "no panels in {DASHBOARD_JSON}");
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        match panel["id"].as_u64() {
            Some(id) if !ids.insert(id) => problems.push(format!("{title}: id {id} used twice")),
            Some(_) => {}
            None => problems.push(format!("{title}: no id")),
        }
        if panel["type"] == "row" {
            continue;
        }
        let uid = panel["datasource"]["uid"].as_str();
        if !uid.is_some_and(|u| declared.contains(u)) {
            problems.push(format!("{title}: datasource uid {uid:?}"));
        }
        let targets = panel["targets"].as_array();
        if targets.is_none_or(Vec::is_empty) {
            problems.push(format!("{title}: no targets"));
        }
        for target in targets.into_iter().flatten() {
            if let Some(ds) = target.get("datasource") {
                let uid = ds["uid"].as_str();
                if !uid.is_some_and(|u| declared.contains(u)) {
                    problems.push(format!("{title}: a target's datasource uid {uid:?}"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{DASHBOARD_JSON} (datasources declared in {DATASOURCES_YML}: {declared:?}):\n{}",
        problems.join("\n")
    );
}

// ---- compose ----------------------------------------------------------------

/// The paths the configs name are what compose mounts (read-only).
#[test]
fn compose_mounts_what_the_configs_name() {
    let compose = read(COMPOSE_YML);
    let provider_paths = yaml_values(&read(DASHBOARD_PROVIDER_YML), "path");
    assert_eq!(
        provider_paths.len(),
        1,
        "{DASHBOARD_PROVIDER_YML}: {provider_paths:?}"
    );
    let dashboards_dir = provider_paths.first().unwrap();
    let token_dir = Path::new(TOKEN_IN_PROMETHEUS)
        .parent()
        .unwrap()
        .display()
        .to_string();
    for mount in [
        "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro".to_owned(),
        "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro".to_owned(),
        format!("metrics-token:{token_dir}:ro"),
        "./grafana/provisioning/datasources:/etc/grafana/provisioning/datasources:ro".to_owned(),
        "./grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro".to_owned(),
        format!("./grafana/dashboards:{dashboards_dir}:ro"),
    ] {
        assert!(
            compose.contains(&mount),
            "{COMPOSE_YML} does not mount {mount}"
        );
    }
    // The processes read the token the same volume holds.
    assert!(compose.contains("METRICS_TOKEN_FILE: /metrics-token/metrics.token"));
    assert!(compose.contains("metrics-token:/metrics-token:ro"));
    assert!(compose.contains("> /secrets/metrics.token.new"));
    assert!(compose.contains("metrics-token:/secrets"));
    // Prometheus talks to the port they listen on.
    assert!(compose.contains("METRICS_LISTEN: 0.0.0.0:9464"));
    let config = read(PROMETHEUS_YML);
    assert_eq!(
        config.matches(":9464\"").count() + config.matches("port: 9464").count(),
        3
    );
}
