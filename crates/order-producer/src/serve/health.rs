//! `GET /healthz` (the process answers) and `GET /readyz` (the database
//! answers a query and the broker accepts a connection), for systemd,
//! Docker and load balancers. Neither needs the token; neither says more
//! than ok or which dependency failed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// A broker probe opens a connection; its answer is reused this long so a
/// busy load balancer cannot turn readiness checks into connection churn.
const BROKER_CHECK_TTL: Duration = Duration::from_secs(5);
/// Longest a readiness probe waits for one dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub(crate) struct BrokerCheck(Mutex<Option<(Instant, bool)>>);

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
}

async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let db = {
        let pool = state.pool.clone();
        probe(move || {
            let mut conn = domain::checkout(&pool).ok()?;
            domain::db::ping(&mut conn).ok()
        })
        .await
    };
    let broker = {
        let cached = *state
            .broker_check
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cached {
            Some((at, ok)) if at.elapsed() < BROKER_CHECK_TTL => ok,
            _ => {
                let url = state.amqp.clone();
                let ok = probe(move || broker::connect(&url).ok().map(|c| drop(c.close()))).await;
                *state
                    .broker_check
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((Instant::now(), ok));
                ok
            }
        }
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let status = if db && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"database": word(db), "broker": word(broker)})),
    )
}

/// True when `f` gives an answer within [`PROBE_TIMEOUT`].
async fn probe<T: Send + 'static>(f: impl FnOnce() -> Option<T> + Send + 'static) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::task::spawn_blocking(f)).await,
        Ok(Ok(Some(_)))
    )
}
