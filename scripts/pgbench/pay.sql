-- pgbench: one settlement's writes for an order found paid (10% of the bench
-- mix): the order turns paid, its payment and a `paid` event are recorded,
-- the stock stays sold. Same variables as close_not_exist.sql. (The worker
-- writes these three in one statement, a CTE; here they are three
-- statements in one transaction, like the closes.)
\set k :k + 1
\set id (:k - 1) * :nclients + :client_id + 1
BEGIN;
UPDATE orders SET status = 'paid', paid_at = now(), updated_at = now(),
       anomaly = NULL, anomaly_at = NULL
 WHERE order_no = 'bench' || lpad(:id::text, 10, '0') AND status = 'pending_payment'
RETURNING id AS order_id \gset
INSERT INTO payments (order_id, transaction_id, amount_fen, success_time, paid_after_close)
VALUES (:order_id, '42000000' || lpad(:id::text, 20, '0'), 100, now(), false);
INSERT INTO order_events (order_id, kind, detail)
VALUES (:order_id, 'paid', 'transaction 42000000' || lpad(:id::text, 20, '0') || ', 1.00 yuan');
END;
