//! Settings that were renamed, in one table, and the one mechanism that keeps
//! their old names working: before clap parses, an old flag in the command
//! line is rewritten to its new name, and an old environment variable is
//! copied into the new one when only the old one is set (both set and
//! different: a usage error naming both). Each use of an old name yields a
//! warning (`X is deprecated, use Y`) that `main` logs once logging is up.
//!
//! Only `std` here on purpose: `wechatpay-sim` includes this file (it must
//! not depend on `service`, which depends on the payment client the
//! simulator is a test double for), so the table stays written once.

use std::ffi::OsString;

/// One renamed setting name (both environment variables, or both flags with
/// their leading `--`), and the programs that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rename {
    pub old: &'static str,
    pub new: &'static str,
    /// Binary names (`order-producer`, `order-timeout-worker`, `wechatpay-sim`).
    pub programs: &'static [&'static str],
}

const PRODUCER: &str = "order-producer";
const WORKER: &str = "order-timeout-worker";
const SIM: &str = "wechatpay-sim";
const BOTH: &[&str] = &[PRODUCER, WORKER];

const fn r(old: &'static str, new: &'static str, programs: &'static [&'static str]) -> Rename {
    Rename { old, new, programs }
}

/// Renamed environment variables.
pub const ENV: &[Rename] = &[
    r("PAYMENT_WINDOWS", "DELAY_WINDOWS", BOTH),
    r("SWEEP_INTERVAL", "WORKER_SWEEP_INTERVAL", &[WORKER]),
    r("SWEEP_GRACE", "WORKER_SWEEP_GRACE", &[WORKER]),
    r("SWEEP_BATCH", "WORKER_SWEEP_BATCH", &[WORKER]),
    r("RECHECK_AFTER", "WORKER_RECHECK_AFTER", &[WORKER]),
    r("SUMMARY_INTERVAL", "WORKER_SUMMARY_INTERVAL", &[WORKER]),
    r("REFUND_INTERVAL", "WORKER_REFUND_INTERVAL", &[WORKER]),
];

/// Renamed flags.
pub const FLAGS: &[Rename] = &[
    r("--ttl-ms", "--delay-ttl-ms", BOTH),
    r("--window", "--delay-windows", BOTH),
    r(
        "--wechatpay-platform-cert",
        "--wechatpay-platform-certs",
        BOTH,
    ),
    // order-producer serve
    r("--listen", "--api-listen", &[PRODUCER]),
    r("--request-timeout", "--api-request-timeout", &[PRODUCER]),
    r("--header-timeout", "--api-header-timeout", &[PRODUCER]),
    r("--max-body-bytes", "--api-max-body-bytes", &[PRODUCER]),
    r("--max-in-flight", "--api-max-in-flight", &[PRODUCER]),
    r("--db-pool-size", "--api-db-pool-size", &[PRODUCER]),
    r("--shutdown-grace", "--api-shutdown-grace", &[PRODUCER]),
    // order-producer relay
    r("--batch-size", "--relay-batch-size", &[PRODUCER]),
    r("--poll-interval", "--relay-poll-interval", &[PRODUCER]),
    r("--confirm-timeout", "--relay-confirm-timeout", &[PRODUCER]),
    // order-timeout-worker
    r("--concurrency", "--worker-concurrency", &[WORKER]),
    r("--prefetch", "--worker-prefetch", &[WORKER]),
    r("--max-attempts", "--worker-max-attempts", &[WORKER]),
    r("--db-pool-size", "--worker-db-pool-size", &[WORKER]),
    r("--close-batch", "--worker-close-batch", &[WORKER]),
    r("--sweep-interval", "--worker-sweep-interval", &[WORKER]),
    r("--sweep-grace", "--worker-sweep-grace", &[WORKER]),
    r("--sweep-batch", "--worker-sweep-batch", &[WORKER]),
    r("--recheck-after", "--worker-recheck-after", &[WORKER]),
    r("--summary-interval", "--worker-summary-interval", &[WORKER]),
    r("--refund-interval", "--worker-refund-interval", &[WORKER]),
    // wechatpay-sim
    r("--listen", "--wechatpay-sim-listen", &[SIM]),
    r("--key-dir", "--wechatpay-sim-key-dir", &[SIM]),
    r("--env-file", "--wechatpay-sim-env-file", &[SIM]),
    r("--mchid", "--wechatpay-sim-mchid", &[SIM]),
    r(
        "--merchant-serial-no",
        "--wechatpay-sim-merchant-serial-no",
        &[SIM],
    ),
    r("--public-key-id", "--wechatpay-sim-public-key-id", &[SIM]),
    r("--auto-create", "--wechatpay-sim-auto-create", &[SIM]),
    r("--appid", "--wechatpay-sim-appid", &[SIM]),
    r("--apiv3-key-file", "--wechatpay-sim-apiv3-key-file", &[SIM]),
    r(
        "--notify-schedule",
        "--wechatpay-sim-notify-schedule",
        &[SIM],
    ),
    r("--refund-delay", "--wechatpay-sim-refund-delay", &[SIM]),
];

