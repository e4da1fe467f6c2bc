use std::time::{Duration, Instant};

use domain::testing::TestDb;
use domain::{build_pool, count_by_status, DatabaseUrl, StoreError};

#[test]
fn the_pool_hands_out_working_connections_to_threads() {
    let db = TestDb::new();
    let pool = db.pool(4);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut conn = pool.get().unwrap();
                count_by_status(&mut conn).unwrap().len()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 3);
    }
}

#[test]
fn an_unreachable_database_fails_fast_without_the_password() {
    let url = DatabaseUrl::new("postgres://app:pa55word@127.0.0.1:1/orders");
    let started = Instant::now();
    let err = build_pool(&url, 2, Duration::from_secs(5)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::Connect(_)));
    assert!(err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(!msg.contains("pa55word"), "{msg}");
    assert!(!format!("{err:?}").contains("pa55word"));
}

/// The backend process id of a pooled connection.
fn backend_pid(conn: &mut domain::PgConnection) -> i32 {
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(conn)
        .unwrap()
        .pid
}

fn terminate(db: &TestDb, pid: i32) {
    use diesel::RunQueryDsl;
    let _ = diesel::sql_query(format!("SELECT pg_terminate_backend({pid}, 5000)"))
        .execute(&mut db.conn())
        .unwrap();
}

#[test]
fn a_connection_that_died_while_idle_is_replaced_before_it_is_handed_out() {
    let db = TestDb::new();
    let pool = db.pool(1);
    let pid = backend_pid(&mut pool.get().unwrap());
    terminate(&db, pid);
    // Idle past the threshold: the pool checks it, finds it dead, opens another.
    std::thread::sleep(domain::pool::CHECK_IDLE_AFTER + Duration::from_millis(200));
    let mut conn = pool.get().unwrap();
    assert_ne!(backend_pid(&mut conn), pid);
    assert_eq!(count_by_status(&mut conn).unwrap().len(), 3);
}

#[test]
fn a_connection_that_died_in_steady_use_fails_once_and_is_dropped() {
    let db = TestDb::new();
    let pool = db.pool(1);
    let pid = backend_pid(&mut pool.get().unwrap());
    terminate(&db, pid);
    // Handed out unchecked (it was just used): the statement fails, as a
    // transient error every caller retries; diesel marks it broken.
    let mut dead = pool.get().unwrap();
    let err = count_by_status(&mut dead).unwrap_err();
    drop(dead);
    assert!(err.is_transient(), "{err}");
    // The pool dropped it: the next one works, on a new backend.
    let mut conn = pool.get().unwrap();
    assert_ne!(backend_pid(&mut conn), pid);
    assert_eq!(count_by_status(&mut conn).unwrap().len(), 3);
}

#[test]
fn steady_use_sends_no_connection_checks_and_a_close_is_one_round_trip() {
    let db = TestDb::new();
    let counter = domain::pool::RoundTrips::new();
    let pool =
        domain::build_counted_pool(db.url(), 1, Duration::from_secs(5), Some(&counter)).unwrap();
    let mut setup = db.conn();
    crate::load(&mut setup, "TEA", 10, 100);
    crate::load(&mut setup, "CUP", 10, 300);
    let orders: Vec<_> = (0..3)
        .map(|_| crate::order(&mut setup, &[("TEA", 2), ("CUP", 1)]).order_no)
        .collect();
    // Warm: the first use of each statement prepares it (a round trip of its own).
    let _ = domain::find_order(&mut pool.get().unwrap(), &orders[0]).unwrap();
    let _ = domain::close_unpaid(&mut pool.get().unwrap(), &orders[0], "warm", None).unwrap();
    let before = counter.snapshot();
    for no in &orders[1..] {
        let _ = domain::find_order(&mut pool.get().unwrap(), no).unwrap();
        let out = domain::close_unpaid(&mut pool.get().unwrap(), no, "test", None).unwrap();
        assert_eq!(out, domain::CloseOutcome::Closed { lines: 2, units: 3 });
    }
    let sent = counter.snapshot() - before;
    // Two orders, each: one read, one close; no checks, no BEGIN/COMMIT.
    assert_eq!(
        sent,
        domain::pool::Sent {
            statements: 4,
            round_trips: 4,
            transactions: 0,
            connections: 0,
        }
    );
    // All three closed: every unit back.
    assert_eq!(crate::stock_of(&mut setup, "TEA"), 10);
    assert_eq!(crate::stock_of(&mut setup, "CUP"), 10);
    crate::assert_conserved(&mut setup);
    // A repeat changes nothing and costs the close and the status read.
    let before = counter.snapshot();
    let again = domain::close_unpaid(&mut pool.get().unwrap(), &orders[1], "again", None).unwrap();
    assert_eq!(again, domain::CloseOutcome::AlreadyClosed);
    assert_eq!((counter.snapshot() - before).round_trips, 1 + 2);
    assert_eq!(crate::stock_of(&mut setup, "TEA"), 10);
}
