-- The order-timeout store. The database defends the data itself: stock never
-- negative, quantities positive, statuses from a closed set, one payment per
-- WeChat transaction, and an append-only audit trail.

CREATE TABLE skus (
    id          BIGSERIAL PRIMARY KEY,
    code        TEXT        NOT NULL CONSTRAINT skus_code_key UNIQUE
                            CONSTRAINT skus_code_check CHECK (code ~ '^[A-Za-z0-9._-]{1,64}$'),
    stock       INTEGER     NOT NULL CONSTRAINT skus_stock_check CHECK (stock >= 0),
    price_fen   BIGINT      NOT NULL DEFAULT 0 CONSTRAINT skus_price_fen_check CHECK (price_fen >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every change of stock made by an operator (not by orders), so that
-- conservation can be checked: stock + held by pending and paid orders
-- = sum of adjustments.
CREATE TABLE stock_adjustments (
    id          BIGSERIAL PRIMARY KEY,
    sku_id      BIGINT      NOT NULL REFERENCES skus (id),
    delta       BIGINT      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stock_adjustments_sku_id_idx ON stock_adjustments (sku_id);

CREATE TABLE orders (
    id            BIGSERIAL PRIMARY KEY,
    -- A valid WeChat Pay out_trade_no: 6 to 32 of 0-9 a-z A-Z _ - | *
    order_no      TEXT        NOT NULL CONSTRAINT orders_order_no_key UNIQUE
                              CONSTRAINT orders_order_no_check CHECK (order_no ~ '^[0-9A-Za-z_|*-]{6,32}$'),
    status        TEXT        NOT NULL DEFAULT 'pending_payment'
                              CONSTRAINT orders_status_check CHECK (status IN ('pending_payment', 'paid', 'closed')),
    total_fen     BIGINT      NOT NULL CONSTRAINT orders_total_fen_check CHECK (total_fen >= 0),
    deadline      TIMESTAMPTZ NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at       TIMESTAMPTZ,
    closed_at     TIMESTAMPTZ,
    close_reason  TEXT,
    CONSTRAINT orders_deadline_check CHECK (deadline >= created_at),
    CONSTRAINT orders_paid_at_check CHECK (status <> 'paid' OR paid_at IS NOT NULL),
    CONSTRAINT orders_closed_at_check CHECK (status <> 'closed' OR closed_at IS NOT NULL)
);
-- The sweep: pending orders by deadline.
CREATE INDEX orders_pending_deadline_idx ON orders (deadline) WHERE status = 'pending_payment';

CREATE TABLE order_items (
    id              BIGSERIAL PRIMARY KEY,
    order_id        BIGINT  NOT NULL REFERENCES orders (id),
    sku_id          BIGINT  NOT NULL REFERENCES skus (id),
    quantity        INTEGER NOT NULL CONSTRAINT order_items_quantity_check CHECK (quantity > 0),
    unit_price_fen  BIGINT  NOT NULL CONSTRAINT order_items_unit_price_fen_check CHECK (unit_price_fen >= 0),
    CONSTRAINT order_items_order_sku_key UNIQUE (order_id, sku_id)
);
CREATE INDEX order_items_sku_id_idx ON order_items (sku_id);

CREATE TABLE payments (
    id                BIGSERIAL PRIMARY KEY,
    order_id          BIGINT      NOT NULL REFERENCES orders (id),
    transaction_id    TEXT        NOT NULL CONSTRAINT payments_transaction_id_key UNIQUE
                                  CONSTRAINT payments_transaction_id_check CHECK (length(transaction_id) BETWEEN 1 AND 64),
    amount_fen        BIGINT      NOT NULL CONSTRAINT payments_amount_fen_check CHECK (amount_fen >= 0),
    success_time      TIMESTAMPTZ NOT NULL,
    -- The order had already been closed locally (stock given back) when this
    -- payment was learned of: someone must refund it.
    paid_after_close  BOOLEAN     NOT NULL DEFAULT false,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payments_order_id_idx ON payments (order_id);
CREATE INDEX payments_paid_after_close_idx ON payments (order_id) WHERE paid_after_close;

-- Delay messages to publish, written in the same transaction as the order.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    order_id      BIGINT      NOT NULL REFERENCES orders (id),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    attempts      INTEGER     NOT NULL DEFAULT 0 CONSTRAINT outbox_attempts_check CHECK (attempts >= 0),
    last_error    TEXT
);
-- The relay: unpublished rows in id order.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_order_id_idx ON outbox (order_id);

-- Append-only audit trail of everything that happened to an order.
CREATE TABLE order_events (
    id          BIGSERIAL PRIMARY KEY,
    order_id    BIGINT      NOT NULL REFERENCES orders (id),
    kind        TEXT        NOT NULL CONSTRAINT order_events_kind_check
                            CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close')),
    detail      TEXT        NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_events_order_id_idx ON order_events (order_id);

CREATE FUNCTION order_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'order_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER order_events_append_only
    BEFORE UPDATE OR DELETE ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_append_only();