/// What to do before clap parses: the rewritten command line, the
/// environment variables to set, and the warnings to log (each once).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub args: Vec<OsString>,
    pub set_env: Vec<(&'static str, OsString)>,
    pub warnings: Vec<String>,
}

/// Both the old and the new name of a setting are set, to different values.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict(pub String);

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Conflict {}

fn warning(old: &str, new: &str) -> String {
    format!("{old} is deprecated, use {new}")
}

/// The plan for `program` given its command line (`args[0]` is the program
/// path and is kept) and a way to read the environment. Pure: nothing is
/// changed here; [`apply`] does it.
///
/// # Errors
/// An old and a new environment variable both set to different values.
pub fn plan(
    program: &str,
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Plan, Conflict> {
    let mut plan = Plan::default();
    let warn = |w: String, plan: &mut Plan| {
        if !plan.warnings.contains(&w) {
            plan.warnings.push(w);
        }
    };
    let flags: Vec<&Rename> = FLAGS
        .iter()
        .filter(|f| f.programs.contains(&program))
        .collect();
    let mut after_terminator = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || after_terminator {
            plan.args.push(arg);
            continue;
        }
        if arg == "--" {
            after_terminator = true;
            plan.args.push(arg);
            continue;
        }
        let renamed = arg.to_str().and_then(|text| {
            flags.iter().find_map(|f| {
                let rest = text.strip_prefix(f.old)?;
                (rest.is_empty() || rest.starts_with('=')).then(|| (f, format!("{}{rest}", f.new)))
            })
        });
        match renamed {
            Some((f, new)) => {
                warn(warning(f.old, f.new), &mut plan);
                plan.args.push(new.into());
            }
            None => plan.args.push(arg),
        }
    }
    for e in ENV.iter().filter(|e| e.programs.contains(&program)) {
        let Some(old) = env(e.old) else { continue };
        match env(e.new) {
            None => plan.set_env.push((e.new, old)),
            Some(new) if new == old => {}
            Some(_) => {
                return Err(Conflict(format!(
                    "{} and {} are both set, to different values: {} is the old name of {}; set only {}",
                    e.old, e.new, e.old, e.new, e.new
                )))
            }
        }
        warn(warning(e.old, e.new), &mut plan);
    }
    Ok(plan)
}

