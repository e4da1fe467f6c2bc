-- The front door (issue 11): the shop's HTTP API.
--
-- idempotency_keys: one row per `Idempotency-Key` a shop sent with
-- `POST /v1/orders`, written in the transaction that creates the order, so a
-- retried request finds the order instead of reserving stock a second time.
-- `request` is the canonical form of what was asked (items merged and
-- sorted, window): the same key with another request is refused. A refused
-- request (unknown SKU, no stock) rolls the row back with everything else,
-- so a retry is judged afresh.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY
        CONSTRAINT idempotency_keys_key_check CHECK (length(key) BETWEEN 1 AND 255),
    request     TEXT NOT NULL,
    order_id    BIGINT REFERENCES orders (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_order_idx ON idempotency_keys (order_id);

-- A Native prepay created at WeChat Pay for the order (its code_url goes to
-- the buyer) is part of the order's audit trail.
ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close', 'anomaly', 'recheck',
                    'prepay'));
