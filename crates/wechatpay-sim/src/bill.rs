//! WeChat Pay's daily trade bill of type `ALL` as text, rendered from the
//! simulator's orders and refunds: which of them belong to a Beijing day,
//! the 27 columns of each row, the amounts in yuan and the summary.
//!
//! It exists apart from the endpoints that serve it (`tradebill`) so that
//! the format, the part a reconciliation depends on byte for byte, is a
//! pure function tested on its own. The layout follows a real `ALL` bill
//! (see the design brief): a header of Chinese column names, detail rows
//! whose every field starts with a backtick, a summary header and one
//! summary row; UTF-8 without a BOM, every line ending in `\r\n`.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset, NaiveDate};

use crate::model::{Order, SimRefund};

/// The header of an `ALL` bill: 27 columns.
pub(crate) const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
/// The header of the summary row.
pub(crate) const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";
/// The payer of every simulated payment (as the query answers it).
pub(crate) const PAYER_OPENID: &str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
/// 0.6 %: the fee in units of 1/100,000 yuan per fen (1 fen = 1,000 units).
const FEE_UNITS_PER_FEN: i64 = 6;
const FEE_RATE: &str = "0.60%";

/// Who the bill is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Merchant<'a> {
    pub(crate) mchid: &'a str,
    /// `公众账号ID` of orders that name no appid.
    pub(crate) appid: &'a str,
}

/// One detail row, amounts in fen (the fee in 1/100,000 yuan).
#[derive(Debug)]
struct Row<'a> {
    /// Beijing time, `YYYY-MM-DD HH:MM:SS`.
    time: String,
    appid: &'a str,
    transaction_id: &'a str,
    out_trade_no: &'a str,
    trade_state: &'static str,
    currency: &'a str,
    settlement: i64,
    refund_id: &'a str,
    out_refund_no: &'a str,
    refund: i64,
    refund_type: &'static str,
    refund_status: &'a str,
    description: &'a str,
    attach: &'a str,
    fee_units: i64,
    order_total: i64,
    requested_refund: i64,
}

impl Row<'_> {
    fn write(&self, mchid: &str, out: &mut String) {
        let fields = [
            self.time.as_str(),
            self.appid,
            mchid,
            "0",
            "",
            self.transaction_id,
            self.out_trade_no,
            PAYER_OPENID,
            "NATIVE",
            self.trade_state,
            "OTHERS",
            self.currency,
            &yuan(self.settlement),
            "0.00",
            self.refund_id,
            self.out_refund_no,
            &yuan(self.refund),
            "0.00",
            self.refund_type,
            self.refund_status,
            self.description,
            self.attach,
            &fee(self.fee_units),
            FEE_RATE,
            &yuan(self.order_total),
            &yuan(self.requested_refund),
            "",
        ];
        write_backticked(out, &fields);
    }
}

fn write_backticked(out: &mut String, fields: &[&str]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('`');
        out.push_str(field);
    }
    out.push_str("\r\n");
}

/// China Standard Time, UTC+8: bills are dated by its days.
pub(crate) fn beijing_offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("valid offset")
}

/// An RFC 3339 time in Beijing time, `None` when it does not parse.
fn beijing(rfc3339: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.with_timezone(&beijing_offset()))
}