/// Applies [`plan`] to this process: sets the new environment variables
/// and returns the rewritten command line and the warnings. Call it first
/// thing in `main`, while the process has one thread.
///
/// # Errors
/// An old and a new environment variable both set to different values.
pub fn apply(program: &str) -> Result<(Vec<OsString>, Vec<String>), Conflict> {
    let plan = plan(program, std::env::args_os(), |k| std::env::var_os(k))?;
    for (k, v) in &plan.set_env {
        // Single-threaded at this point (called before anything spawns).
        std::env::set_var(k, v);
    }
    Ok((plan.args, plan.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn old_flags_are_rewritten_per_program_with_one_warning_each() {
        let p = plan(
            WORKER,
            os(&[
                "w",
                "--concurrency",
                "4",
                "--db-pool-size=3",
                "--concurrency=5",
            ]),
            no_env,
        )
        .unwrap();
        assert_eq!(
            p.args,
            os(&[
                "w",
                "--worker-concurrency",
                "4",
                "--worker-db-pool-size=3",
                "--worker-concurrency=5"
            ])
        );
        assert_eq!(
            p.warnings,
            [
                "--concurrency is deprecated, use --worker-concurrency",
                "--db-pool-size is deprecated, use --worker-db-pool-size"
            ]
        );
        // The same old flag means another thing in another program.
        let p = plan(PRODUCER, os(&["p", "serve", "--db-pool-size", "3"]), no_env).unwrap();
        assert_eq!(p.args, os(&["p", "serve", "--api-db-pool-size", "3"]));
        let p = plan(SIM, os(&["s", "--listen", "x"]), no_env).unwrap();
        assert_eq!(p.args, os(&["s", "--wechatpay-sim-listen", "x"]));
    }

    #[test]
    fn new_names_prefixes_values_and_args_after_the_terminator_are_untouched() {
        let argv = os(&[
            "p",
            "--windows",
            "--window-x",
            "--delay-windows",
            "1s",
            "--",
            "--window",
        ]);
        let p = plan(PRODUCER, argv.clone(), no_env).unwrap();
        assert_eq!(p.args, argv);
        assert!(p.warnings.is_empty());
        assert!(p.set_env.is_empty());
    }

    #[test]
    fn an_old_env_var_fills_the_new_one_and_both_different_is_refused() {
        let env = |k: &str| (k == "PAYMENT_WINDOWS").then(|| OsString::from("15m,30m"));
        let p = plan(PRODUCER, os(&["p"]), env).unwrap();
        assert_eq!(p.set_env, [("DELAY_WINDOWS", OsString::from("15m,30m"))]);
        assert_eq!(
            p.warnings,
            ["PAYMENT_WINDOWS is deprecated, use DELAY_WINDOWS"]
        );
        // A worker-only name means nothing to the producer.
        let env = |k: &str| (k == "SWEEP_GRACE").then(|| OsString::from("1m"));
        assert_eq!(
            plan(PRODUCER, os(&["p"]), env).unwrap(),
            Plan {
                args: os(&["p"]),
                ..Plan::default()
            }
        );
        // Both set, same value: only the warning.
        let same = |k: &str| {
            matches!(k, "SWEEP_GRACE" | "WORKER_SWEEP_GRACE").then(|| OsString::from("1m"))
        };
        let p = plan(WORKER, os(&["w"]), same).unwrap();
        assert!(p.set_env.is_empty());
        assert_eq!(p.warnings.len(), 1);
        let differ = |k: &str| match k {
            "SWEEP_GRACE" => Some(OsString::from("1m")),
            "WORKER_SWEEP_GRACE" => Some(OsString::from("2m")),
            _ => None,
        };
        let err = plan(WORKER, os(&["w"]), differ).unwrap_err().0;
        assert!(err.contains("SWEEP_GRACE and WORKER_SWEEP_GRACE"), "{err}");
    }

    #[test]
    fn the_table_is_well_formed() {
        for e in ENV {
            assert!(
                e.old.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{e:?}"
            );
            assert!(
                e.new.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{e:?}"
            );
        }
        for f in FLAGS {
            assert!(f.old.starts_with("--") && f.new.starts_with("--"), "{f:?}");
        }
        for (i, a) in FLAGS.iter().enumerate() {
            for b in &FLAGS[i + 1..] {
                let shared = a.programs.iter().any(|p| b.programs.contains(p));
                assert!(
                    !(shared && a.old == b.old),
                    "{} twice for one program",
                    a.old
                );
            }
        }
    }
}
