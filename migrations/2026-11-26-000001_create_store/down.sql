DROP TABLE order_events;
DROP FUNCTION order_events_append_only();
DROP TABLE outbox;
DROP TABLE payments;
DROP TABLE order_items;
DROP TABLE orders;
DROP TABLE stock_adjustments;
DROP TABLE skus;
