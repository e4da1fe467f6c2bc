//! What the front door's `/readyz` checks (served by
//! `service::telemetry::probes`, on the API listener and on the metrics
//! listener alike): the database answers a query and the broker accepts a
//! connection. Neither probe needs the token; neither says more than ok or
//! which dependency failed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use service::telemetry::Readiness;

use super::AppState;

/// A broker probe opens a connection; its answer is reused this long so a
/// busy load balancer cannot turn readiness checks into connection churn.
const BROKER_CHECK_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(crate) struct BrokerCheck(Mutex<Option<(Instant, bool)>>);

/// The front door's readiness checks (blocking; run on the blocking pool).
pub(crate) fn readiness(state: Arc<AppState>) -> Readiness {
    Arc::new(move || {
        let db = domain::checkout(&state.pool)
            .and_then(|mut c| domain::db::ping(&mut c))
            .is_ok();
        vec![("database", db), ("broker", broker_ok(&state))]
    })
}

fn broker_ok(state: &AppState) -> bool {
    let cached = *state
        .broker_check
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, ok)) = cached {
        if at.elapsed() < BROKER_CHECK_TTL {
            return ok;
        }
    }
    let ok = broker::connect(&state.amqp)
        .map(|c| drop(c.close()))
        .is_ok();
    *state
        .broker_check
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), ok));
    ok
}
