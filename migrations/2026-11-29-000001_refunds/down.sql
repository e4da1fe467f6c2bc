DELETE FROM order_events WHERE kind = 'refund';
ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close', 'anomaly', 'recheck',
                    'prepay'));
DROP TABLE refunds;
