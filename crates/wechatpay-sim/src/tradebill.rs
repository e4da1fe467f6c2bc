//! The trade bill endpoints: `GET /v3/bill/tradebill` checks the date and
//! types, renders the day's `ALL` bill (`bill`), fixes the file's bytes and
//! hands out a short-lived download link; `GET /v3/billdownload/file`
//! serves those bytes to a merchant-signed request. The bill faults
//! (`BillFaults`) are applied here.
//!
//! It exists apart from `api` because a bill is not about one order: it is
//! a snapshot of all of them, kept with its link (`SimConfig::bill_link_ttl`)
//! so that the file downloaded is the one whose hash was answered, even if
//! orders change in between.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

use chrono::{Months, NaiveDate};
use flate2::write::GzEncoder;
use flate2::Compression;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;

use crate::api::{percent_decode, FALLBACK_APPID};
use crate::bill::{self, Merchant};
use crate::http::Request as Incoming;
use crate::notify::Task;
use crate::refund;
use crate::server::{Reply, Shared, State};

/// A download link handed out by a tradebill answer.
#[derive(Debug)]
pub(crate) struct BillLink {
    /// The file as served: gzip, or the plain text without `tar_type`.
    bytes: Vec<u8>,
    expires: Instant,
}

/// The request's query parameters, percent-decoded.
fn params(url: &str) -> HashMap<String, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Today in Beijing (UTC+8), the calendar bills are dated by.
pub(crate) fn beijing_today() -> NaiveDate {
    chrono::Utc::now()
        .with_timezone(&bill::beijing_offset())
        .date_naive()
}

/// A `YYYY-MM-DD` date, strictly.
pub(crate) fn parse_date(text: &str) -> Option<NaiveDate> {
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    shaped
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
}

/// The day asked for, if WeChat Pay would serve it: a real date, not in the
/// future, not older than 3 months. Today is served too (a simulator
/// convenience: the bill of what happened so far today).
fn bill_date(text: Option<&str>, today: NaiveDate) -> Result<NaiveDate, Reply> {
    let invalid = |message: &str| Reply::error(400, "INVALID_REQUEST", message);
    let text = text.ok_or_else(|| invalid("bill_date is missing"))?;
    let date = parse_date(text)
        .ok_or_else(|| invalid(&format!("bill_date {text} is not a YYYY-MM-DD date")))?;
    if date > today {
        return Err(invalid(&format!(
            "bill_date {date} is in the future (today is {today} in Beijing)"
        )));
    }
    let oldest = today.checked_sub_months(Months::new(3)).unwrap_or(today);
    if date < oldest {
        return Err(invalid(&format!(
            "bill_date {date} is older than 3 months (the oldest is {oldest})"
        )));
    }
    Ok(date)
}

/// The checked parameters: the day and whether the file is gzipped.
fn check_params(url: &str, today: NaiveDate) -> Result<(NaiveDate, bool), Reply> {
    let params = params(url);
    let param_error = |message: &str| Reply::error(400, "PARAM_ERROR", message);
    match params.get("bill_type").map(String::as_str) {
        None | Some("ALL") => {}
        Some(other) => {
            return Err(param_error(&format!(
                "bill_type {other}: the simulator serves bill_type ALL only"
            )))
        }
    }
    let gzip = match params.get("tar_type").map(String::as_str) {
        None => false,
        Some("GZIP") => true,
        Some(other) => {
            return Err(param_error(&format!(
                "tar_type {other}: only GZIP (or none, for plain text)"
            )))
        }
    };
    let date = bill_date(params.get("bill_date").map(String::as_str), today)?;
    Ok((date, gzip))
}

/// The `ALL` text the simulator serves for `date` now (due refunds made
/// final first; their notifications go to `tasks`, to queue once the state
/// is unlocked). `None` when no row falls on the day.
pub(crate) fn bill_text(
    shared: &Shared,
    state: &mut State,
    date: NaiveDate,
    tasks: &mut Vec<Task>,
) -> Option<String> {
    tasks.extend(refund::settle_all_due(shared, state));
    let config = &shared.config;
    let merchant = Merchant {
        mchid: config.mchid.as_deref().unwrap_or(crate::DEFAULT_MCHID),
        appid: config.appid.as_deref().unwrap_or(FALLBACK_APPID),
    };
    let refunds = state.refunds.values().map(|r| &r.refund);
    bill::render(
        date,
        merchant,
        &state.orders,
        refunds,
        state.bill_faults.summary_disagrees,
    )
}

fn gzip(text: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text)?;
    encoder.finish()
}

