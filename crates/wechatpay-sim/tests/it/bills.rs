//! Trade bills: the signed tradebill answer, the unsigned download, the
//! dates refused, the bill faults, link expiry and refunds recorded by hand.

use std::io::Read;
use std::time::Duration;

use chrono::{Days, FixedOffset, NaiveDate, Utc};
use wechatpay_sim::{
    AdminError, BillFaults, Endpoint, Faults, Order, SimConfig, SimRefund, Simulator,
};

use crate::support::{keys, raw, signed, start, wechatpay_signed, Answer};

fn beijing_today() -> NaiveDate {
    Utc::now()
        .with_timezone(&FixedOffset::east_opt(8 * 3600).unwrap())
        .date_naive()
}

fn yesterday() -> NaiveDate {
    beijing_today().checked_sub_days(Days::new(1)).unwrap()
}

fn tradebill_url(date: &str) -> String {
    format!("/v3/bill/tradebill?bill_date={date}&bill_type=ALL&tar_type=GZIP")
}

fn tradebill(sim: &Simulator, date: NaiveDate) -> Answer {
    signed(sim.addr(), "GET", &tradebill_url(&date.to_string()), "")
}

fn verified(a: &Answer) -> bool {
    match (
        a.header("Wechatpay-Timestamp"),
        a.header("Wechatpay-Nonce"),
        a.header("Wechatpay-Signature"),
    ) {
        (Some(t), Some(n), Some(s)) => wechatpay_signed(t, n, &a.bytes, s),
        _ => false,
    }
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body))
}

/// A signed GET of the `download_url` of a 200 tradebill answer.
fn download(sim: &Simulator, answer: &Answer) -> Answer {
    assert_eq!(answer.status, 200, "{answer:?}");
    let url = json(answer)["download_url"].as_str().unwrap().to_owned();
    let target = url.strip_prefix(&sim.base_url()).unwrap();
    signed(sim.addr(), "GET", target, "")
}

fn gunzip(bytes: &[u8]) -> std::io::Result<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut text)?;
    Ok(text)
}

fn sha1_hex(bytes: &[u8]) -> String {
    let digest = openssl::sha::sha1(bytes);
    let words: Vec<String> = digest.iter().map(|b| format!("{b:02x}")).collect();
    words.concat()
}

fn paid(fen: i64, tx: &str, success_time: &str) -> Order {
    Order {
        trade_state: "SUCCESS".to_owned(),
        amount_total: fen,
        payer_total: Some(fen),
        transaction_id: Some(tx.to_owned()),
        success_time: Some(success_time.to_owned()),
        ..Order::default()
    }
}

/// A sim holding, on yesterday's bill, a payment at 23:59:59 and a refund
/// of part of it; a payment at 00:00:01 today; an unpaid order.
fn sim_with_a_day() -> Simulator {
    let sim = start();
    let admin = sim.admin();
    let (d, today) = (yesterday(), beijing_today());
    let mut tea = paid(
        2_500,
        "4200000000000000000000000101",
        &format!("{d}T23:59:59+08:00"),
    );
    tea.description = Some("tea, green".to_owned());
    tea.attach = Some("cart=1".to_owned());
    admin.put_order("BILLTEA001", &tea).unwrap();
    admin
        .put_order(
            "BILLMUG001",
            &paid(
                990,
                "4200000000000000000000000102",
                &format!("{today}T00:00:01+08:00"),
            ),
        )
        .unwrap();
    admin.set_state("BILLNOTPAY", "NOTPAY").unwrap();
    let refund = admin
        .insert_refund(&SimRefund {
            out_refund_no: "BILLRF001".to_owned(),
            out_trade_no: "BILLTEA001".to_owned(),
            refund: 500,
            create_time: format!("{d}T23:59:59+08:00"),
            ..SimRefund::default()
        })
        .unwrap();
    assert_eq!(refund.transaction_id, "4200000000000000000000000101");
    sim
}

