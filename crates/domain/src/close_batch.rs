//! Closing many orders in one statement when many expire together (group
//! commit).
//!
//! Each close still rests on its own order's verified answer from WeChat
//! Pay: a lane asks [`CloseBatcher::close`] only after that answer, exactly
//! as it would call [`crate::close_unpaid`]. What is shared is the trip to
//! the database. While one lane's statement runs, the closes other lanes ask
//! for queue up; when it returns, one of them takes everything queued and
//! runs it as one statement ([`close_unpaid_batch`]: the statement of every
//! close, a lone one included): one round trip, one commit, one update per
//! SKU for the whole batch. Nothing waits for a
//! batch to fill: alone, a close runs at once, as the single statement.
//!
//! The statement keeps every rule of [`crate::close_unpaid`]: an order
//! leaves `pending_payment` only once (the status guard), only the orders
//! it moved give stock back (their items, summed per SKU, SKU rows locked
//! in id order first), one `closed` event each. An order the batch did not
//! close (paid meanwhile, closed by someone else, unknown), an order asked
//! for twice, and every order of a batch whose statement failed are then
//! closed one by one with [`crate::close_unpaid`], which says what they are.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex};

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::db::{checkout, PgPool};
use crate::error::StoreError;
use crate::order_no::OrderNo;
use crate::orders::{close_unpaid, CloseOutcome};
pub use crate::orders::{close_unpaid_batch, CloseRequest};

/// The most closes one statement carries, by default.
pub const DEFAULT_MAX_BATCH: u16 = 64;

/// Closes asked for by many threads, run together (see the module docs).
/// Share one per pool; cheap to call from every lane.
pub struct CloseBatcher {
    pool: PgPool,
    max_batch: usize,
    shared: Mutex<Shared>,
    finished: Condvar,
}

impl std::fmt::Debug for CloseBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseBatcher")
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<(u64, CloseRequest)>,
    /// A thread is running a batch.
    leading: bool,
    done: HashMap<u64, Result<CloseOutcome, StoreError>>,
    next_ticket: u64,
    /// Statements run so far, and closes they carried (for tests and logs).
    batches: u64,
    batched: u64,
}

impl CloseBatcher {
    /// At most `max_batch` closes per statement (at least 1; 1 closes every
    /// order on its own, as [`crate::close_unpaid`]).
    #[must_use]
    pub fn new(pool: PgPool, max_batch: usize) -> Self {
        Self {
            pool,
            max_batch: max_batch.max(1),
            shared: Mutex::new(Shared::default()),
            finished: Condvar::new(),
        }
    }

    /// [`crate::close_unpaid`], sharing the statement with the closes other
    /// threads ask for at the same time. Same outcomes, same guarantees.
    pub fn close(
        &self,
        order_no: &OrderNo,
        reason: &str,
        recheck_at: Option<DateTime<Utc>>,
    ) -> Result<CloseOutcome, StoreError> {
        let mut shared = self.lock();
        let ticket = shared.next_ticket;
        shared.next_ticket += 1;
        shared.queue.push_back((
            ticket,
            CloseRequest {
                order_no: order_no.clone(),
                reason: reason.to_owned(),
                recheck_at,
            },
        ));
        loop {
            if let Some(result) = shared.done.remove(&ticket) {
                return result;
            }
            if shared.leading {
                shared = self
                    .finished
                    .wait(shared)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            // Lead: take what is queued (our own close among it, unless more
            // than a batch is ahead of it) and run it without the lock.
            shared.leading = true;
            let take = shared.queue.len().min(self.max_batch);
            let batch: Vec<(u64, CloseRequest)> = shared.queue.drain(..take).collect();
            shared.batches += 1;
            shared.batched += batch.len() as u64;
            drop(shared);
            let tickets: Vec<u64> = batch.iter().map(|(t, _)| *t).collect();
            let guard = Leading {
                batcher: self,
                tickets,
                armed: true,
            };
            let results = self.run(batch);
            shared = self.lock();
            shared.done.extend(results);
            guard.done(&mut shared);
        }
    }

    /// Closes `requests` together now, as a batch the queue would have
    /// formed: one result per request, in order.
    pub fn close_all(&self, requests: Vec<CloseRequest>) -> Vec<Result<CloseOutcome, StoreError>> {
        let batch: Vec<(u64, CloseRequest)> = (0u64..).zip(requests).collect();
        let mut results: HashMap<u64, _> = self.run(batch).into_iter().collect();
        (0u64..results.len() as u64)
            .map(|t| {
                results
                    .remove(&t)
                    .unwrap_or_else(|| Err(StoreError::Connect("no result for this close".into())))
            })
            .collect()
    }

    /// Statements run so far and the closes they carried.
    #[must_use]
    pub fn batches(&self) -> (u64, u64) {
        let s = self.lock();
        (s.batches, s.batched)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic elsewhere cannot leave `Shared` half-updated in a way that
        // loses a close: keep going with what is there.
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one batch; a result for every ticket.
    fn run(&self, batch: Vec<(u64, CloseRequest)>) -> Vec<(u64, Result<CloseOutcome, StoreError>)> {
        let mut conn = match checkout(&self.pool) {
            Ok(c) => c,
            Err(e) => {
                let why = e.to_string();
                return batch
                    .into_iter()
                    .map(|(t, _)| (t, Err(StoreError::Connect(why.clone()))))
                    .collect();
            }
        };
        let one_by_one = |conn: &mut PgConnection, r: &CloseRequest| {
            close_unpaid(conn, &r.order_no, &r.reason, r.recheck_at)
        };
        if batch.len() == 1 {
            return batch
                .into_iter()
                .map(|(t, r)| (t, one_by_one(&mut conn, &r)))
                .collect();
        }
        // An order asked for twice goes into the statement once; the repeat
        // is looked at after it (and finds it closed).
        let mut seen = HashSet::new();
        let (unique, repeats): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(_, r)| seen.insert(r.order_no.clone()));
        let requests: Vec<CloseRequest> = unique.iter().map(|(_, r)| r.clone()).collect();
        let mut closed = match close_unpaid_batch(&mut conn, &requests) {
            Ok(closed) => closed,
            Err(e) => {
                log::warn!(
                    "closing {} orders in one statement failed ({e}); closing them one by one",
                    requests.len()
                );
                HashMap::new()
            }
        };
        unique
            .into_iter()
            .chain(repeats)
            .map(|(t, r)| {
                let result = match closed.remove(&r.order_no) {
                    Some(outcome) => Ok(outcome),
                    None => one_by_one(&mut conn, &r),
                };
                (t, result)
            })
            .collect()
    }
}

/// The leader's duty: whatever happens while it runs a batch (a panic
/// included), its tickets get an answer and another thread can lead.
struct Leading<'a> {
    batcher: &'a CloseBatcher,
    tickets: Vec<u64>,
    /// Still to answer for: cleared by `done`.
    armed: bool,
}

impl Leading<'_> {
    fn done(mut self, shared: &mut Shared) {
        shared.leading = false;
        self.batcher.finished.notify_all();
        self.armed = false;
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        // Only when the batch did not finish (a panic while running it).
        if !self.armed {
            return;
        }
        let mut shared = self.batcher.lock();
        for t in &self.tickets {
            let _ = shared.done.entry(*t).or_insert_with(|| {
                Err(StoreError::Connect(
                    "the thread closing this batch of orders failed".into(),
                ))
            });
        }
        shared.leading = false;
        self.batcher.finished.notify_all();
    }
}