/// The Beijing `YYYY-MM-DD HH:MM:SS` of `rfc3339` when it falls on `date`.
fn on_day(rfc3339: Option<&str>, date: NaiveDate) -> Option<String> {
    let t = beijing(rfc3339?)?;
    (t.date_naive() == date).then(|| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Fen as yuan with 2 decimals: `12345` -> `123.45`, `-1` -> `-0.01`.
pub(crate) fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// 1/100,000 yuan as yuan with 5 decimals: `6` -> `0.00006`, `-6000` ->
/// `-0.06000`.
pub(crate) fn fee(units: i64) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    format!("{sign}{}.{:05}", abs / 100_000, abs % 100_000)
}

/// The `ALL` bill of the Beijing day `date`: a payment row for every paid
/// order (`SUCCESS`, or `REFUND` since) with a transaction id and a
/// `success_time` on that day, a refund row for every refund created that
/// day (in whatever status it has now), sorted by time, then by
/// transaction and refund number. `None` when no row falls on the day
/// (WeChat Pay answers `NO_STATEMENT_EXIST`). With `summary_disagrees`,
/// the summary's 应结订单总金额 is 1 fen more than the rows' sum.
pub(crate) fn render<'a>(
    date: NaiveDate,
    merchant: Merchant<'a>,
    orders: &'a HashMap<String, Order>,
    refunds: impl IntoIterator<Item = &'a SimRefund>,
    summary_disagrees: bool,
) -> Option<String> {
    let appid_of = |order: Option<&'a Order>| {
        order
            .and_then(|o| o.appid.as_deref())
            .unwrap_or(merchant.appid)
    };
    let mut rows: Vec<Row<'a>> = Vec::new();
    for (no, order) in orders {
        if !matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND") {
            continue;
        }
        let (Some(transaction_id), Some(time)) = (
            order.transaction_id.as_deref(),
            on_day(order.success_time.as_deref(), date),
        ) else {
            continue;
        };
        rows.push(Row {
            time,
            appid: appid_of(Some(order)),
            transaction_id,
            out_trade_no: no,
            trade_state: "SUCCESS",
            currency: &order.currency,
            settlement: order.amount_total,
            refund_id: "0",
            out_refund_no: "0",
            refund: 0,
            refund_type: "",
            refund_status: "",
            description: order.description.as_deref().unwrap_or_default(),
            attach: order.attach.as_deref().unwrap_or_default(),
            fee_units: order.amount_total * FEE_UNITS_PER_FEN,
            order_total: order.amount_total,
            requested_refund: 0,
        });
    }
    for refund in refunds {
        let Some(time) = on_day(Some(&refund.create_time), date) else {
            continue;
        };
        let order = orders.get(&refund.out_trade_no);
        rows.push(Row {
            time,
            appid: appid_of(order),
            transaction_id: &refund.transaction_id,
            out_trade_no: &refund.out_trade_no,
            trade_state: "REFUND",
            currency: &refund.currency,
            settlement: 0,
            refund_id: &refund.refund_id,
            out_refund_no: &refund.out_refund_no,
            refund: refund.refund,
            refund_type: "ORIGINAL",
            refund_status: &refund.status,
            description: order
                .and_then(|o| o.description.as_deref())
                .unwrap_or_default(),
            attach: order.and_then(|o| o.attach.as_deref()).unwrap_or_default(),
            fee_units: -refund.refund * FEE_UNITS_PER_FEN,
            order_total: 0,
            requested_refund: refund.refund,
        });
    }
    if rows.is_empty() {
        return None;
    }
    rows.sort_by(|a, b| {
        (&a.time, a.transaction_id, a.refund_id).cmp(&(&b.time, b.transaction_id, b.refund_id))
    });
    let mut out = String::with_capacity(512 * (rows.len() + 2));
    out.push_str(HEADER);
    out.push_str("\r\n");
    for row in &rows {
        row.write(merchant.mchid, &mut out);
    }
    let sum = |f: fn(&Row) -> i64| rows.iter().map(f).sum::<i64>();
    let settlement = sum(|r| r.settlement) + i64::from(summary_disagrees);
    let _ = write!(out, "{SUMMARY_HEADER}\r\n");
    write_backticked(
        &mut out,
        &[
            &rows.len().to_string(),
            &yuan(settlement),
            &yuan(sum(|r| r.refund)),
            "0.00",
            &fee(sum(|r| r.fee_units)),
            &yuan(sum(|r| r.order_total)),
            &yuan(sum(|r| r.requested_refund)),
        ],
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERCHANT: Merchant<'static> = Merchant {
        mchid: "1900000001",
        appid: "wxsimulator0000001",
    };

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn paid(tx: &str, success_time: &str, fen: i64) -> Order {
        Order {
            trade_state: "SUCCESS".to_owned(),
            amount_total: fen,
            transaction_id: Some(tx.to_owned()),
            success_time: Some(success_time.to_owned()),
            ..Order::default()
        }
    }

    /// The fields of a row: split where a comma is followed by a backtick,
    /// so that commas inside a description stay in it.
    fn fields(line: &str) -> Vec<&str> {
        line.strip_prefix('`').unwrap().split(",`").collect()
    }

    #[test]
    fn amounts_are_formatted_with_integers() {
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(100), "1.00");
        assert_eq!(yuan(12_345), "123.45");
        assert_eq!(yuan(-1), "-0.01");
        assert_eq!(yuan(-12_345), "-123.45");
        assert_eq!(fee(0), "0.00000");
        assert_eq!(fee(6), "0.00006");
        assert_eq!(fee(-6), "-0.00006");
        assert_eq!(fee(6_000), "0.06000");
        assert_eq!(fee(-6_000), "-0.06000");
        assert_eq!(fee(12_345 * 6), "0.74070");
        assert_eq!(fee(1_234_567), "12.34567");
    }

    #[test]
    fn a_day_with_nothing_paid_has_no_bill() {
        let mut orders = HashMap::new();
        orders.insert("NOTPAID001".to_owned(), Order::in_state("NOTPAY"));
        let mut closed = paid(
            "4200000000000000000000000009",
            "2026-12-05T10:00:00+08:00",
            5,
        );
        "CLOSED".clone_into(&mut closed.trade_state);
        orders.insert("CLOSED0001".to_owned(), closed);
        let mut no_tx = paid("x", "2026-12-05T10:00:00+08:00", 5);
        no_tx.transaction_id = None;
        orders.insert("NOTXID0001".to_owned(), no_tx);
        orders.insert(
            "GARBAGE001".to_owned(),
            paid("4200000000000000000000000008", "yesterday", 5),
        );
        assert_eq!(
            render(date("2026-12-05"), MERCHANT, &orders, [], false),
            None
        );
    }

    /// A payment, a refund of part of it and a payment on the next day.
    fn fixture() -> (HashMap<String, Order>, Vec<SimRefund>) {
        let mut orders = HashMap::new();
        let mut first = paid(
            "4200000000000000000000000001",
            "2026-12-05T09:15:02+08:00",
            12_345,
        );
        first.trade_state = "REFUND".to_owned();
        first.appid = Some("wx0000000000000001".to_owned());
        first.description = Some("mug, blue, 2 pcs".to_owned());
        first.attach = Some("cart=7".to_owned());
        orders.insert("ORD000000001".to_owned(), first);
        orders.insert(
            "ORD000000002".to_owned(),
            paid(
                "4200000000000000000000000002",
                "2026-12-05T23:59:59+08:00",
                1,
            ),
        );
        orders.insert(
            "ORD000000003".to_owned(),
            paid(
                "4200000000000000000000000003",
                "2026-12-06T00:00:01+08:00",
                200,
            ),
        );
        // 16:30 UTC is 00:30 the next day in Beijing.
        orders.insert(
            "ORD000000004".to_owned(),
            paid("4200000000000000000000000004", "2026-12-05T16:30:00Z", 300),
        );
        let refund = SimRefund {
            out_refund_no: "RF000000001".to_owned(),
            refund_id: "50000000000000000000000000001".to_owned(),
            transaction_id: "4200000000000000000000000001".to_owned(),
            out_trade_no: "ORD000000001".to_owned(),
            status: "PROCESSING".to_owned(),
            refund: 1_000,
            total: 12_345,
            currency: "CNY".to_owned(),
            create_time: "2026-12-05T12:00:00+08:00".to_owned(),
            ..SimRefund::default()
        };
        (orders, vec![refund])
    }

    #[test]
    fn the_bill_of_a_day_field_by_field() {
        let (orders, refunds) = fixture();
        let text = render(date("2026-12-05"), MERCHANT, &orders, &refunds, false).unwrap();
        assert!(text.ends_with("\r\n"));
        assert!(!text.starts_with('\u{feff}'));
        let lines: Vec<&str> = text.strip_suffix("\r\n").unwrap().split("\r\n").collect();
        assert!(lines.iter().all(|l| !l.contains('\n')));
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines[0].split(',').count(), 27);
        assert_eq!(lines.len(), 6, "{text}");
        // The payment, its description's commas kept.
        assert_eq!(
            fields(lines[1]),
            [
                "2026-12-05 09:15:02",
                "wx0000000000000001",
                "1900000001",
                "0",
                "",
                "4200000000000000000000000001",
                "ORD000000001",
                PAYER_OPENID,
                "NATIVE",
                "SUCCESS",
                "OTHERS",
                "CNY",
                "123.45",
                "0.00",
                "0",
                "0",
                "0.00",
                "0.00",
                "",
                "",
                "mug, blue, 2 pcs",
                "cart=7",
                "0.74070",
                "0.60%",
                "123.45",
                "0.00",
                "",
            ]
        );
        let refund = fields(lines[2]);
        assert_eq!(refund.len(), 27);
        assert_eq!(refund[0], "2026-12-05 12:00:00");
        assert_eq!(refund[1], "wx0000000000000001");
        assert_eq!(
            refund[5..7],
            ["4200000000000000000000000001", "ORD000000001"]
        );
        assert_eq!(refund[9], "REFUND");
        assert_eq!(refund[12], "0.00");
        assert_eq!(
            refund[14..20],
            [
                "50000000000000000000000000001",
                "RF000000001",
                "10.00",
                "0.00",
                "ORIGINAL",
                "PROCESSING",
            ]
        );
        assert_eq!(refund[22..27], ["-0.06000", "0.60%", "0.00", "10.00", ""]);
        // 23:59:59 belongs to the day; 00:00:01 and 16:30 UTC (00:30 in
        // Beijing) to the next.
        let last = fields(lines[3]);
        assert_eq!(
            (last[0], last[1], last[6], last[12], last[22], last[20], last[21]),
            (
                "2026-12-05 23:59:59",
                "wxsimulator0000001",
                "ORD000000002",
                "0.01",
                "0.00006",
                "",
                ""
            )
        );
        assert_eq!(lines[4], SUMMARY_HEADER);
        assert_eq!(
            fields(lines[5]),
            ["3", "123.46", "10.00", "0.00", "0.68076", "123.46", "10.00"]
        );

        let next = render(date("2026-12-06"), MERCHANT, &orders, &refunds, false).unwrap();
        let times: Vec<&str> = next
            .split("\r\n")
            .skip(1)
            .take(2)
            .map(|l| fields(l)[0])
            .collect();
        assert_eq!(times, ["2026-12-06 00:00:01", "2026-12-06 00:30:00"]);
        assert!(next.contains("\r\n`2,`5.00,`0.00,`0.00,`0.03000,`5.00,`0.00\r\n"));
    }

    #[test]
    fn a_disagreeing_summary_is_one_fen_more() {
        let (orders, refunds) = fixture();
        let text = render(date("2026-12-05"), MERCHANT, &orders, &refunds, true).unwrap();
        assert!(
            text.ends_with("\r\n`3,`123.47,`10.00,`0.00,`0.68076,`123.46,`10.00\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_refund_of_an_order_not_held_still_has_its_row() {
        let refund = SimRefund {
            out_refund_no: "RF2".to_owned(),
            refund_id: "50000000000000000000000000002".to_owned(),
            transaction_id: "4200000000000000000000000077".to_owned(),
            out_trade_no: "GONE000001".to_owned(),
            status: "SUCCESS".to_owned(),
            refund: 1,
            currency: "CNY".to_owned(),
            create_time: "2026-12-04T16:00:00Z".to_owned(),
            ..SimRefund::default()
        };
        let text = render(
            date("2026-12-05"),
            MERCHANT,
            &HashMap::new(),
            [&refund],
            false,
        )
        .unwrap();
        let row = fields(text.split("\r\n").nth(1).unwrap());
        assert_eq!(
            (row[0], row[1], row[19], row[22], row[24]),
            (
                "2026-12-05 00:00:00",
                "wxsimulator0000001",
                "SUCCESS",
                "-0.00006",
                "0.00"
            )
        );
        assert!(text.ends_with("\r\n`1,`0.00,`0.01,`0.00,`-0.00006,`0.00,`0.01\r\n"));
    }
}
