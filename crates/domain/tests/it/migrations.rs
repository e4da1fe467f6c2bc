use diesel::RunQueryDsl;
use domain::testing::TestDb;
use domain::{pending_migrations, run_migrations};

/// How many migrations the repository holds (each is a directory).
fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count()
}

#[test]
fn migrations_create_the_schema_once_and_a_second_run_changes_nothing() {
    #[derive(diesel::QueryableByName)]
    struct Table {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
    }
    let db = TestDb::empty();
    let mut conn = db.conn();

    let n = migration_count();
    assert!(n >= 2);
    assert_eq!(pending_migrations(&mut conn).unwrap().len(), n);
    let applied = run_migrations(&mut conn).unwrap();
    assert_eq!(applied.len(), n, "first run applies every migration");
    assert!(pending_migrations(&mut conn).unwrap().is_empty());
    assert!(
        run_migrations(&mut conn).unwrap().is_empty(),
        "second run is a no-op"
    );

    let mut tables: Vec<String> = diesel::sql_query(
        "SELECT table_name::text AS table_name FROM information_schema.tables
          WHERE table_schema = 'public' AND table_name NOT LIKE '%diesel%'",
    )
    .load::<Table>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|t| t.table_name)
    .collect();
    tables.sort();
    assert_eq!(
        tables,
        [
            "bill_rows",
            "discrepancies",
            "idempotency_keys",
            "order_events",
            "order_items",
            "orders",
            "outbox",
            "payments",
            "reconciliations",
            "refunds",
            "skus",
            "stock_adjustments"
        ]
    );
}

#[test]
fn concurrent_migrations_queue_on_the_lock_and_apply_once() {
    let db = TestDb::empty();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let mut conn = db.conn();
            std::thread::spawn(move || run_migrations(&mut conn).unwrap().len())
        })
        .collect();
    let applied: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(applied, migration_count(), "each applied once in all");
}

#[test]
fn the_template_drop_script_knows_the_in_use_lock() {
    let script = include_str!("../../../../scripts/drop-test-templates.sh");
    let key = domain::testing::TEMPLATE_IN_USE_KEY.to_string();
    assert!(script.contains(&format!("in_use_key={key}")), "{key}");
}

#[test]
fn asking_what_is_pending_writes_nothing() {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = TestDb::empty();
    let mut conn = db.conn();
    assert_eq!(
        pending_migrations(&mut conn).unwrap().len(),
        migration_count()
    );
    // A check at start-up (the worker's, serve's) on a database never
    // migrated leaves it as it was: no bookkeeping table either.
    let tables = diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .get_result::<Count>(&mut conn)
    .unwrap();
    assert_eq!(tables.n, 0, "the check created a table");
}
