use std::process::{Command, Output};

use domain::testing::TestDb;
use domain::{get_sku, unpublished_count, OrderNo, SkuCode};

use crate::{stderr, stdout};

fn producer(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_order-producer"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info")
        .output()
        .expect("run order-producer")
}

fn stock(db: &TestDb, code: &str) -> u32 {
    get_sku(&mut db.conn(), &SkuCode::parse(code).unwrap())
        .unwrap()
        .unwrap()
        .stock
}

#[test]
fn migrate_creates_the_schema_and_a_second_run_changes_nothing() {
    let db = TestDb::empty();
    let url = db.url().expose_secret().to_owned();
    let all = domain::pending_migrations(&mut db.conn()).unwrap().len();
    let first = producer(&url, &["migrate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains(&format!("applied {all} migration")),
        "{}",
        stderr(&first)
    );
    let second = producer(&url, &["migrate"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("up to date"),
        "{}",
        stderr(&second)
    );
    assert!(domain::pending_migrations(&mut db.conn())
        .unwrap()
        .is_empty());
}

#[test]
fn migrate_creates_a_missing_database() {
    // The database TestDb::empty() names, dropped first so migrate must create it.
    let db = TestDb::empty();
    domain::testing::drop_database(db.name());
    let out = producer(db.url().expose_secret(), &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("created database"),
        "{}",
        stderr(&out)
    );
    assert!(domain::pending_migrations(&mut db.conn())
        .unwrap()
        .is_empty());
}

#[test]
fn stock_set_then_create_order_prints_only_the_order_number() {
    let db = TestDb::new();
    let url = db.url().expose_secret().to_owned();
    let set = producer(
        &url,
        &[
            "stock",
            "set",
            "--sku",
            "TEA",
            "--quantity",
            "5",
            "--price-fen",
            "350",
        ],
    );
    assert!(set.status.success(), "{}", stderr(&set));
    assert_eq!(
        stdout(&set).trim(),
        "SKU TEA: stock 0 -> 5, price 350 fen (new)"
    );

    let created = producer(
        &url,
        &["create-order", "--item", "TEA:2", "--item", "TEA:1"],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let out = stdout(&created);
    assert_eq!(out.lines().count(), 1, "stdout: {out:?}");
    let no = OrderNo::parse(out.trim()).expect("stdout is an order number");
    let order = domain::find_order(&mut db.conn(), &no).unwrap().unwrap();
    assert_eq!(order.total.get(), 3 * 350);
    assert_eq!(stock(&db, "TEA"), 2);
    assert_eq!(unpublished_count(&mut db.conn()).unwrap(), 1);
}

#[test]
fn create_order_respects_the_payment_window() {
    let db = TestDb::new();
    let url = db.url().expose_secret().to_owned();
    assert!(producer(
        &url,
        &[
            "stock",
            "set",
            "--sku",
            "TEA",
            "--quantity",
            "5",
            "--price-fen",
            "100"
        ]
    )
    .status
    .success());
    // A 10 s window needs a delay queue of 10 s or less.
    let create = |window: &str, ttl_ms: &str| {
        Command::new(env!("CARGO_BIN_EXE_order-producer"))
            .args([
                "create-order",
                "--item",
                "TEA:1",
                "--payment-window",
                window,
            ])
            .env("DATABASE_URL", &url)
            .env("DELAY_TTL_MS", ttl_ms)
            .env_remove("DELAY_WINDOWS")
            .env_remove("PAYMENT_WINDOWS")
            .output()
            .expect("run order-producer")
    };
    // Shorter than the only delay queue (20 s): refused, exit 2, nothing made.
    let refused = create("3s", "20000");
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--payment-window: a payment window of 3s cannot be served")
            && stderr(&refused).contains("windows of 20s or longer can be served"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(stock(&db, "TEA"), 5);
    let created = create("10s", "10000");
    assert!(created.status.success(), "{}", stderr(&created));
    let no = OrderNo::parse(stdout(&created).trim()).unwrap();
    let order = domain::find_order(&mut db.conn(), &no).unwrap().unwrap();
    assert_eq!(
        order.deadline - order.created_at,
        chrono::Duration::seconds(10)
    );
}

#[test]
fn create_order_beyond_the_stock_fails_naming_the_sku_and_leaves_stock_alone() {
    let db = TestDb::new();
    let url = db.url().expose_secret().to_owned();
    assert!(producer(
        &url,
        &[
            "stock",
            "set",
            "--sku",
            "TEA",
            "--quantity",
            "5",
            "--price-fen",
            "100"
        ],
    )
    .status
    .success());
    assert!(producer(
        &url,
        &[
            "stock",
            "set",
            "--sku",
            "MUG",
            "--quantity",
            "1",
            "--price-fen",
            "100"
        ],
    )
    .status
    .success());
    let out = producer(
        &url,
        &["create-order", "--item", "TEA:1", "--item", "MUG:2"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("insufficient stock for SKU MUG: 2 requested, 1 available"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
    assert_eq!((stock(&db, "TEA"), stock(&db, "MUG")), (5, 1));
    assert_eq!(unpublished_count(&mut db.conn()).unwrap(), 0);

    let unknown = producer(&url, &["create-order", "--item", "GHOST:1"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown SKU GHOST"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn bad_usage_exits_2_saying_what_is_wrong() {
    let db = TestDb::new();
    let url = db.url().expose_secret().to_owned();
    let cases: &[(&[&str], &str)] = &[
        (&["create-order"], "--item"),
        (&["create-order", "--item", "TEA:0"], "quantity for SKU TEA"),
        (&["create-order", "--item", "TEA"], "CODE:QTY"),
        (
            &["create-order", "--item", "TEA:1", "--payment-window", "30"],
            "time unit needed",
        ),
        (
            &["stock", "set", "--sku", "TEA", "--quantity", "-1"],
            "stock must be",
        ),
        (
            &["stock", "set", "--sku", "has space", "--quantity", "1"],
            "SKU code",
        ),
        (
            &[
                "stock",
                "set",
                "--sku",
                "TEA",
                "--quantity",
                "1",
                "--price-fen",
                "-5",
            ],
            "amount in fen",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let out = producer(&url, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn an_unmigrated_schema_exits_2_telling_to_migrate() {
    let db = TestDb::empty();
    let out = producer(
        db.url().expose_secret(),
        &["stock", "set", "--sku", "TEA", "--quantity", "1"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("run `order-producer migrate` first"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_database_exits_1_without_printing_the_password() {
    // Port 1 on loopback: nothing listens there.
    let out = producer(
        "postgres://app:hunter2secret@127.0.0.1:1/orders",
        &["create-order", "--item", "TEA:1"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("could not connect to the database"), "{err}");
    assert!(err.contains("app:***@127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2secret"), "{err}");
}

#[test]
fn commands_at_trace_level_print_no_password() {
    let env = crate::env();
    let user = env.vhost.secret_user();
    let db_password = "db-s3cret-19be04";
    let db_url =
        env.db
            .url()
            .expose_secret()
            .replacen("postgres@", &format!("postgres:{db_password}@"), 1);
    let orders = env.orders(2, std::time::Duration::from_mins(30));
    let mut printed = String::new();
    for args in [
        &["declare"][..],
        &["relay", "--once"],
        &["status"],
        &["parked"],
        &["publish", &orders[0]],
    ] {
        let out = env
            .command(args)
            .env("RUST_LOG", "trace")
            .env("AMQP_URL", user.url.expose_secret())
            .env("DATABASE_URL", &db_url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&stderr(&out));
    }
    assert!(printed.contains("TRACE") || printed.contains("DEBUG"));
    assert!(!printed.contains(&user.password), "AMQP password printed");
    assert!(!printed.contains(db_password), "database password printed");
}

#[test]
fn parked_without_a_topology_is_a_configuration_error() {
    let env = crate::env();
    let out = env.run(&["parked"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("queue.ordertimeout.parked does not exist"),
        "{}",
        stderr(&out)
    );
}

/// Defect 2 (issue 21): a SKU without a price could be sold for 0 fen, an
/// order WeChat Pay can never take.
#[test]
fn a_sku_needs_a_price_and_one_without_is_not_for_sale() {
    let db = TestDb::new();
    let url = db.url().expose_secret().to_owned();
    for extra in [&[][..], &["--price-fen", "0"][..]] {
        let mut args = vec!["stock", "set", "--sku", "NEW", "--quantity", "5"];
        args.extend_from_slice(extra);
        let out = producer(&url, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("SKU NEW") && err.contains("--price-fen"),
            "{err}"
        );
    }
    assert!(domain::list_skus(&mut db.conn()).unwrap().is_empty());
    let set = producer(
        &url,
        &[
            "stock",
            "set",
            "--sku",
            "TEA",
            "--quantity",
            "5",
            "--price-fen",
            "350",
        ],
    );
    assert!(set.status.success(), "{}", stderr(&set));
    let zero = producer(
        &url,
        &[
            "stock",
            "set",
            "--sku",
            "TEA",
            "--quantity",
            "9",
            "--price-fen",
            "0",
        ],
    );
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
    // Omitted: the price stays.
    let keep = producer(&url, &["stock", "set", "--sku", "TEA", "--quantity", "6"]);
    assert!(keep.status.success(), "{}", stderr(&keep));
    assert_eq!(stdout(&keep).trim(), "SKU TEA: stock 5 -> 6, price 350 fen");

    // A SKU priced 0 before prices were required.
    psql(
        &db,
        "INSERT INTO skus (code, stock, price_fen) VALUES ('FREE', 5, 0)",
    );
    let out = producer(
        &url,
        &["create-order", "--item", "TEA:1", "--item", "FREE:1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("SKU FREE is not for sale"),
        "{}",
        stderr(&out)
    );
    assert_eq!((stock(&db, "TEA"), stock(&db, "FREE")), (6, 5));
    assert_eq!(unpublished_count(&mut db.conn()).unwrap(), 0);
}

fn psql(db: &TestDb, sql: &str) {
    let out = std::process::Command::new("psql")
        .args([
            db.url().expose_secret(),
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_decision_that_does_not_apply_exits_2_and_names_why() {
    let db = TestDb::new();
    let url = db.url().expose_secret().to_owned();
    let out = producer(
        &url,
        &[
            "cases",
            "accept",
            "NOSUCHORDER1",
            "--by",
            "alice",
            "--reason",
            "a test",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused: no order NOSUCHORDER1"),
        "{}",
        stderr(&out)
    );
    // No --by, no $USER or $LOGNAME: the name of the process's uid.
    let out = Command::new(env!("CARGO_BIN_EXE_order-producer"))
        .args(["cases", "accept", "NOSUCHORDER1", "--reason", "a test"])
        .env("DATABASE_URL", &url)
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .expect("run order-producer");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused: no order NOSUCHORDER1"),
        "an operator was found: {}",
        stderr(&out)
    );
    // No reason: bad usage before anything is read.
    let out = producer(&url, &["cases", "accept", "NOSUCHORDER1", "--by", "alice"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--reason"), "{}", stderr(&out));
    // The list of an empty store.
    let out = producer(
        &url,
        &["cases", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(
            "0 order(s), 0 refund(s), 0 discrepancy(ies) with the trade bill, parked messages: unknown"
        ),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_reader_that_goes_away_ends_a_report_quietly() {
    // `order-producer status | head -1`: the pipe closes before the report
    // is written; the command stops without an `error: Broken pipe` line.
    let env = crate::env();
    let _ = env.ok(&["migrate"]);
    let _ = env.ok(&["declare"]);
    let mut child = env
        .command(&["status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(
        !err.contains("Broken pipe") && !err.contains("error"),
        "{err}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "it did not write everything: {err}"
    );
    // With a reader, the same report is written whole.
    let whole = env.ok(&["status"]);
    assert!(whole.lines().count() > 5, "{whole}");
}