fn sha1_hex(bytes: &[u8]) -> String {
    openssl::sha::sha1(bytes)
        .iter()
        .fold(String::with_capacity(40), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// `GET /v3/bill/tradebill?bill_date=...&bill_type=ALL&tar_type=GZIP`.
pub(crate) fn tradebill(shared: &Shared, req: &Incoming) -> Reply {
    let (date, gzipped) = match check_params(&req.url, beijing_today()) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let mut tasks = Vec::new();
    let reply = tradebill_locked(shared, &mut shared.state(), req, date, gzipped, &mut tasks);
    for task in tasks {
        shared.notifier.enqueue(task, Instant::now());
    }
    reply
}

fn tradebill_locked(
    shared: &Shared,
    state: &mut State,
    req: &Incoming,
    date: NaiveDate,
    gzipped: bool,
    tasks: &mut Vec<Task>,
) -> Reply {
    if state.bill_faults.statement_creating > 0 {
        state.bill_faults.statement_creating -= 1;
        return Reply::error(
            400,
            "STATEMENT_CREATING",
            "the bill is being generated, ask again later",
        );
    }
    let Some(text) = bill_text(shared, state, date, tasks) else {
        return Reply::error(
            400,
            "NO_STATEMENT_EXIST",
            &format!("no trade on {date}: there is no bill"),
        );
    };
    let faults = state.bill_faults.clone();
    let hash_value = if faults.wrong_hash {
        sha1_hex(format!("{text}\r\n").as_bytes())
    } else {
        sha1_hex(text.as_bytes())
    };
    let mut bytes = if gzipped {
        match gzip(text.as_bytes()) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot gzip the bill of {date}: {e}");
                return Reply::error(500, "SYSTEM_ERROR", "cannot compress the bill");
            }
        }
    } else {
        text.into_bytes()
    };
    if faults.truncate_gzip {
        bytes.truncate(bytes.len() / 2);
    }
    let now = Instant::now();
    let expires = if faults.expire_links {
        now
    } else {
        now + shared.config.bill_link_ttl
    };
    state.bill_links.retain(|_, link| link.expires > now);
    let token = Alphanumeric.sample_string(&mut rand::rng(), 32);
    state
        .bill_links
        .insert(token.clone(), BillLink { bytes, expires });
    // The Host the client used, so that the link works behind a proxy or a
    // docker service name.
    let origin = req
        .header("Host")
        .filter(|h| !h.is_empty())
        .map_or_else(|| shared.addr.to_string(), str::to_owned);
    Reply::json(
        200,
        &json!({
            "hash_type": "SHA1",
            "hash_value": hash_value,
            "download_url": format!("http://{origin}/v3/billdownload/file?token={token}"),
        }),
    )
}

/// `GET /v3/billdownload/file?token=...`: the file, unsigned like WeChat
/// Pay's; 400 `INVALID_REQUEST` for an unknown or expired token.
pub(crate) fn download(shared: &Shared, req: &Incoming) -> Reply {
    let token = params(&req.url).remove("token").unwrap_or_default();
    let mut state = shared.state();
    let now = Instant::now();
    state.bill_links.retain(|_, link| link.expires > now);
    match state.bill_links.get(&token) {
        Some(link) => Reply {
            status: 200,
            body: link.bytes.clone(),
            headers: vec![(
                "Content-Type".to_owned(),
                "application/octet-stream".to_owned(),
            )],
        },
        None => Reply::error(
            400,
            "INVALID_REQUEST",
            "the download link is unknown or expired: ask /v3/bill/tradebill again",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reply: &Reply) -> String {
        String::from_utf8(reply.body.clone()).unwrap()
    }

    #[test]
    fn dates_are_checked_like_wechat_pay_does() {
        let today = parse_date("2026-12-07").unwrap();
        assert_eq!(bill_date(Some("2026-12-07"), today).ok(), Some(today));
        assert_eq!(
            bill_date(Some("2026-09-07"), today).ok(),
            parse_date("2026-09-07")
        );
        for bad in [
            None,
            Some("2026-12-08"),
            Some("2026-09-06"),
            Some("2026-12-7"),
            Some("20261207"),
            Some("2026-02-30"),
            Some("garbage"),
            Some(""),
        ] {
            let err = bill_date(bad, today).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(body(&err).contains("INVALID_REQUEST"), "{bad:?}");
        }
    }

    #[test]
    fn only_all_and_gzip_or_plain_are_served() {
        let today = parse_date("2026-12-07").unwrap();
        let ok = |url: &str| check_params(url, today).ok();
        let date = parse_date("2026-12-06").unwrap();
        assert_eq!(
            ok("/v3/bill/tradebill?bill_date=2026-12-06&bill_type=ALL&tar_type=GZIP"),
            Some((date, true))
        );
        assert_eq!(
            ok("/v3/bill/tradebill?bill_date=2026-12-06"),
            Some((date, false))
        );
        for (url, named) in [
            (
                "/v3/bill/tradebill?bill_date=2026-12-06&bill_type=SUCCESS",
                "ALL only",
            ),
            (
                "/v3/bill/tradebill?bill_date=2026-12-06&tar_type=ZIP",
                "GZIP",
            ),
        ] {
            let body = body(&check_params(url, today).unwrap_err());
            assert!(
                body.contains("PARAM_ERROR") && body.contains(named),
                "{body}"
            );
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        let p = params("/x?token=a%2Bb&bill_date=2026-12-06&flag");
        assert_eq!(p["token"], "a+b");
        assert_eq!(p["bill_date"], "2026-12-06");
        assert_eq!(p["flag"], "");
    }
}
