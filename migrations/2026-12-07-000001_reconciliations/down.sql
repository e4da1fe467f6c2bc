ALTER TABLE order_events DISABLE TRIGGER order_events_append_only;
DELETE FROM order_events WHERE kind = 'reconcile';
ALTER TABLE order_events ENABLE TRIGGER order_events_append_only;
ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close', 'anomaly', 'recheck',
                    'prepay', 'refund', 'decision'));
ALTER TABLE refunds DROP COLUMN accepted_at;
DROP TABLE discrepancies;
DROP TABLE bill_rows;
DROP TABLE reconciliations;
