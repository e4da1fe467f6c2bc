use domain::testing::TestDb;
use domain::{get_sku, list_skus, set_stock, stock_balances, Fen, StockLevel};

use crate::{load, sku, stock_of};

#[test]
fn set_stock_creates_a_sku_then_updates_it_and_records_each_change() {
    let db = TestDb::new();
    let mut conn = db.conn();
    let first = set_stock(
        &mut conn,
        &sku("TEA"),
        StockLevel::new(10).unwrap(),
        Some(Fen::new(350).unwrap()),
    )
    .unwrap();
    assert!(first.created);
    assert_eq!((first.previous, first.current), (0, 10));
    let second = set_stock(&mut conn, &sku("TEA"), StockLevel::new(4).unwrap(), None).unwrap();
    assert!(!second.created);
    assert_eq!((second.previous, second.current), (10, 4));
    assert_eq!(stock_of(&mut conn, "TEA"), 4);

    let b = &stock_balances(&mut conn).unwrap()[0];
    assert_eq!((b.stock, b.held, b.loaded), (4, 0, 4));
}

#[test]
fn set_stock_repeated_with_the_same_values_changes_nothing() {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    use diesel::RunQueryDsl;
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "TEA", 7, 300);
    let again = set_stock(
        &mut conn,
        &sku("TEA"),
        StockLevel::new(7).unwrap(),
        Some(Fen::new(300).unwrap()),
    )
    .unwrap();
    assert_eq!(
        (again.created, again.previous, again.current),
        (false, 7, 7)
    );
    let n = diesel::sql_query("SELECT count(*) AS n FROM stock_adjustments")
        .get_result::<N>(&mut conn)
        .unwrap()
        .n;
    assert_eq!(n, 1, "a no-op set records no adjustment");
}

#[test]
fn set_stock_keeps_the_price_unless_a_new_one_is_given() {
    let db = TestDb::new();
    let mut conn = db.conn();
    load(&mut conn, "MUG", 5, 1999);
    let _ = set_stock(&mut conn, &sku("MUG"), StockLevel::new(6).unwrap(), None).unwrap();
    assert_eq!(
        get_sku(&mut conn, &sku("MUG"))
            .unwrap()
            .unwrap()
            .price
            .get(),
        1999
    );
    let _ = set_stock(
        &mut conn,
        &sku("MUG"),
        StockLevel::new(6).unwrap(),
        Some(Fen::new(2500).unwrap()),
    )
    .unwrap();
    assert_eq!(
        get_sku(&mut conn, &sku("MUG"))
            .unwrap()
            .unwrap()
            .price
            .get(),
        2500
    );
}

#[test]
fn reading_skus_unknown_is_none_and_the_list_is_sorted_by_code() {
    let db = TestDb::new();
    let mut conn = db.conn();
    assert_eq!(get_sku(&mut conn, &sku("NOPE")).unwrap(), None);
    load(&mut conn, "ZED", 1, 1);
    load(&mut conn, "ABC", 2, 2);
    let codes: Vec<String> = list_skus(&mut conn)
        .unwrap()
        .into_iter()
        .map(|s| s.code.to_string())
        .collect();
    assert_eq!(codes, ["ABC", "ZED"]);
}

#[test]
fn a_new_sku_needs_a_price_and_no_price_may_be_zero() {
    use domain::StoreError;
    let db = TestDb::new();
    let mut conn = db.conn();
    let ten = StockLevel::new(10).unwrap();
    for price in [None, Some(Fen::new(0).unwrap())] {
        let err = set_stock(&mut conn, &sku("NEW"), ten, price).unwrap_err();
        assert!(
            matches!(&err, StoreError::PriceRequired(s) if s.as_str() == "NEW"),
            "{price:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("NEW") && message.contains("--price-fen"),
            "{message}"
        );
    }
    assert!(list_skus(&mut conn).unwrap().is_empty(), "nothing created");
    assert!(stock_balances(&mut conn).unwrap().is_empty());

    load(&mut conn, "MUG", 5, 1999);
    let err = set_stock(&mut conn, &sku("MUG"), ten, Some(Fen::new(0).unwrap())).unwrap_err();
    assert!(
        matches!(&err, StoreError::PriceRequired(s) if s.as_str() == "MUG"),
        "{err:?}"
    );
    let mug = get_sku(&mut conn, &sku("MUG")).unwrap().unwrap();
    assert_eq!((mug.stock, mug.price.get()), (5, 1999), "nothing changed");
}
