//! The configuration reference (`docs/configuration.md`), the command lines
//! of the three binaries (their clap definitions), the systemd environment
//! example and the compose file must agree: every setting documented with
//! its one flag, its default and the commands that read it; nothing
//! documented that does not exist; every variable the examples set is a
//! documented setting. And `--help` shows each default once, and each
//! subcommand only the settings it reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::{Args, Command, CommandFactory};

/// Variables the examples set that are not ours.
const NOT_OURS: &[&str] = &["RUST_LOG", "RUST_LOG_STYLE"];

/// Our settings without a flag (read before the command line), with their
/// defaults: documented with `—` as the flag.
fn env_only() -> BTreeMap<String, String> {
    [(
        service::logging::FORMAT_VAR.to_owned(),
        service::logging::Format::NAMES[0].to_owned(),
    )]
    .into_iter()
    .collect()
}
const NOT_OURS_PREFIXES: &[&str] = &["POSTGRES_", "RABBITMQ_", "GF_"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every command a user runs, by the name the reference uses, with its
/// clap definition.
fn commands() -> Vec<(String, Command)> {
    let mut out = Vec::new();
    for sub in order_producer::Cli::command().get_subcommands() {
        if sub.has_subcommands() {
            // A command that also runs by itself (`cases` lists) reads its
            // own settings too.
            if sub.get_arguments().any(|a| a.get_env().is_some()) {
                out.push((sub.get_name().to_owned(), sub.clone()));
            }
            for inner in sub.get_subcommands() {
                out.push((
                    format!("{} {}", sub.get_name(), inner.get_name()),
                    inner.clone(),
                ));
            }
        } else {
            out.push((sub.get_name().to_owned(), sub.clone()));
        }
    }
    let worker = order_timeout_worker::Cli::command();
    for sub in worker.get_subcommands() {
        out.push((sub.get_name().to_owned(), sub.clone()));
    }
    out.push(("worker".to_owned(), worker));
    out.push((
        "wechatpay-sim".to_owned(),
        wechatpay_sim::cli::Args::command(),
    ));
    out
}

/// One setting as the command lines define it.
#[derive(Debug, Default)]
struct Setting {
    flag: String,
    default: Option<String>,
    secret: bool,
    read_by: BTreeSet<String>,
}

fn settings() -> BTreeMap<String, Setting> {
    let mut all: BTreeMap<String, Setting> = BTreeMap::new();
    for (name, cmd) in commands() {
        for arg in cmd.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().into_owned();
            let flag = format!("--{}", arg.get_long().expect("a setting has a flag"));
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = (!defaults.is_empty()).then(|| defaults.join(","));
            let entry = all.entry(env.clone()).or_default();
            if entry.read_by.is_empty() {
                entry.flag.clone_from(&flag);
                entry.default.clone_from(&default);
            }
            // One name, one default, wherever it is read.
            assert_eq!(entry.flag, flag, "{env}: two flags");
            assert_eq!(entry.default, default, "{env}: two defaults");
            // The rule: the flag is the variable in kebab case.
            assert_eq!(
                flag,
                format!("--{}", env.to_lowercase().replace('_', "-")),
                "{env}: the flag must be the variable in kebab case"
            );
            entry.secret |= arg.is_hide_env_values_set();
            entry.read_by.insert(name.clone());
        }
    }
    all
}

/// A documented row: variable, flag, default cell, read by, meaning.
#[derive(Debug)]
struct Row {
    flag: String,
    default: String,
    read_by: BTreeSet<String>,
    meaning: String,
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().trim_matches('`').to_owned())
        .collect()
}

/// The setting tables of the reference (rows whose first cell is a
/// variable in backticks), and the renamed-settings table.
fn documented(text: &str) -> (BTreeMap<String, Row>, BTreeSet<(String, String)>) {
    let mut rows = BTreeMap::new();
    let mut renamed = BTreeSet::new();
    let mut in_renamed = false;
    for line in text.lines() {
        if line.starts_with("## ") {
            in_renamed = line.to_lowercase().contains("renamed");
        }
        if !line.starts_with("| `") {
            continue;
        }
        let c = cells(line);
        if in_renamed {
            assert_eq!(c.len(), 3, "a renamed row has old, new, and where: {line}");
            renamed.insert((c[0].clone(), c[1].clone()));
            continue;
        }
        assert_eq!(c.len(), 5, "a setting row has 5 cells: {line}");
        let read_by = c[3].split(',').map(|s| s.trim().to_owned()).collect();
        let row = Row {
            flag: c[1].clone(),
            default: c[2].clone(),
            read_by,
            meaning: c[4].clone(),
        };
        assert!(
            rows.insert(c[0].clone(), row).is_none(),
            "{} documented twice",
            c[0]
        );
    }
    (rows, renamed)
}

fn reference() -> String {
    read("docs/configuration.md")
}

