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
        accepted_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    reconciliations (id) {
        id -> Int8,
        bill_date -> Date,
        outcome -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        bill_sha1 -> Nullable<Text>,
        bill_rows -> Int4,
        payments_fen -> Int8,
        refunds_fen -> Int8,
        matched -> Int4,
        acted -> Int4,
        discrepancies -> Int4,
        deferred -> Int4,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    bill_rows (bill_date, line) {
        bill_date -> Date,
        line -> Int4,
        kind -> Text,
        trade_time -> Timestamptz,
        trade_state -> Text,
        transaction_id -> Text,
        out_trade_no -> Text,
        out_refund_no -> Nullable<Text>,
        refund_id -> Nullable<Text>,
        amount_fen -> Int8,
    }
}

diesel::table! {
    discrepancies (id) {
        id -> Int8,
        kind -> Text,
        subject -> Text,
        bill_date -> Date,
        order_id -> Nullable<Int8>,
        order_no -> Text,
        ours -> Text,
        theirs -> Text,
        found_at -> Timestamptz,
        found_by -> Int8,
        resolved_at -> Nullable<Timestamptz>,
        resolved_by -> Nullable<Text>,
        resolution -> Nullable<Text>,
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

diesel::joinable!(discrepancies -> orders (order_id));
diesel::joinable!(discrepancies -> reconciliations (found_by));
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
    bill_rows,
    discrepancies,
    idempotency_keys,
    order_events,
    order_items,
    orders,
    outbox,
    payments,
    reconciliations,
    refunds,
    skus,
    stock_adjustments,
);