#[test]
fn a_day_is_billed_signed_and_downloaded_unsigned() {
    let sim = sim_with_a_day();
    let admin = sim.admin();
    let a = tradebill(&sim, yesterday());
    assert_eq!(a.status, 200, "{a:?}");
    assert!(verified(&a), "the tradebill answer is signed");
    let v = json(&a);
    assert_eq!(v["hash_type"], "SHA1");
    let prefix = format!("{}/v3/billdownload/file?token=", sim.base_url());
    assert!(
        v["download_url"].as_str().unwrap().starts_with(&prefix),
        "{v}"
    );

    let file = download(&sim, &a);
    assert_eq!(file.status, 200, "{file:?}");
    assert_eq!(
        file.header("Content-Type"),
        Some("application/octet-stream")
    );
    assert!(
        file.headers
            .iter()
            .all(|(n, _)| !n.to_ascii_lowercase().starts_with("wechatpay-")),
        "the file is not signed: {:?}",
        file.headers
    );
    let text = gunzip(&file.bytes).unwrap();
    assert_eq!(v["hash_value"], sha1_hex(text.as_bytes()));
    assert_eq!(
        admin.bill_text(&yesterday().to_string()).unwrap(),
        Some(text.clone())
    );
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].starts_with("交易时间,公众账号ID,商户号,"));
    let d = yesterday();
    assert!(
        lines[1].starts_with(&format!("`{d} 23:59:59,`wxd678efh567hg6787,`1900000001,`0,`,`4200000000000000000000000101,`BILLTEA001,`")),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains(",`SUCCESS,`OTHERS,`CNY,`25.00,`0.00,`0,`0,`0.00,`0.00,`,`,`tea, green,`cart=1,`0.15000,`0.60%,`25.00,`0.00,`"), "{}", lines[1]);
    assert!(
        lines[2].contains(",`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50"),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains(",`BILLRF001,`5.00,`0.00,`ORIGINAL,`SUCCESS,`tea, green,`cart=1,`-0.03000,`0.60%,`0.00,`5.00,`"), "{}", lines[2]);
    assert_eq!(lines[3], "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额");
    assert_eq!(lines[4], "`2,`25.00,`5.00,`0.00,`0.12000,`25.00,`5.00");
    assert_eq!(lines[5], "", "every line ends in CRLF");

    // The same day without tar_type: the plain text.
    let plain = signed(
        sim.addr(),
        "GET",
        &format!("/v3/bill/tradebill?bill_date={d}&bill_type=ALL"),
        "",
    );
    let file = download(&sim, &plain);
    assert_eq!(file.bytes, text.as_bytes());
    assert_eq!(json(&plain)["hash_value"], sha1_hex(text.as_bytes()));

    // Today: the order paid at 00:00:01 only.
    let today = admin
        .bill_text(&beijing_today().to_string())
        .unwrap()
        .unwrap();
    assert!(today.contains("`BILLMUG001,`") && !today.contains("BILLTEA001"));
    assert_eq!(tradebill(&sim, beijing_today()).status, 200);

    let stats = admin.stats().unwrap();
    assert_eq!((stats.trade_bills, stats.bill_downloads), (3, 2));
}

#[test]
fn the_file_is_fixed_when_the_link_is_handed_out() {
    let sim = sim_with_a_day();
    let a = tradebill(&sim, yesterday());
    sim.admin()
        .insert_refund(&SimRefund {
            out_refund_no: "BILLRF002".to_owned(),
            out_trade_no: "BILLTEA001".to_owned(),
            refund: 1,
            create_time: format!("{}T12:00:00+08:00", yesterday()),
            ..SimRefund::default()
        })
        .unwrap();
    let text = gunzip(&download(&sim, &a).bytes).unwrap();
    assert_eq!(json(&a)["hash_value"], sha1_hex(text.as_bytes()));
    assert!(!text.contains("BILLRF002"));
    let again = tradebill(&sim, yesterday());
    let newer = gunzip(&download(&sim, &again).bytes).unwrap();
    assert!(newer.contains("BILLRF002"));
    assert_eq!(json(&again)["hash_value"], sha1_hex(newer.as_bytes()));
}

