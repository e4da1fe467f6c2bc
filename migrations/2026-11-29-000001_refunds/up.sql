-- Refunds of payments after close (issue 12).
--
-- One refund per payment after close (payment_id unique), created in the
-- transaction that records that payment. out_refund_no is derived from the
-- order number and the payment row, so every retry of the request names
-- the same refund at WeChat Pay, which makes a repeat a no-op there.
--
-- status follows WeChat Pay: requested (not yet accepted by WeChat Pay),
-- processing, then succeeded, closed or abnormal (the buyer's account
-- cannot take the money back: a human must act). needs_human holds why a
-- refund was parked (a permanent error, ABNORMAL); the worker leaves those
-- alone. next_attempt_at is the worker's next look (its claim, too).
CREATE TABLE refunds (
    id               BIGSERIAL   PRIMARY KEY,
    payment_id       BIGINT      NOT NULL UNIQUE REFERENCES payments (id),
    order_id         BIGINT      NOT NULL REFERENCES orders (id),
    out_refund_no    TEXT        NOT NULL UNIQUE
        CONSTRAINT refunds_out_refund_no_check CHECK (out_refund_no ~ '^[0-9A-Za-z_|*@-]{1,64}$'),
    amount_fen       BIGINT      NOT NULL CONSTRAINT refunds_amount_fen_check CHECK (amount_fen > 0),
    status           TEXT        NOT NULL DEFAULT 'requested'
        CONSTRAINT refunds_status_check CHECK (status IN ('requested', 'processing', 'succeeded', 'abnormal', 'closed')),
    refund_id        TEXT,
    attempts         INTEGER     NOT NULL DEFAULT 0 CONSTRAINT refunds_attempts_check CHECK (attempts >= 0),
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    needs_human      TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ,
    CONSTRAINT refunds_finished_check CHECK ((finished_at IS NOT NULL) = (status IN ('succeeded', 'abnormal', 'closed')))
);
CREATE INDEX refunds_due_idx ON refunds (next_attempt_at)
    WHERE status IN ('requested', 'processing') AND needs_human IS NULL;
CREATE INDEX refunds_order_idx ON refunds (order_id);

ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close', 'anomaly', 'recheck',
                    'prepay', 'refund'));

-- Payments after close recorded before this migration get their refund too.
INSERT INTO refunds (payment_id, order_id, out_refund_no, amount_fen)
SELECT p.id, p.order_id, o.order_no || '-R' || p.id, p.amount_fen
  FROM payments p JOIN orders o ON o.id = p.order_id
 WHERE p.paid_after_close AND p.amount_fen > 0;
