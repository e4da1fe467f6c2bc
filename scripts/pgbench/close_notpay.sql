-- pgbench: one settlement's writes for a close after NOTPAY (30% of the bench
-- mix: closed at WeChat Pay and read back CLOSED; no recheck). Same variables
-- as close_not_exist.sql.
\set k :k + 1
\set id (:k - 1) * :nclients + :client_id + 1
BEGIN;
UPDATE orders SET status = 'closed', closed_at = now(), updated_at = now(),
       close_reason = 'closed at WeChat Pay and read back CLOSED',
       recheck_at = NULL, anomaly = NULL, anomaly_at = NULL
 WHERE order_no = 'bench' || lpad(:id::text, 10, '0') AND status = 'pending_payment'
RETURNING id AS order_id \gset
UPDATE skus SET stock = stock + 1, updated_at = now() WHERE id = :sku;
INSERT INTO order_events (order_id, kind, detail)
VALUES (:order_id, 'closed', 'closed at WeChat Pay and read back CLOSED');
END;
