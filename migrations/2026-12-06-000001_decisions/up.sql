-- An operator's decision on a case that waits for a human (`order-producer
-- cases ...`) is an order event of kind 'decision', written in the
-- transaction that carries it out. `actor` names who decided; NULL is the
-- system itself (every event before this migration, and every automatic one).
ALTER TABLE order_events ADD COLUMN actor TEXT
    CONSTRAINT order_events_actor_check CHECK (actor IS NULL OR length(actor) BETWEEN 1 AND 64);
ALTER TABLE order_events ADD CONSTRAINT order_events_decision_actor_check
    CHECK (kind <> 'decision' OR actor IS NOT NULL);

ALTER TABLE order_events DROP CONSTRAINT order_events_kind_check;
ALTER TABLE order_events ADD CONSTRAINT order_events_kind_check
    CHECK (kind IN ('created', 'closed', 'paid', 'paid_after_close', 'anomaly', 'recheck',
                    'prepay', 'refund', 'decision'));
