use diesel::{Connection, PgConnection, RunQueryDsl};
use domain::testing::{admin_url, url_with_database};
use domain::{pending_migrations, run_migrations};

/// An empty database (not from the template), dropped at the end.
struct EmptyDb(String);

impl Drop for EmptyDb {
    fn drop(&mut self) {
        let mut admin = PgConnection::establish(&admin_url()).unwrap();
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .execute(&mut admin);
    }
}

#[test]
fn migrations_create_the_schema_once_and_a_second_run_changes_nothing() {
    let name = format!("ot_test_empty_{}_{}", std::process::id(), rand::random::<u32>());
    let mut admin = PgConnection::establish(&admin_url()).unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .unwrap();
    let _guard = EmptyDb(name.clone());
    let mut conn = PgConnection::establish(&url_with_database(&admin_url(), &name)).unwrap();

    assert_eq!(pending_migrations(&mut conn).unwrap().len(), 1);
    let applied = run_migrations(&mut conn).unwrap();
    assert_eq!(applied.len(), 1, "first run applies the migration");
    assert!(pending_migrations(&mut conn).unwrap().is_empty());
    assert!(run_migrations(&mut conn).unwrap().is_empty(), "second run is a no-op");

    #[derive(diesel::QueryableByName)]
    struct Table {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
    }
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
        ["order_events", "order_items", "orders", "outbox", "payments", "skus", "stock_adjustments"]
    );
}
