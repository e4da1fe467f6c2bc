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
