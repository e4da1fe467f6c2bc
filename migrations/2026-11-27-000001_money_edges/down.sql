DROP INDEX orders_anomaly_idx;
DROP INDEX orders_recheck_idx;
DROP INDEX orders_pending_deadline_idx;
CREATE INDEX orders_pending_deadline_idx ON orders (deadline) WHERE status = 'pending_payment';
ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close'));
ALTER TABLE orders
    DROP CONSTRAINT orders_recheck_closed_check,
    DROP CONSTRAINT orders_anomaly_at_check,
    DROP COLUMN check_failures,
    DROP COLUMN next_check_at,
    DROP COLUMN recheck_at,
    DROP COLUMN anomaly_at,
    DROP COLUMN anomaly;