#[test]
fn links_name_the_host_the_client_used() {
    let sim = sim_with_a_day();
    let url = tradebill_url(&yesterday().to_string());
    let auth =
        crate::support::authorization(&keys().merchant, "GET", &url, crate::support::now(), "");
    let a = raw(
        sim.addr(),
        "GET",
        &url,
        &[
            ("Host", "wechatpay-sim:8099"),
            ("Authorization", auth.as_str()),
            ("Accept", "application/json"),
            ("User-Agent", "sim-test/1"),
        ],
        "",
    );
    assert_eq!(a.status, 200, "{a:?}");
    let link = json(&a)["download_url"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with("http://wechatpay-sim:8099/v3/billdownload/file?token="),
        "{link}"
    );
}

#[test]
fn empty_future_old_and_malformed_days_are_refused() {
    let sim = start();
    let check = |url: &str, code: &str| {
        let a = signed(sim.addr(), "GET", url, "");
        assert_eq!(a.status, 400, "{url}: {a:?}");
        assert_eq!(json(&a)["code"], code, "{url}");
        assert!(verified(&a), "{url}: error answers are signed");
        json(&a)["message"].as_str().unwrap().to_owned()
    };
    check(
        &tradebill_url(&yesterday().to_string()),
        "NO_STATEMENT_EXIST",
    );
    check(
        &tradebill_url(&beijing_today().to_string()),
        "NO_STATEMENT_EXIST",
    );
    let tomorrow = beijing_today().checked_add_days(Days::new(1)).unwrap();
    check(&tradebill_url(&tomorrow.to_string()), "INVALID_REQUEST");
    let old = beijing_today().checked_sub_days(Days::new(120)).unwrap();
    check(&tradebill_url(&old.to_string()), "INVALID_REQUEST");
    check(&tradebill_url("garbage"), "INVALID_REQUEST");
    check(&tradebill_url("2026-13-01"), "INVALID_REQUEST");
    check("/v3/bill/tradebill?bill_type=ALL", "INVALID_REQUEST");
    let d = yesterday();
    let message = check(
        &format!("/v3/bill/tradebill?bill_date={d}&bill_type=SUCCESS"),
        "PARAM_ERROR",
    );
    assert!(message.contains("ALL only"), "{message}");
    check(
        &format!("/v3/bill/tradebill?bill_date={d}&tar_type=ZIP"),
        "PARAM_ERROR",
    );
    // An order paid just now is on today's (partial) bill.
    let admin = sim.admin();
    admin.set_state("BILLPAYNOW", "NOTPAY").unwrap();
    let paid = admin.pay("BILLPAYNOW").unwrap();
    let day = &paid.success_time.unwrap()[..10];
    let a = signed(sim.addr(), "GET", &tradebill_url(day), "");
    assert_eq!(a.status, 200, "{a:?}");
}

#[test]
fn statement_creating_counts_down_then_serves() {
    let sim = sim_with_a_day();
    let admin = sim.admin();
    admin
        .set_bill_faults(&BillFaults {
            statement_creating: 2,
            ..BillFaults::default()
        })
        .unwrap();
    for _ in 0..2 {
        let a = tradebill(&sim, yesterday());
        assert_eq!(
            (a.status, json(&a)["code"].as_str()),
            (400, Some("STATEMENT_CREATING"))
        );
        assert!(verified(&a));
    }
    assert_eq!(tradebill(&sim, yesterday()).status, 200);
}

#[test]
fn a_wrong_hash_names_another_text_of_an_intact_file() {
    let sim = sim_with_a_day();
    sim.admin()
        .set_bill_faults(&BillFaults {
            wrong_hash: true,
            ..BillFaults::default()
        })
        .unwrap();
    let a = tradebill(&sim, yesterday());
    assert!(verified(&a));
    let text = gunzip(&download(&sim, &a).bytes).unwrap();
    assert_ne!(json(&a)["hash_value"], sha1_hex(text.as_bytes()));
    assert_eq!(
        sim.admin().bill_text(&yesterday().to_string()).unwrap(),
        Some(text)
    );
}

