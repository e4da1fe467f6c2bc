// @generated automatically by Diesel CLI.

diesel::table! {
    order_events (id) {
        id -> Int8,
        order_id -> Int8,
        kind -> Text,
        detail -> Text,
        created_at -> Timestamptz,
        actor -> Nullable<Text>,
    }
}

diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        request -> Text,
        order_id -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    order_items (id) {
        id -> Int8,
        order_id -> Int8,
        sku_id -> Int8,
        quantity -> Int4,
        unit_price_fen -> Int8,
    }
}

diesel::table! {
    orders (id) {
        id -> Int8,
        order_no -> Text,
        status -> Text,
        total_fen -> Int8,
        deadline -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        paid_at -> Nullable<Timestamptz>,
        closed_at -> Nullable<Timestamptz>,
        close_reason -> Nullable<Text>,
        anomaly -> Nullable<Text>,
        anomaly_at -> Nullable<Timestamptz>,
        recheck_at -> Nullable<Timestamptz>,
        next_check_at -> Nullable<Timestamptz>,
        check_failures -> Int4,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        order_id -> Int8,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    payments (id) {
        id -> Int8,
        order_id -> Int8,
        transaction_id -> Text,
        amount_fen -> Int8,
        success_time -> Timestamptz,
        paid_after_close -> Bool,
        recorded_at -> Timestamptz,
    }
}

diesel::table! {
    refunds (id) {
        id -> Int8,
        payment_id -> Int8,
        order_id -> Int8,
        out_refund_no -> Text,
        amount_fen -> Int8,
        status -> Text,
        refund_id -> Nullable<Text>,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        needs_human -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    skus (id) {
        id -> Int8,
        code -> Text,
        stock -> Int4,
        price_fen -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    stock_adjustments (id) {
        id -> Int8,
        sku_id -> Int8,
        delta -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(idempotency_keys -> orders (order_id));
diesel::joinable!(order_events -> orders (order_id));
diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(order_items -> skus (sku_id));
diesel::joinable!(outbox -> orders (order_id));
diesel::joinable!(payments -> orders (order_id));
diesel::joinable!(refunds -> orders (order_id));
diesel::joinable!(refunds -> payments (payment_id));
diesel::joinable!(stock_adjustments -> skus (sku_id));

diesel::allow_tables_to_appear_in_same_query!(
    idempotency_keys,
    order_events,
    order_items,
    orders,
    outbox,
    payments,
    refunds,
    skus,
    stock_adjustments,
);
