-- Money safety at the edges (issue 9).
--
-- anomaly: a WeChat Pay answer that does not match the order (amount,
-- currency, missing or unreadable fields, a transaction id recorded for
-- another order). The order is left as it was (pending orders keep their
-- stock held) and waits for a human; the sweep skips it.
--
-- recheck_at: set by the close that happened because WeChat Pay had no
-- payment order (ORDER_NOT_EXIST); the one recheck that looks again for a
-- payment order created later clears it.
--
-- next_check_at / check_failures: the sweep's back-off, so that an order it
-- cannot settle is asked about at most once per step of the retry ladder.
ALTER TABLE orders
    ADD COLUMN anomaly         TEXT
        CONSTRAINT orders_anomaly_check CHECK (anomaly IN (
            'amount_mismatch', 'missing_amount', 'bad_success_time',
            'missing_transaction_id', 'duplicate_transaction')),
    ADD COLUMN anomaly_at      TIMESTAMPTZ,
    ADD COLUMN recheck_at      TIMESTAMPTZ,
    ADD COLUMN next_check_at   TIMESTAMPTZ,
    ADD COLUMN check_failures  INTEGER NOT NULL DEFAULT 0
        CONSTRAINT orders_check_failures_check CHECK (check_failures >= 0),
    ADD CONSTRAINT orders_anomaly_at_check CHECK ((anomaly IS NULL) = (anomaly_at IS NULL)),
    ADD CONSTRAINT orders_recheck_closed_check CHECK (recheck_at IS NULL OR status = 'closed');

ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close', 'anomaly', 'recheck'));

-- The sweep pages through overdue pending orders by (deadline, id) and
-- leaves anomalies to a human.
DROP INDEX orders_pending_deadline_idx;
CREATE INDEX orders_pending_deadline_idx ON orders (deadline, id)
    WHERE status = 'pending_payment' AND anomaly IS NULL;
CREATE INDEX orders_recheck_idx ON orders (recheck_at, id) WHERE recheck_at IS NOT NULL;
CREATE INDEX orders_anomaly_idx ON orders (anomaly_at) WHERE anomaly IS NOT NULL;