#[test]
fn a_truncated_file_does_not_gunzip() {
    let sim = sim_with_a_day();
    sim.admin()
        .set_bill_faults(&BillFaults {
            truncate_gzip: true,
            ..BillFaults::default()
        })
        .unwrap();
    let file = download(&sim, &tradebill(&sim, yesterday()));
    assert_eq!(file.status, 200);
    assert!(!file.bytes.is_empty());
    assert!(gunzip(&file.bytes).is_err());
}

#[test]
fn a_disagreeing_summary_is_hashed_as_served() {
    let sim = sim_with_a_day();
    sim.admin()
        .set_bill_faults(&BillFaults {
            summary_disagrees: true,
            ..BillFaults::default()
        })
        .unwrap();
    let a = tradebill(&sim, yesterday());
    let text = gunzip(&download(&sim, &a).bytes).unwrap();
    assert_eq!(json(&a)["hash_value"], sha1_hex(text.as_bytes()));
    // The rows settle 25.00; the summary says 25.01.
    assert!(
        text.ends_with("\r\n`2,`25.01,`5.00,`0.00,`0.12000,`25.00,`5.00\r\n"),
        "{text}"
    );
    // A reset clears the bill faults.
    sim.admin().reset().unwrap();
    sim_refill(&sim);
    let text = sim
        .admin()
        .bill_text(&yesterday().to_string())
        .unwrap()
        .unwrap();
    assert!(
        text.ends_with("\r\n`1,`25.00,`0.00,`0.00,`0.15000,`25.00,`0.00\r\n"),
        "{text}"
    );
}

fn sim_refill(sim: &Simulator) {
    sim.admin()
        .put_order(
            "BILLTEA001",
            &paid(
                2_500,
                "4200000000000000000000000101",
                &format!("{}T08:00:00+08:00", yesterday()),
            ),
        )
        .unwrap();
}

