-- pgbench: one settlement's writes, as the worker makes them, for a close on
-- ORDER_NOT_EXIST (60% of the bench mix; a recheck is scheduled). Run by
-- crates/bench/src/bin/worker (see `scripts/bench.sh worker`) against a
-- database of pending orders bench0000000001.. (order id = its number), with -D k=0
-- -D nclients=C -D sku=ID: each client counts its transactions in :k, so
-- every transaction settles its own pending order (ids interleaved by
-- client), never one settled before.
\set k :k + 1
\set id (:k - 1) * :nclients + :client_id + 1
BEGIN;
UPDATE orders SET status = 'closed', closed_at = now(), updated_at = now(),
       close_reason = 'no payment order at WeChat Pay (ORDER_NOT_EXIST)',
       recheck_at = now() + interval '10 minutes', anomaly = NULL, anomaly_at = NULL
 WHERE order_no = 'bench' || lpad(:id::text, 10, '0') AND status = 'pending_payment'
RETURNING id AS order_id \gset
UPDATE skus SET stock = stock + 1, updated_at = now() WHERE id = :sku;
INSERT INTO order_events (order_id, kind, detail)
VALUES (:order_id, 'closed', 'no payment order at WeChat Pay (ORDER_NOT_EXIST)');
END;