/// The differences between the reference and the command lines, one line each.
fn disagreements(text: &str) -> Vec<String> {
    let settings = settings();
    let (rows, renamed) = documented(text);
    let mut bad = Vec::new();
    for (env, s) in &settings {
        let Some(row) = rows.get(env) else {
            bad.push(format!(
                "{env} is not documented; its row starts: | `{env}` | `{}` | {} | {} |",
                s.flag,
                s.default
                    .as_ref()
                    .map_or("—".to_owned(), |d| format!("`{d}`")),
                s.read_by.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        if row.flag != s.flag {
            bad.push(format!(
                "{env}: documented flag {}, real {}",
                row.flag, s.flag
            ));
        }
        match &s.default {
            Some(d) if &row.default != d => {
                bad.push(format!(
                    "{env}: documented default {:?}, real {d:?}",
                    row.default
                ));
            }
            None if !(row.default.starts_with('—') || row.default.starts_with("required")) => {
                bad.push(format!(
                    "{env}: has no default, documented {:?} (write — or required)",
                    row.default
                ));
            }
            _ => {}
        }
        if row.read_by != s.read_by {
            bad.push(format!(
                "{env}: documented as read by {:?}, really by {:?}",
                row.read_by, s.read_by
            ));
        }
        if s.secret && !row.meaning.contains("never printed") {
            bad.push(format!("{env} holds a secret: say \"never printed\""));
        }
    }
    let env_only = env_only();
    for (env, row) in &rows {
        match env_only.get(env) {
            Some(default) => {
                if row.flag != "—" {
                    bad.push(format!("{env} has no flag; documented {}", row.flag));
                }
                if &row.default != default {
                    bad.push(format!(
                        "{env}: documented default {:?}, real {default:?}",
                        row.default
                    ));
                }
            }
            None if !settings.contains_key(env) => {
                bad.push(format!("{env} is documented but no command reads it"));
            }
            None => {}
        }
    }
    for env in env_only.keys() {
        if !rows.contains_key(env) {
            bad.push(format!("{env} (environment only) is not documented"));
        }
    }
    let table: BTreeSet<(String, String)> = service::renamed::ENV
        .iter()
        .chain(service::renamed::FLAGS)
        .map(|r| (r.old.to_owned(), r.new.to_owned()))
        .collect();
    for missing in table.difference(&renamed) {
        bad.push(format!(
            "renamed {} -> {} is not listed",
            missing.0, missing.1
        ));
    }
    for extra in renamed.difference(&table) {
        bad.push(format!(
            "renamed {} -> {} is listed but not in the table",
            extra.0, extra.1
        ));
    }
    bad
}

#[test]
fn the_reference_documents_every_setting_and_nothing_else() {
    let bad = disagreements(&reference());
    assert!(
        bad.is_empty(),
        "docs/configuration.md disagrees:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_wrong_entry_in_the_reference_is_caught() {
    let text = reference();
    let wrong_default = text.replacen(
        "| `WORKER_CONCURRENCY` | `--worker-concurrency` | `16` |",
        "| `WORKER_CONCURRENCY` | `--worker-concurrency` | `17` |",
        1,
    );
    assert_ne!(wrong_default, text, "the row to spoil was not found");
    assert!(!disagreements(&wrong_default).is_empty());
    let invented =
        format!("{text}\n## More\n\n| `WORKER_NAPS` | `--worker-naps` | — | worker | naps |\n");
    assert!(disagreements(&invented)
        .iter()
        .any(|d| d.contains("WORKER_NAPS")));
    let wrong_env_only = text.replacen(
        "| `LOG_FORMAT` | — | `text` |",
        "| `LOG_FORMAT` | `--log-format` | `json` |",
        1,
    );
    assert_ne!(wrong_env_only, text, "the LOG_FORMAT row was not found");
    assert_eq!(
        disagreements(&wrong_env_only)
            .iter()
            .filter(|d| d.starts_with("LOG_FORMAT"))
            .count(),
        2
    );
}

fn is_ours(var: &str) -> bool {
    !NOT_OURS.contains(&var) && !NOT_OURS_PREFIXES.iter().any(|p| var.starts_with(p))
}

/// `VAR=value` and `#VAR=value` lines of the systemd environment example.
fn env_example() -> Vec<(String, String, bool)> {
    read("scripts/systemd/order-timeout.env.example")
        .lines()
        .filter_map(|line| {
            let commented = line.starts_with('#');
            let (var, value) = line.trim_start_matches('#').split_once('=')?;
            let upper = !var.is_empty()
                && var
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            upper.then(|| {
                (
                    var.to_owned(),
                    value.trim_matches('\'').to_owned(),
                    commented,
                )
            })
        })
        .collect()
}

/// Upper-case keys of the compose file's `environment:` maps (and of the
/// `x-*-env` anchors merged into them).
fn compose_env() -> BTreeSet<String> {
    read("docker/compose.yml")
        .lines()
        .filter_map(|line| {
            let key = line.trim_start().split_once(':')?.0;
            let indented = line.starts_with(' ');
            let upper = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            (indented && upper).then(|| key.to_owned())
        })
        .collect()
}

#[test]
fn the_systemd_and_compose_examples_set_only_documented_settings() {
    let (rows, _) = documented(&reference());
    let settings = settings();
    let example = env_example();
    assert!(example.len() > 20, "the example was not read: {example:?}");
    for (var, value, commented) in &example {
        if !is_ours(var) {
            continue;
        }
        assert!(
            rows.contains_key(var),
            "{var} in order-timeout.env.example is not documented"
        );
        // "A commented-out variable takes the default shown."
        let default = settings
            .get(var)
            .and_then(|s| s.default.clone())
            .or_else(|| env_only().get(var).cloned());
        if let (true, Some(default)) = (*commented, &default) {
            assert_eq!(
                value, default,
                "{var} in order-timeout.env.example: the default shown is not the default"
            );
        }
    }
    let compose = compose_env();
    assert!(
        compose.contains("DATABASE_URL"),
        "the compose file was not read: {compose:?}"
    );
    for var in compose.iter().filter(|v| is_ours(v)) {
        assert!(
            rows.contains_key(var),
            "{var} in docker/compose.yml is not documented"
        );
    }
}

fn longs(cmd: &Command) -> BTreeSet<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .filter(|l| l != "help" && l != "version")
        .collect()
}

fn group<A: Args>() -> BTreeSet<String> {
    longs(&A::augment_args(Command::new("group")))
}

#[test]
fn the_three_command_lines_are_consistent() {
    order_producer::Cli::command().debug_assert();
    order_timeout_worker::Cli::command().debug_assert();
    wechatpay_sim::cli::Args::command().debug_assert();
}

#[test]
fn each_subcommand_shows_only_the_settings_it_reads() {
    use service::{BrokerArgs, DatabaseArgs, MetricsArgs, PaymentArgs, TopologyArgs};
    let db = group::<DatabaseArgs>();
    let broker = group::<BrokerArgs>();
    let topo = group::<TopologyArgs>();
    let pay = group::<PaymentArgs>();
    let metrics = group::<MetricsArgs>();
    let own = |names: &[&str]| {
        names
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    let union = |sets: &[&BTreeSet<String>]| {
        sets.iter()
            .flat_map(|s| s.iter().cloned())
            .collect::<BTreeSet<_>>()
    };
    let serve_own = own(&[
        "api-listen",
        "api-token-file",
        "wechatpay-appid",
        "wechatpay-apiv3-key-file",
        "wechatpay-notify-url",
        "wechatpay-allow-http-notify-url",
        "payment-window",
        "api-request-timeout",
        "api-header-timeout",
        "api-max-body-bytes",
        "api-max-in-flight",
        "api-db-pool-size",
        "api-shutdown-grace",
    ]);
    let relay_own = own(&[
        "once",
        "relay-batch-size",
        "relay-poll-interval",
        "relay-confirm-timeout",
    ]);
    let expected: BTreeMap<&str, BTreeSet<String>> = [
        ("migrate", db.clone()),
        (
            "stock set",
            union(&[&db, &own(&["sku", "quantity", "price-fen"])]),
        ),
        (
            "create-order",
            union(&[&db, &topo, &own(&["item", "payment-window"])]),
        ),
        ("declare", union(&[&broker, &topo])),
        ("relay", union(&[&db, &broker, &topo, &metrics, &relay_own])),
        ("publish", union(&[&db, &broker, &topo])),
        ("status", union(&[&db, &broker, &topo, &own(&["json"])])),
        ("parked", union(&[&broker, &own(&["replay", "limit"])])),
        (
            "serve",
            union(&[&db, &broker, &topo, &pay, &metrics, &serve_own]),
        ),
        (
            "settle",
            union(&[
                &db,
                &pay,
                &own(&["worker-recheck-after", "wechatpay-refund-notify-url"]),
            ]),
        ),
    ]
    .into_iter()
    .collect();
    let commands = commands();
    for (name, want) in &expected {
        let cmd = &commands.iter().find(|(n, _)| n == name).expect(name).1;
        assert_eq!(&longs(cmd), want, "`{name} --help` lists other options");
    }
    // The top level of order-producer takes no settings at all.
    assert!(longs(&order_producer::Cli::command()).is_empty());
}

#[test]
fn help_shows_each_default_once() {
    for (name, cmd) in commands() {
        for arg in cmd.get_arguments() {
            if arg.get_default_values().is_empty() || !arg.get_action().takes_values() {
                continue;
            }
            let help = format!(
                "{} {}",
                arg.get_help().map(ToString::to_string).unwrap_or_default(),
                arg.get_long_help()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )
            .to_lowercase();
            assert!(
                !help.contains("default"),
                "`{name} --help`: --{} says its default in prose besides clap's [default: ...]: {help}",
                arg.get_long().unwrap_or_default()
            );
        }
    }
}