#[test]
fn links_expire() {
    let sim = sim_with_a_day();
    sim.admin()
        .set_bill_faults(&BillFaults {
            expire_links: true,
            ..BillFaults::default()
        })
        .unwrap();
    let file = download(&sim, &tradebill(&sim, yesterday()));
    assert_eq!(
        (file.status, json(&file)["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
    assert!(verified(&file), "a JSON refusal is signed");

    let sim = Simulator::start(
        "127.0.0.1:0",
        &keys().sim,
        SimConfig {
            bill_link_ttl: Duration::from_millis(300),
            ..SimConfig::default()
        },
    )
    .unwrap();
    sim_refill(&sim);
    let a = tradebill(&sim, yesterday());
    assert_eq!(download(&sim, &a).status, 200);
    assert_eq!(
        download(&sim, &a).status,
        200,
        "a link serves until it expires"
    );
    std::thread::sleep(Duration::from_millis(400));
    let file = download(&sim, &a);
    assert_eq!(
        (file.status, json(&file)["code"].as_str()),
        (400, Some("INVALID_REQUEST"))
    );
    let unknown = signed(
        sim.addr(),
        "GET",
        "/v3/billdownload/file?token=nosuchtoken",
        "",
    );
    assert_eq!(unknown.status, 400);
}

#[test]
fn an_unsigned_download_is_refused() {
    let sim = sim_with_a_day();
    let a = tradebill(&sim, yesterday());
    let url = json(&a)["download_url"].as_str().unwrap().to_owned();
    let target = url.strip_prefix(&sim.base_url()).unwrap();
    let file = raw(
        sim.addr(),
        "GET",
        target,
        &[("Accept", "*/*"), ("User-Agent", "sim-test/1")],
        "",
    );
    assert_eq!(file.status, 401, "{file:?}");
    assert_eq!(json(&file)["code"], "SIGN_ERROR");
    // A signature over another token does not open this one.
    let auth = crate::support::authorization(
        &keys().merchant,
        "GET",
        "/v3/billdownload/file?token=other",
        crate::support::now(),
        "",
    );
    let file = raw(
        sim.addr(),
        "GET",
        target,
        &[
            ("Authorization", auth.as_str()),
            ("Accept", "*/*"),
            ("User-Agent", "sim-test/1"),
        ],
        "",
    );
    assert_eq!(file.status, 401);
    assert_eq!(sim.admin().stats().unwrap().bill_downloads, 0);
}

#[test]
fn api_faults_apply_to_the_bill_endpoints() {
    let sim = sim_with_a_day();
    let admin = sim.admin();
    admin
        .set_global_faults(&Faults {
            status: Some(503),
            only: Some(Endpoint::TradeBill),
            times: Some(1),
            ..Faults::default()
        })
        .unwrap();
    let a = tradebill(&sim, yesterday());
    assert_eq!(
        (a.status, json(&a)["code"].as_str()),
        (503, Some("SERVICE_UNAVAILABLE"))
    );
    let a = tradebill(&sim, yesterday());
    admin
        .set_global_faults(&Faults {
            tamper_signature: true,
            only: Some(Endpoint::TradeBill),
            ..Faults::default()
        })
        .unwrap();
    let tampered = tradebill(&sim, yesterday());
    assert_eq!(tampered.status, 200);
    assert!(!verified(&tampered));
    admin
        .set_global_faults(&Faults {
            status: Some(500),
            only: Some(Endpoint::BillDownload),
            ..Faults::default()
        })
        .unwrap();
    assert_eq!(download(&sim, &a).status, 500);
    admin.clear_global_faults().unwrap();
    assert_eq!(download(&sim, &a).status, 200);
}

#[test]
fn refunds_recorded_by_hand() {
    let sim = sim_with_a_day();
    let admin = sim.admin();
    let r = admin.refund("BILLRF001").unwrap().unwrap();
    assert_eq!(
        (
            r.status.as_str(),
            r.total,
            r.currency.as_str(),
            r.mchid.as_str()
        ),
        ("SUCCESS", 2_500, "CNY", "1900000001")
    );
    assert!(
        r.refund_id.len() == 30 && r.refund_id.starts_with("50"),
        "{r:?}"
    );
    assert_eq!(r.success_time.as_deref(), Some(r.create_time.as_str()));
    assert_eq!(
        admin.order("BILLTEA001").unwrap().unwrap().trade_state,
        "REFUND"
    );
    assert_eq!(admin.stats().unwrap().refunds_created, 0);
    // By transaction id, created now, held in PROCESSING.
    let now = admin
        .insert_refund(&SimRefund {
            out_refund_no: "BILLRF003".to_owned(),
            transaction_id: "4200000000000000000000000102".to_owned(),
            refund: 990,
            status: "PROCESSING".to_owned(),
            ..SimRefund::default()
        })
        .unwrap();
    assert_eq!(now.out_trade_no, "BILLMUG001");
    assert!(now.create_time.ends_with("+08:00"), "{}", now.create_time);
    assert_eq!(now.success_time, None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        admin.refund("BILLRF003").unwrap().unwrap().status,
        "PROCESSING"
    );
    let today = admin.bill_text(&now.create_time[..10]).unwrap().unwrap();
    assert!(
        today.contains(",`BILLRF003,`9.90,`0.00,`ORIGINAL,`PROCESSING,`"),
        "{today}"
    );
    for bad in [
        SimRefund {
            out_refund_no: "BILLRF001".to_owned(),
            out_trade_no: "BILLTEA001".to_owned(),
            refund: 1,
            ..SimRefund::default()
        },
        SimRefund {
            out_refund_no: "BILLRF004".to_owned(),
            refund: 1,
            ..SimRefund::default()
        },
        SimRefund {
            out_refund_no: "BILLRF004".to_owned(),
            out_trade_no: "BILLTEA001".to_owned(),
            refund: 1,
            create_time: "yesterday".to_owned(),
            ..SimRefund::default()
        },
        SimRefund {
            out_refund_no: "BILLRF004".to_owned(),
            out_trade_no: "BILLTEA001".to_owned(),
            refund: 1,
            status: "DONE".to_owned(),
            ..SimRefund::default()
        },
    ] {
        let err = admin.insert_refund(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                AdminError::Status {
                    status: 400 | 409,
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
    }
    assert!(matches!(
        admin.bill_text("garbage"),
        Err(AdminError::Status { status: 400, .. })
    ));
    assert_eq!(admin.bill_text("2020-01-01").unwrap(), None);
}
