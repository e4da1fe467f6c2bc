-- Reconciliation against WeChat Pay's daily trade bill
-- (`order-timeout-worker reconcile`).

-- Each run of one bill date: what the bill held and what the run did with it.
-- A failed run keeps its error and nothing else (no rows, no discrepancies).
CREATE TABLE reconciliations (
    id BIGSERIAL PRIMARY KEY,
    bill_date DATE NOT NULL,
    outcome TEXT NOT NULL
        CONSTRAINT reconciliations_outcome_check
        CHECK (outcome IN ('running', 'reconciled', 'no_statement', 'failed')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    -- SHA1 (hex) of the decompressed bill text, as WeChat Pay named it.
    bill_sha1 TEXT,
    bill_rows INT NOT NULL DEFAULT 0 CHECK (bill_rows >= 0),
    -- The bill's summary: 应结订单总金额 and 退款总金额, in fen.
    payments_fen BIGINT NOT NULL DEFAULT 0,
    refunds_fen BIGINT NOT NULL DEFAULT 0,
    matched INT NOT NULL DEFAULT 0 CHECK (matched >= 0),
    acted INT NOT NULL DEFAULT 0 CHECK (acted >= 0),
    -- Discrepancies this run found for the first time.
    discrepancies INT NOT NULL DEFAULT 0 CHECK (discrepancies >= 0),
    -- Payments recorded here near midnight whose neighbouring day's bill
    -- has not been reconciled yet: decided by that day's run.
    deferred INT NOT NULL DEFAULT 0 CHECK (deferred >= 0),
    error TEXT,
    CONSTRAINT reconciliations_finished_check
        CHECK ((outcome = 'running') = (finished_at IS NULL)),
    CONSTRAINT reconciliations_error_check
        CHECK ((outcome = 'failed') = (error IS NOT NULL))
);
CREATE INDEX reconciliations_bill_date_idx ON reconciliations (bill_date);

-- The rows of every bill reconciled, kept so that a payment near midnight
-- can be looked up in the neighbouring day's bill, and so that a human can
-- see what WeChat Pay said. Replaced whole when a date is reconciled again
-- (the bill is a snapshot: the same text).
CREATE TABLE bill_rows (
    bill_date DATE NOT NULL,
    line INT NOT NULL,
    kind TEXT NOT NULL CONSTRAINT bill_rows_kind_check CHECK (kind IN ('payment', 'refund', 'other')),
    trade_time TIMESTAMPTZ NOT NULL,
    trade_state TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    out_refund_no TEXT,
    refund_id TEXT,
    -- Fen: the order amount of a payment row, the refund asked for of a refund row.
    amount_fen BIGINT NOT NULL,
    PRIMARY KEY (bill_date, line)
);
CREATE INDEX bill_rows_transaction_id_idx ON bill_rows (transaction_id);
CREATE INDEX bill_rows_out_refund_no_idx ON bill_rows (out_refund_no) WHERE out_refund_no IS NOT NULL;

-- What the bill and the store disagree on, for a human. Found once: one row
-- per (kind, subject) ever, so running a date again adds nothing. Resolved
-- only by `order-producer cases resolve`, which records who and why.
CREATE TABLE discrepancies (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CONSTRAINT discrepancies_kind_check
        CHECK (kind IN ('payment_not_in_bill', 'refund_not_in_bill', 'payment_differs',
                        'refund_differs', 'unknown_order', 'unknown_refund', 'unexpected_row')),
    -- What it is about: a transaction id, an out_refund_no or refund id.
    subject TEXT NOT NULL,
    bill_date DATE NOT NULL,
    order_id BIGINT REFERENCES orders (id),
    -- The order number as the bill or the store names it (may be no order here).
    order_no TEXT NOT NULL,
    ours TEXT NOT NULL,
    theirs TEXT NOT NULL,
    found_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    found_by BIGINT NOT NULL REFERENCES reconciliations (id),
    resolved_at TIMESTAMPTZ,
    resolved_by TEXT CHECK (resolved_by IS NULL OR length(resolved_by) BETWEEN 1 AND 64),
    resolution TEXT,
    CONSTRAINT discrepancies_once UNIQUE (kind, subject),
    CONSTRAINT discrepancies_resolved_check
        CHECK ((resolved_at IS NULL) = (resolved_by IS NULL) AND (resolved_at IS NULL) = (resolution IS NULL))
);
CREATE INDEX discrepancies_open_idx ON discrepancies (found_at) WHERE resolved_at IS NULL;

-- When WeChat Pay accepted the refund (its refund_id first known): the day
-- its row appears in the trade bill.
ALTER TABLE refunds ADD COLUMN accepted_at TIMESTAMPTZ;
UPDATE refunds SET accepted_at = updated_at WHERE refund_id IS NOT NULL;

ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close', 'anomaly', 'recheck',
                    'prepay', 'refund', 'decision', 'reconcile'));
