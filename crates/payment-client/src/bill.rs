//! WeChat Pay's daily trade bill (`/v3/bill/tradebill`): the downloaded file
//! opened (gunzip, SHA1 against `hash_value`) and its text parsed exactly.
//!
//! The bill is what reconciliation trusts, so the parser refuses a whole
//! file rather than skip what it does not understand: columns are found by
//! name, every field must carry its backtick, amounts are yuan with exactly
//! the decimals WeChat Pay writes (read in integer fen, never through a
//! float), and the summary row must agree with the detail rows. Every
//! refusal names the line, the column and the figures involved.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read};

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone};

/// The largest compressed download read from WeChat Pay (a busy merchant's
/// day is tens of MB of text, a few MB gzipped).
pub(crate) const MAX_DOWNLOAD_BYTES: u64 = 256 * 1024 * 1024;
/// The largest decompressed text accepted (a gzip bomb stops here).
pub(crate) const MAX_TEXT_BYTES: u64 = 1024 * 1024 * 1024;

/// What `Client::trade_bill` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradeBill {
    /// The bill, downloaded, its SHA1 checked, parsed, its summary checked.
    Ready(Bill),
    /// 400 `STATEMENT_CREATING`: not ready yet, ask again later. `message`
    /// is WeChat Pay's.
    NotReady { message: String },
    /// 400 `NO_STATEMENT_EXIST`: no trades that day (an empty day, not an
    /// error).
    NoStatement,
}

/// A parsed, self-consistent trade bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    /// Lower-case hex SHA1 of the decompressed text (equal to WeChat Pay's
    /// `hash_value`).
    pub sha1: String,
    /// The header's column names, in order.
    pub columns: Vec<String>,
    pub rows: Vec<BillRow>,
    pub summary: BillSummary,
}

/// One detail row of the bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    /// 1-based line number in the text (for messages).
    pub line: usize,
    /// 交易时间, Beijing time (+08:00).
    pub trade_time: DateTime<FixedOffset>,
    /// 商户号
    pub mchid: Option<String>,
    /// 微信订单号
    pub transaction_id: String,
    /// 商户订单号
    pub out_trade_no: String,
    /// 交易状态 as written (SUCCESS, REFUND, ...).
    pub trade_state: String,
    /// 货币种类
    pub currency: Option<String>,
    /// 应结订单金额 in fen.
    pub settlement_fen: i64,
    /// 订单金额 in fen (absent in older layouts).
    pub order_fen: Option<i64>,
    /// The refund columns, when the row names a refund (微信退款单号 or
    /// 商户退款单号 present and not `0`).
    pub refund: Option<BillRefund>,
    /// 商品名称 (may contain commas).
    pub product: Option<String>,
    /// 商户数据包 (may contain commas).
    pub attach: Option<String>,
    /// 手续费 in 1/100,000 yuan (the bill gives 5 decimals), may be negative.
    pub fee_e5: Option<i64>,
}

/// The refund columns of a detail row that names a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRefund {
    /// 微信退款单号
    pub refund_id: Option<String>,
    /// 商户退款单号
    pub out_refund_no: Option<String>,
    /// 退款金额 in fen.
    pub refund_fen: i64,
    /// 申请退款金额 in fen (absent in some layouts).
    pub requested_fen: Option<i64>,
    /// 退款状态 as written (SUCCESS, PROCESSING, ABNORMAL, CLOSED, ...).
    pub status: Option<String>,
    /// 退款类型 as written.
    pub kind: Option<String>,
}

/// The summary row, checked against the detail rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillSummary {
    /// 总交易单数 (equals the number of detail rows).
    pub trades: u64,
    /// 应结订单总金额
    pub settlement_fen: i64,
    /// 退款总金额
    pub refund_fen: Option<i64>,
    /// 充值券退款总金额
    pub coupon_refund_fen: Option<i64>,
    /// 手续费总金额 (1/100,000 yuan)
    pub fee_e5: Option<i64>,
    /// 订单总金额
    pub order_fen: Option<i64>,
    /// 申请退款总金额
    pub requested_refund_fen: Option<i64>,
}

/// Why a bill text or file was refused. Whole: nothing of a refused bill may
/// be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillError {
    /// The download answered something other than 200. The answer carries
    /// no signature, so its code and message are only informative.
    #[error("bill download refused (HTTP {status}{}): ask for the bill again for a fresh link", code_message(code.as_deref(), message.as_deref()))]
    DownloadRefused {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// The download or its decompressed text is over the limit.
    #[error("bill {what} is larger than {limit} bytes; refused")]
    TooLarge { what: &'static str, limit: u64 },
    /// The gzip stream ends early: the file was cut short.
    #[error("bill file is truncated: the gzip stream ends before its end; ask for the bill again")]
    Truncated,
    /// Not a valid gzip stream (bad header, bad data, CRC or length mismatch).
    #[error("bill file is not valid gzip: {0}")]
    Gzip(String),
    /// The decompressed text's SHA1 is not WeChat Pay's `hash_value`.
    #[error("bill file SHA1 mismatch: WeChat Pay says {expected}, the file has {actual}; refused")]
    HashMismatch { expected: String, actual: String },
    /// The text is not UTF-8.
    #[error("bill is not UTF-8 text: invalid byte at line {line} (byte offset {offset})")]
    NotUtf8 { line: usize, offset: usize },
    /// The text has no header line.
    #[error("bill has no header line")]
    NoHeader,
    /// A header names a column twice: finding columns by name is ambiguous.
    #[error("bill {section} header (line {line}) names column {column} twice")]
    DuplicateColumn {
        section: &'static str,
        line: usize,
        column: String,
    },
    /// A required column is absent from a header.
    #[error("bill {section} header (line {line}) has no column {column}")]
    MissingColumn {
        section: &'static str,
        line: usize,
        column: &'static str,
    },
    /// A row has another number of fields than its header has columns.
    #[error("bill line {line} has {found} fields, its header has {expected} columns")]
    FieldCount {
        line: usize,
        expected: usize,
        found: usize,
    },
    /// A field does not start with the backtick every bill field carries.
    #[error("bill line {line}: field {column} does not start with a backtick")]
    NoBacktick { line: usize, column: String },
    /// An amount that is not yuan with the decimals WeChat Pay writes.
    #[error("bill line {line}, column {column}: {text:?} is not an amount in yuan with {decimals} decimals")]
    BadAmount {
        line: usize,
        column: String,
        text: String,
        decimals: u32,
    },
    /// A count that is not a non-negative integer.
    #[error("bill line {line}, column {column}: {text:?} is not a count")]
    BadCount {
        line: usize,
        column: String,
        text: String,
    },
    /// A time that is not `YYYY-MM-DD HH:MM:SS`.
    #[error("bill line {line}, column {column}: {text:?} is not a time YYYY-MM-DD HH:MM:SS")]
    BadTime {
        line: usize,
        column: &'static str,
        text: String,
    },
    /// A required field is empty.
    #[error("bill line {line}: column {column} is empty")]
    EmptyField { line: usize, column: &'static str },
    /// The rows of a column add up beyond what an `i64` holds.
    #[error("bill column {column} adds up beyond the representable range")]
    Overflow { column: String },
    /// No summary header and row after the detail rows.
    #[error("bill has no summary row")]
    NoSummary,
    /// A second summary row.
    #[error("bill has more than one summary row (another at line {line})")]
    ExtraSummaryRow { line: usize },
    /// Something after the summary row.
    #[error("bill line {line} follows the summary row; expected the end of the file")]
    TrailingLine { line: usize },
    /// A summary figure disagrees with the detail rows.
    #[error("bill summary {total} is {summary} but the detail rows give {rows}")]
    SummaryMismatch {
        total: &'static str,
        summary: String,
        rows: String,
    },
}

fn code_message(code: Option<&str>, message: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(c) = code {
        let _ = write!(s, " {c}");
    }
    if let Some(m) = message {
        let _ = write!(s, ": {m}");
    }
    s
}

/// Detail columns the parser reads (and requires, where marked).
const COL_TIME: &str = "交易时间";
const COL_MCHID: &str = "商户号";
const COL_TRANSACTION_ID: &str = "微信订单号";
const COL_OUT_TRADE_NO: &str = "商户订单号";
const COL_TRADE_STATE: &str = "交易状态";
const COL_CURRENCY: &str = "货币种类";
const COL_SETTLEMENT: &str = "应结订单金额";
const COL_REFUND_ID: &str = "微信退款单号";
const COL_OUT_REFUND_NO: &str = "商户退款单号";
const COL_REFUND: &str = "退款金额";
const COL_COUPON_REFUND: &str = "充值券退款金额";
const COL_REFUND_KIND: &str = "退款类型";
const COL_REFUND_STATUS: &str = "退款状态";
const COL_PRODUCT: &str = "商品名称";
const COL_ATTACH: &str = "商户数据包";
const COL_FEE: &str = "手续费";
const COL_ORDER: &str = "订单金额";
const COL_REQUESTED: &str = "申请退款金额";

const REQUIRED_DETAIL: [&str; 5] = [
    COL_TIME,
    COL_TRANSACTION_ID,
    COL_OUT_TRADE_NO,
    COL_TRADE_STATE,
    COL_SETTLEMENT,
];

const SUM_TRADES: &str = "总交易单数";
const SUM_SETTLEMENT: &str = "应结订单总金额";
const REQUIRED_SUMMARY: [&str; 2] = [SUM_TRADES, SUM_SETTLEMENT];

/// The amount columns summed over the rows: detail column, its summary
/// total, and the decimals written.
const TOTALS: [(&str, &str, u32); 6] = [
    (COL_SETTLEMENT, SUM_SETTLEMENT, 2),
    (COL_REFUND, "退款总金额", 2),
    (COL_COUPON_REFUND, "充值券退款总金额", 2),
    (COL_FEE, "手续费总金额", 5),
    (COL_ORDER, "订单总金额", 2),
    (COL_REQUESTED, "申请退款总金额", 2),
];

/// Gunzips a downloaded bill (a body that does not start with the gzip
/// magic `1f 8b` is taken as the plain text: a bill starts with a UTF-8
/// header or BOM, never with those bytes), checks the text's SHA1 against
/// `hash_value` (hex, any case) and parses it.
pub(crate) fn open_download(bytes: &[u8], hash_value: &str) -> Result<Bill, BillError> {
    open_download_limited(bytes, hash_value, MAX_TEXT_BYTES)
}

fn open_download_limited(bytes: &[u8], hash_value: &str, max_text: u64) -> Result<Bill, BillError> {
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        gunzip(bytes, max_text)?
    } else if bytes.len() as u64 > max_text {
        return Err(BillError::TooLarge {
            what: "text",
            limit: max_text,
        });
    } else {
        bytes.to_vec()
    };
    let actual = sha1_hex(&text);
    if !actual.eq_ignore_ascii_case(hash_value) {
        return Err(BillError::HashMismatch {
            expected: hash_value.to_owned(),
            actual,
        });
    }
    let text = String::from_utf8(text).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset].split(|&b| b == b'\n').count();
        BillError::NotUtf8 { line, offset }
    })?;
    parse_with_sha1(&text, actual)
}

fn gunzip(bytes: &[u8], max_text: u64) -> Result<Vec<u8>, BillError> {
    // Multi-member: concatenated gzip members are one valid gzip file.
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    let mut text = Vec::new();
    decoder
        .take(max_text + 1)
        .read_to_end(&mut text)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => BillError::Truncated,
            _ => BillError::Gzip(e.to_string()),
        })?;
    if text.len() as u64 > max_text {
        return Err(BillError::TooLarge {
            what: "decompressed text",
            limit: max_text,
        });
    }
    Ok(text)
}

fn sha1_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(40);
    for b in openssl::sha::sha1(bytes) {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Parses a trade bill's text (see the module docs for the rules); `sha1`
/// is computed over `text`'s bytes as given.
pub fn parse_bill(text: &str) -> Result<Bill, BillError> {
    parse_with_sha1(text, sha1_hex(text.as_bytes()))
}

/// A header: its column names and where each is.
struct Header {
    line: usize,
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Header {
    fn parse(section: &'static str, line: usize, text: &str) -> Result<Self, BillError> {
        let names: Vec<String> = text.split(',').map(str::to_owned).collect();
        let mut index = HashMap::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if index.insert(name.clone(), i).is_some() {
                return Err(BillError::DuplicateColumn {
                    section,
                    line,
                    column: name.clone(),
                });
            }
        }
        Ok(Self { line, names, index })
    }

    fn get(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn require(&self, section: &'static str, name: &'static str) -> Result<usize, BillError> {
        self.get(name).ok_or(BillError::MissingColumn {
            section,
            line: self.line,
            column: name,
        })
    }

    /// The fields of a backtick row, one per column.
    fn fields<'t>(&self, line: usize, text: &'t str) -> Result<Vec<&'t str>, BillError> {
        let Some(rest) = text.strip_prefix('`') else {
            return Err(BillError::NoBacktick {
                line,
                column: self.names[0].clone(),
            });
        };
        // ",`" separates fields, so commas inside a field survive.
        let fields: Vec<&str> = rest.split(",`").collect();
        if fields.len() == self.names.len() {
            return Ok(fields);
        }
        // Fewer fields than columns may be a field without its backtick
        // (merged into the one before): name it when a plain split shows it.
        let plain: Vec<&str> = text.split(',').collect();
        if plain.len() == self.names.len() {
            if let Some(i) = plain.iter().position(|f| !f.starts_with('`')) {
                return Err(BillError::NoBacktick {
                    line,
                    column: self.names[i].clone(),
                });
            }
        }
        Err(BillError::FieldCount {
            line,
            expected: self.names.len(),
            found: fields.len(),
        })
    }
}

/// Non-empty lines with their 1-based numbers, BOM and `\r` removed.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
}

fn parse_with_sha1(text: &str, sha1: String) -> Result<Bill, BillError> {
    let mut lines = lines(text).peekable();
    let (header_line, header_text) = lines.next().ok_or(BillError::NoHeader)?;
    if header_text.starts_with('`') {
        return Err(BillError::NoHeader);
    }
    let header = Header::parse("detail", header_line, header_text)?;
    for name in REQUIRED_DETAIL {
        header.require("detail", name)?;
    }
    let columns = DetailColumns::find(&header);

    let mut rows = Vec::new();
    let mut sums = [0i64; TOTALS.len()];
    while let Some((line, text)) = lines.next_if(|(_, l)| l.starts_with('`')) {
        let fields = header.fields(line, text)?;
        rows.push(columns.row(&header, line, &fields, &mut sums)?);
    }

    let (summary_header_line, summary_header_text) = lines.next().ok_or(BillError::NoSummary)?;
    if summary_header_text.contains(",`") {
        // A detail row whose first field lost its backtick.
        return Err(BillError::NoBacktick {
            line: summary_header_line,
            column: header.names[0].clone(),
        });
    }
    let summary_header = Header::parse("summary", summary_header_line, summary_header_text)?;
    for name in REQUIRED_SUMMARY {
        summary_header.require("summary", name)?;
    }
    let (summary_line, summary_text) = lines.next().ok_or(BillError::NoSummary)?;
    if !summary_text.starts_with('`') {
        return Err(BillError::NoSummary);
    }
    let summary_fields = summary_header.fields(summary_line, summary_text)?;
    if let Some((line, text)) = lines.next() {
        return Err(if text.starts_with('`') {
            BillError::ExtraSummaryRow { line }
        } else {
            BillError::TrailingLine { line }
        });
    }

    let summary = check_summary(
        &header,
        &summary_header,
        summary_line,
        &summary_fields,
        rows.len(),
        &sums,
    )?;
    Ok(Bill {
        sha1,
        columns: header.names,
        rows,
        summary,
    })
}

/// Where the detail columns the parser reads are, found by name.
struct DetailColumns {
    time: usize,
    transaction_id: usize,
    out_trade_no: usize,
    trade_state: usize,
    mchid: Option<usize>,
    currency: Option<usize>,
    refund_id: Option<usize>,
    out_refund_no: Option<usize>,
    refund_kind: Option<usize>,
    refund_status: Option<usize>,
    product: Option<usize>,
    attach: Option<usize>,
    /// The columns of `TOTALS`, in its order.
    amounts: [Option<usize>; TOTALS.len()],
}

impl DetailColumns {
    /// `header` has been checked for the required columns.
    fn find(header: &Header) -> Self {
        let req = |name| header.get(name).unwrap_or_default();
        Self {
            time: req(COL_TIME),
            transaction_id: req(COL_TRANSACTION_ID),
            out_trade_no: req(COL_OUT_TRADE_NO),
            trade_state: req(COL_TRADE_STATE),
            mchid: header.get(COL_MCHID),
            currency: header.get(COL_CURRENCY),
            refund_id: header.get(COL_REFUND_ID),
            out_refund_no: header.get(COL_OUT_REFUND_NO),
            refund_kind: header.get(COL_REFUND_KIND),
            refund_status: header.get(COL_REFUND_STATUS),
            product: header.get(COL_PRODUCT),
            attach: header.get(COL_ATTACH),
            amounts: TOTALS.map(|(col, _, _)| header.get(col)),
        }
    }

    fn row(
        &self,
        header: &Header,
        line: usize,
        fields: &[&str],
        sums: &mut [i64; TOTALS.len()],
    ) -> Result<BillRow, BillError> {
        let text = |i: Option<usize>| {
            i.map(|i| fields[i])
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
        };
        let required = |i: usize, column: &'static str| {
            let f = fields[i];
            if f.is_empty() {
                Err(BillError::EmptyField { line, column })
            } else {
                Ok(f.to_owned())
            }
        };
        // A refund number of `0` (or empty) means none.
        let refund_no = |i: Option<usize>| text(i).filter(|f| f != "0");

        let mut amounts = [None; TOTALS.len()];
        for (k, ((column, _, decimals), index)) in TOTALS.iter().zip(self.amounts).enumerate() {
            let Some(i) = index else { continue };
            let value = parse_amount(fields[i], *decimals).ok_or_else(|| BillError::BadAmount {
                line,
                column: header.names[i].clone(),
                text: fields[i].to_owned(),
                decimals: *decimals,
            })?;
            sums[k] = sums[k]
                .checked_add(value)
                .ok_or_else(|| BillError::Overflow {
                    column: (*column).to_owned(),
                })?;
            amounts[k] = Some(value);
        }
        let [settlement, refund_amount, _coupon_refund, fee, order, requested] = amounts;

        let refund_id = refund_no(self.refund_id);
        let out_refund_no = refund_no(self.out_refund_no);
        let refund = if refund_id.is_some() || out_refund_no.is_some() {
            Some(BillRefund {
                refund_id,
                out_refund_no,
                refund_fen: refund_amount.ok_or(BillError::MissingColumn {
                    section: "detail",
                    line: header.line,
                    column: COL_REFUND,
                })?,
                requested_fen: requested,
                status: text(self.refund_status),
                kind: text(self.refund_kind),
            })
        } else {
            None
        };

        Ok(BillRow {
            line,
            trade_time: parse_time(fields[self.time]).ok_or_else(|| BillError::BadTime {
                line,
                column: COL_TIME,
                text: fields[self.time].to_owned(),
            })?,
            mchid: text(self.mchid),
            transaction_id: required(self.transaction_id, COL_TRANSACTION_ID)?,
            out_trade_no: required(self.out_trade_no, COL_OUT_TRADE_NO)?,
            trade_state: required(self.trade_state, COL_TRADE_STATE)?,
            currency: text(self.currency),
            // Required column: always found.
            settlement_fen: settlement.unwrap_or_default(),
            order_fen: order,
            refund,
            product: text(self.product),
            attach: text(self.attach),
            fee_e5: fee,
        })
    }
}

fn check_summary(
    header: &Header,
    summary_header: &Header,
    line: usize,
    fields: &[&str],
    row_count: usize,
    sums: &[i64; TOTALS.len()],
) -> Result<BillSummary, BillError> {
    let trades_i = summary_header.require("summary", SUM_TRADES)?;
    let trades_text = fields[trades_i];
    let trades: u64 = if !trades_text.is_empty() && trades_text.bytes().all(|b| b.is_ascii_digit())
    {
        trades_text.parse().ok()
    } else {
        None
    }
    .ok_or_else(|| BillError::BadCount {
        line,
        column: SUM_TRADES.to_owned(),
        text: trades_text.to_owned(),
    })?;
    if trades != row_count as u64 {
        return Err(BillError::SummaryMismatch {
            total: SUM_TRADES,
            summary: trades.to_string(),
            rows: format!("{row_count} rows"),
        });
    }

    let mut totals = [None; TOTALS.len()];
    for (k, (column, total, decimals)) in TOTALS.iter().enumerate() {
        let Some(i) = summary_header.get(total) else {
            continue;
        };
        let value = parse_amount(fields[i], *decimals).ok_or_else(|| BillError::BadAmount {
            line,
            column: (*total).to_owned(),
            text: fields[i].to_owned(),
            decimals: *decimals,
        })?;
        if header.get(column).is_some() && value != sums[k] {
            return Err(BillError::SummaryMismatch {
                total,
                summary: format_amount(value, *decimals),
                rows: format_amount(sums[k], *decimals),
            });
        }
        totals[k] = Some(value);
    }
    let [settlement, refund, coupon_refund, fee, order, requested] = totals;
    Ok(BillSummary {
        trades,
        // Required column: always found.
        settlement_fen: settlement.unwrap_or_default(),
        refund_fen: refund,
        coupon_refund_fen: coupon_refund,
        fee_e5: fee,
        order_fen: order,
        requested_refund_fen: requested,
    })
}

/// Yuan with exactly `decimals` decimals (`12.30`, `-0.00600`) in units of
/// 10^-decimals yuan; integers only, overflow checked.
fn parse_amount(text: &str, decimals: u32) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) || frac.len() != decimals as usize {
        return None;
    }
    let value = int
        .parse::<i64>()
        .ok()?
        .checked_mul(10i64.checked_pow(decimals)?)?
        .checked_add(frac.parse::<i64>().ok()?)?;
    Some(if negative { -value } else { value })
}

/// `value` (in 10^-decimals yuan) written as the bill writes it.
fn format_amount(value: i64, decimals: u32) -> String {
    let scale = 10u64.pow(decimals);
    let abs = value.unsigned_abs();
    let sign = if value < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = decimals as usize
    )
}

/// `YYYY-MM-DD HH:MM:SS`, Beijing time.
fn parse_time(text: &str) -> Option<DateTime<FixedOffset>> {
    // chrono alone accepts one-digit fields; the bill always writes two.
    let shape = text.len() == 19
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok()?;
    FixedOffset::east_opt(8 * 3600)?
        .from_local_datetime(&naive)
        .single()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const ALL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
    const REAL_ROW: &str = "`2021-01-28 17:07:11,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,`ofyak5qR_1wYsC99CsWA6R9MJazA,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`for testing,`cipher code,`0.00000,`1.00%,`0.01,`0.00,`";
    const SUMMARY_HEADER: &str =
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

    /// The real one-row example of design.md, its summary made to agree.
    fn real() -> String {
        format!(
            "{ALL_HEADER}\n{REAL_ROW}\n{SUMMARY_HEADER}\n`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00\n"
        )
    }

    fn err(text: &str) -> BillError {
        match parse_bill(text) {
            Ok(bill) => panic!("accepted: {bill:?}"),
            Err(e) => e,
        }
    }

    fn beijing(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn the_real_example_parses() {
        let text = real();
        let bill = parse_bill(&text).unwrap();
        assert_eq!(bill.sha1, sha1_hex(text.as_bytes()));
        assert_eq!(bill.sha1.len(), 40);
        assert_eq!(bill.columns.len(), 27);
        assert_eq!(bill.columns[0], "交易时间");
        assert_eq!(bill.columns[26], "费率备注");
        assert_eq!(
            bill.rows,
            [BillRow {
                line: 2,
                trade_time: beijing("2021-01-28T17:07:11+08:00"),
                mchid: Some("1601959334".into()),
                transaction_id: "4200000925202101284997714292".into(),
                out_trade_no: "S20210128170702357723".into(),
                trade_state: "SUCCESS".into(),
                currency: Some("CNY".into()),
                settlement_fen: 1,
                order_fen: Some(1),
                refund: None,
                product: Some("for testing".into()),
                attach: Some("cipher code".into()),
                fee_e5: Some(0),
            }]
        );
        assert_eq!(
            bill.summary,
            BillSummary {
                trades: 1,
                settlement_fen: 1,
                refund_fen: Some(0),
                coupon_refund_fen: Some(0),
                fee_e5: Some(0),
                order_fen: Some(1),
                requested_refund_fen: Some(0),
            }
        );
        // As WeChat Pay published it, the summary says 3 trades for 1 row.
        let published = text.replace(
            "`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00",
            "`3,`0.03,`0.00,`0.00,`0.00000,`0.03,`0.00",
        );
        assert_eq!(
            err(&published),
            BillError::SummaryMismatch {
                total: "总交易单数",
                summary: "3".into(),
                rows: "1 rows".into()
            }
        );
    }

    #[test]
    fn crlf_bom_and_blank_lines() {
        let text = format!("\u{feff}{}", real().replace('\n', "\r\n"));
        let bill = parse_bill(&text).unwrap();
        assert_eq!(bill.sha1, sha1_hex(text.as_bytes()));
        assert_eq!(bill.columns[0], "交易时间");
        assert_eq!(
            bill.columns[26], "费率备注",
            "no \\r left on the last column"
        );
        assert_eq!(bill.rows[0].out_trade_no, "S20210128170702357723");
        assert_eq!(bill.rows[0].line, 2);
        let spaced = real().replace('\n', "\n\n");
        let bill = parse_bill(&spaced).unwrap();
        assert_eq!(bill.rows[0].line, 3, "line numbers count the blank lines");
    }

    #[test]
    fn commas_inside_product_and_attach_survive() {
        let row = REAL_ROW
            .replace("`for testing,", "`apple, pear,and plum,")
            .replace("`cipher code,", "`{\"a\":1,\"b\":2},");
        let text = real().replace(REAL_ROW, &row);
        let bill = parse_bill(&text).unwrap();
        assert_eq!(
            bill.rows[0].product.as_deref(),
            Some("apple, pear,and plum")
        );
        assert_eq!(bill.rows[0].attach.as_deref(), Some("{\"a\":1,\"b\":2}"));
        assert_eq!(bill.rows[0].fee_e5, Some(0));
        assert_eq!(bill.rows[0].order_fen, Some(1));
    }

    /// A paid row and its refund row, with refund numbers, status and a
    /// negative fee.
    fn with_refund() -> String {
        let paid = "`2026-11-26 18:00:05,`wxapp,`1900000001,`0,`,`4200000001,`OT1,`openid,`NATIVE,`SUCCESS,`OTHERS,`CNY,`12.30,`0.00,`0,`0,`0.00,`0.00,`,`,`商品,`,`0.07000,`0.60%,`12.30,`0.00,`";
        let refund = "`2026-11-26 19:30:00,`wxapp,`1900000001,`0,`,`4200000001,`OT1,`openid,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000012026112600000000001,`RF1,`10.00,`0.00,`ORIGINAL,`SUCCESS,`商品,`,`-0.00600,`0.60%,`0.00,`10.00,`";
        format!(
            "{ALL_HEADER}\n{paid}\n{refund}\n{SUMMARY_HEADER}\n`2,`12.30,`10.00,`0.00,`0.06400,`12.30,`10.00\n"
        )
    }

    #[test]
    fn refund_rows() {
        let bill = parse_bill(&with_refund()).unwrap();
        assert_eq!(bill.rows.len(), 2);
        assert_eq!(bill.rows[0].refund, None);
        assert_eq!(bill.rows[0].settlement_fen, 1230);
        assert_eq!(bill.rows[0].fee_e5, Some(7000));
        assert_eq!(bill.rows[0].attach, None, "empty field is None");
        let r = &bill.rows[1];
        assert_eq!(r.trade_state, "REFUND");
        assert_eq!(r.settlement_fen, 0);
        assert_eq!(r.fee_e5, Some(-600));
        assert_eq!(r.trade_time, beijing("2026-11-26T19:30:00+08:00"));
        assert_eq!(
            r.refund,
            Some(BillRefund {
                refund_id: Some("50300000012026112600000000001".into()),
                out_refund_no: Some("RF1".into()),
                refund_fen: 1000,
                requested_fen: Some(1000),
                status: Some("SUCCESS".into()),
                kind: Some("ORIGINAL".into()),
            })
        );
        assert_eq!(bill.summary.refund_fen, Some(1000));
        assert_eq!(bill.summary.fee_e5, Some(6400));
        assert_eq!(bill.summary.settlement_fen, 1230);
        assert_eq!(bill.summary.trades, 2);
    }

    #[test]
    fn columns_are_found_by_name() {
        let text = "商户订单号,交易状态,应结订单金额,微信订单号,交易时间,商品名称\n\
                    `OT1,`SUCCESS,`1.00,`42001,`2026-11-26 00:00:00,`x,y\n\
                    `OT2,`SUCCESS,`2.50,`42002,`2026-11-26 23:59:59,`\n\
                    应结订单总金额,总交易单数\n\
                    `3.50,`2\n";
        let bill = parse_bill(text).unwrap();
        assert_eq!(bill.rows[0].out_trade_no, "OT1");
        assert_eq!(bill.rows[0].transaction_id, "42001");
        assert_eq!(bill.rows[0].product.as_deref(), Some("x,y"));
        assert_eq!(bill.rows[1].settlement_fen, 250);
        assert_eq!(bill.rows[1].product, None);
        assert_eq!(
            bill.rows[1].trade_time,
            beijing("2026-11-26T23:59:59+08:00")
        );
        assert_eq!(bill.rows[1].mchid, None);
        assert_eq!(bill.rows[1].fee_e5, None);
        assert_eq!(bill.summary.settlement_fen, 350);
        assert_eq!(bill.summary.refund_fen, None);
        assert_eq!(bill.summary.trades, 2);
    }

    #[test]
    fn success_layout_without_refund_columns() {
        let text = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注\n\
                    `2026-11-26 10:00:00,`wxapp,`1900000001,`0,`,`42001,`OT1,`openid,`NATIVE,`SUCCESS,`OTHERS,`CNY,`99.99,`0.00,`商品,`,`0.60000,`0.60%,`99.99,`\n\
                    总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\n\
                    `1,`99.99,`0.00,`0.00,`0.60000,`99.99,`0.00\n";
        let bill = parse_bill(text).unwrap();
        assert_eq!(bill.columns.len(), 20);
        assert_eq!(bill.rows[0].settlement_fen, 9999);
        assert_eq!(bill.rows[0].refund, None);
        assert_eq!(bill.rows[0].fee_e5, Some(60000));
        // No 退款金额 column: the total is read but has nothing to agree with.
        assert_eq!(bill.summary.refund_fen, Some(0));
        assert_eq!(bill.summary.order_fen, Some(9999));
    }

    #[test]
    fn an_empty_day_is_a_valid_bill() {
        let text =
            format!("{ALL_HEADER}\n{SUMMARY_HEADER}\n`0,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\n");
        let bill = parse_bill(&text).unwrap();
        assert!(bill.rows.is_empty());
        assert_eq!(bill.summary.trades, 0);
    }

    #[test]
    fn refusals_of_structure() {
        assert_eq!(err(""), BillError::NoHeader);
        assert_eq!(err("\r\n\n"), BillError::NoHeader);
        assert_eq!(err(REAL_ROW), BillError::NoHeader);
        assert_eq!(
            err(&real().replace(",商户订单号,", ",商户订单,")),
            BillError::MissingColumn {
                section: "detail",
                line: 1,
                column: "商户订单号"
            }
        );
        assert_eq!(
            err(&real().replace("总交易单数,", "交易单数,")),
            BillError::MissingColumn {
                section: "summary",
                line: 3,
                column: "总交易单数"
            }
        );
        assert_eq!(
            err(&real().replace(",费率备注", ",商户号")),
            BillError::DuplicateColumn {
                section: "detail",
                line: 1,
                column: "商户号".into()
            }
        );
        assert_eq!(
            err(&real().replace(",`0.01,`0.00,`\n", ",`0.01,`0.00,`,`\n")),
            BillError::FieldCount {
                line: 2,
                expected: 27,
                found: 28
            }
        );
        assert_eq!(
            err(&real().replace(",`0.01,`0.00,`\n", ",`0.01\n")),
            BillError::FieldCount {
                line: 2,
                expected: 27,
                found: 25
            }
        );
        // The summary row is held to its own header.
        assert_eq!(
            err(&real().replace("`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00", "`1,`0.01")),
            BillError::FieldCount {
                line: 4,
                expected: 7,
                found: 2
            }
        );
        assert_eq!(
            err(&format!("{ALL_HEADER}\n{REAL_ROW}\n")),
            BillError::NoSummary
        );
        assert_eq!(
            err(&format!("{ALL_HEADER}\n{REAL_ROW}\n{SUMMARY_HEADER}\n")),
            BillError::NoSummary
        );
        let twice = format!("{}`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00\n", real());
        assert_eq!(err(&twice), BillError::ExtraSummaryRow { line: 5 });
        let trailing = format!("{}\n备注: something else\n", real());
        assert_eq!(err(&trailing), BillError::TrailingLine { line: 6 });
    }

    #[test]
    fn a_field_without_its_backtick_is_named() {
        // A middle field: `,OTHERS` merges with the field before it.
        assert_eq!(
            err(&real().replace(",`OTHERS,", ",OTHERS,")),
            BillError::NoBacktick {
                line: 2,
                column: "付款银行".into()
            }
        );
        // The first field: the line would pass for the summary header.
        assert_eq!(
            err(&real().replace("`2021-01-28 17:07:11,", "2021-01-28 17:07:11,")),
            BillError::NoBacktick {
                line: 2,
                column: "交易时间".into()
            }
        );
    }

    #[test]
    fn refusals_of_amounts() {
        for bad in [
            "1.5", "1.234", "abc", "1e3", "1", "", ".50", "1.", "+1.00", "1,000.00", " 1.00",
            "--1.00", "0x1.00",
        ] {
            let text = real().replace(",`CNY,`0.01,", &format!(",`CNY,`{bad},"));
            assert_eq!(
                err(&text),
                BillError::BadAmount {
                    line: 2,
                    column: "应结订单金额".into(),
                    text: bad.into(),
                    decimals: 2
                },
                "{bad:?}"
            );
        }
        // The fee has 5 decimals, not 2.
        assert_eq!(
            err(&real().replace(",`0.00000,`1.00%,", ",`0.00,`1.00%,")),
            BillError::BadAmount {
                line: 2,
                column: "手续费".into(),
                text: "0.00".into(),
                decimals: 5
            }
        );
        // Beyond i64.
        let huge = "92233720368547758.08";
        assert!(matches!(
            err(&real().replace(",`CNY,`0.01,", &format!(",`CNY,`{huge},"))),
            BillError::BadAmount { .. }
        ));
        // A summary figure is held to the same rule.
        assert_eq!(
            err(&real().replace("`1,`0.01,`0.00,", "`1,`0.010,`0.00,")),
            BillError::BadAmount {
                line: 4,
                column: "应结订单总金额".into(),
                text: "0.010".into(),
                decimals: 2
            }
        );
        assert_eq!(
            err(&real().replace("`1,`0.01,`0.00,", "`one,`0.01,`0.00,")),
            BillError::BadCount {
                line: 4,
                column: "总交易单数".into(),
                text: "one".into()
            }
        );
    }

    #[test]
    fn amounts_are_exact_integers() {
        assert_eq!(parse_amount("0.01", 2), Some(1));
        assert_eq!(parse_amount("12.30", 2), Some(1230));
        assert_eq!(parse_amount("-0.50", 2), Some(-50));
        assert_eq!(parse_amount("-0.00600", 5), Some(-600));
        assert_eq!(parse_amount("92233720368547758.07", 2), Some(i64::MAX));
        assert_eq!(parse_amount("92233720368547758.08", 2), None);
        assert_eq!(format_amount(-600, 5), "-0.00600");
        assert_eq!(format_amount(1230, 2), "12.30");
        assert_eq!(format_amount(i64::MIN, 2), "-92233720368547758.08");
    }

    #[test]
    fn totals_that_overflow_are_refused() {
        let max = "92233720368547758.07";
        let text = format!(
            "交易时间,微信订单号,商户订单号,交易状态,应结订单金额\n\
             `2026-11-26 10:00:00,`1,`OT1,`SUCCESS,`{max}\n\
             `2026-11-26 10:00:01,`2,`OT2,`SUCCESS,`0.01\n\
             总交易单数,应结订单总金额\n`2,`0.00\n"
        );
        assert_eq!(
            err(&text),
            BillError::Overflow {
                column: "应结订单金额".into()
            }
        );
    }

    #[test]
    fn refusals_of_times() {
        for bad in [
            "2021-1-28 17:07:11",
            "2021-01-28T17:07:11",
            "2021-02-30 17:07:11",
            "2021-01-28 24:00:00",
            "2021-01-28 17:07",
            "",
            "2021-01-28 17:07:11+08:00",
        ] {
            assert_eq!(
                err(&real().replace("`2021-01-28 17:07:11,", &format!("`{bad},"))),
                BillError::BadTime {
                    line: 2,
                    column: "交易时间",
                    text: bad.into()
                },
                "{bad:?}"
            );
        }
        assert_eq!(
            err(&real().replace(",`S20210128170702357723,", ",`,")),
            BillError::EmptyField {
                line: 2,
                column: "商户订单号"
            }
        );
    }

    #[test]
    fn the_summary_must_agree_with_the_rows() {
        let text = with_refund();
        let mismatch = |from: &str, to: &str| err(&text.replace(from, to));
        assert_eq!(
            mismatch("`2,`12.30,", "`3,`12.30,"),
            BillError::SummaryMismatch {
                total: "总交易单数",
                summary: "3".into(),
                rows: "2 rows".into()
            }
        );
        assert_eq!(
            mismatch("`2,`12.30,", "`2,`12.31,"),
            BillError::SummaryMismatch {
                total: "应结订单总金额",
                summary: "12.31".into(),
                rows: "12.30".into()
            }
        );
        assert_eq!(
            mismatch(",`10.00,`0.00,`0.06400,", ",`10.01,`0.00,`0.06400,"),
            BillError::SummaryMismatch {
                total: "退款总金额",
                summary: "10.01".into(),
                rows: "10.00".into()
            }
        );
        assert_eq!(
            mismatch("`0.06400,", "`0.07600,"),
            BillError::SummaryMismatch {
                total: "手续费总金额",
                summary: "0.07600".into(),
                rows: "0.06400".into()
            }
        );
        assert_eq!(
            mismatch("`0.06400,`12.30,`10.00", "`0.06400,`12.30,`0.00"),
            BillError::SummaryMismatch {
                total: "申请退款总金额",
                summary: "0.00".into(),
                rows: "10.00".into()
            }
        );
        assert_eq!(
            mismatch("`0.06400,`12.30,", "`0.06400,`24.60,"),
            BillError::SummaryMismatch {
                total: "订单总金额",
                summary: "24.60".into(),
                rows: "12.30".into()
            }
        );
        assert_eq!(
            mismatch(",`10.00,`0.00,`0.06400,", ",`10.00,`0.01,`0.06400,"),
            BillError::SummaryMismatch {
                total: "充值券退款总金额",
                summary: "0.01".into(),
                rows: "0.00".into()
            }
        );
    }

    #[test]
    fn a_refund_row_needs_its_amount_column() {
        let text = "交易时间,微信订单号,商户订单号,交易状态,应结订单金额,商户退款单号\n\
                    `2026-11-26 10:00:00,`42001,`OT1,`REFUND,`0.00,`RF1\n\
                    总交易单数,应结订单总金额\n\
                    `1,`0.00\n";
        assert_eq!(
            err(text),
            BillError::MissingColumn {
                section: "detail",
                line: 1,
                column: "退款金额"
            }
        );
        // `0` is no refund number.
        let bill = parse_bill(&text.replace("`RF1", "`0")).unwrap();
        assert_eq!(bill.rows[0].refund, None);
    }

    #[test]
    fn error_messages_say_where_and_what() {
        let e = err(&real().replace(",`CNY,`0.01,", ",`CNY,`1.5,"));
        assert_eq!(
            e.to_string(),
            "bill line 2, column 应结订单金额: \"1.5\" is not an amount in yuan with 2 decimals"
        );
        let e = err(&with_refund().replace("`2,`12.30,", "`2,`12.31,"));
        assert_eq!(
            e.to_string(),
            "bill summary 应结订单总金额 is 12.31 but the detail rows give 12.30"
        );
        let e = BillError::DownloadRefused {
            status: 400,
            code: Some("INVALID_REQUEST".into()),
            message: Some("链接已过期".into()),
        };
        assert_eq!(
            e.to_string(),
            "bill download refused (HTTP 400 INVALID_REQUEST: 链接已过期): ask for the bill again for a fresh link"
        );
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn open_download_checks_the_hash_of_the_text() {
        let text = real();
        let hash = sha1_hex(text.as_bytes());
        let file = gzip(text.as_bytes());
        assert_eq!(
            open_download(&file, &hash).unwrap(),
            parse_bill(&text).unwrap()
        );
        // Any case.
        let bill = open_download(&file, &hash.to_ascii_uppercase()).unwrap();
        assert_eq!(bill.sha1, hash);
        // The hash of the compressed file is not the one.
        let wrong = sha1_hex(&file);
        assert_eq!(
            open_download(&file, &wrong).unwrap_err(),
            BillError::HashMismatch {
                expected: wrong.clone(),
                actual: hash.clone()
            }
        );
        // A hash that matches is checked before parsing, a text that does
        // not parse is still refused.
        let bad = text.replace("`1,`0.01", "`2,`0.01");
        let err = open_download(&gzip(bad.as_bytes()), &sha1_hex(bad.as_bytes())).unwrap_err();
        assert!(matches!(err, BillError::SummaryMismatch { .. }), "{err:?}");
    }

    #[test]
    fn open_download_refuses_broken_gzip() {
        let text = real();
        let hash = sha1_hex(text.as_bytes());
        let file = gzip(text.as_bytes());
        for cut in [file.len() - 1, file.len() - 8, file.len() / 2, 11] {
            assert_eq!(
                open_download(&file[..cut], &hash).unwrap_err(),
                BillError::Truncated,
                "cut at {cut}"
            );
        }
        let mut corrupt = file.clone();
        let crc = corrupt.len() - 8;
        corrupt[crc] ^= 0xff;
        assert!(matches!(
            open_download(&corrupt, &hash).unwrap_err(),
            BillError::Gzip(_)
        ));
        let mut garbage = vec![0x1f, 0x8b];
        garbage.extend_from_slice(b"not deflate at all, just text");
        assert!(matches!(
            open_download(&garbage, &hash).unwrap_err(),
            BillError::Gzip(_) | BillError::Truncated
        ));
    }

    #[test]
    fn open_download_takes_plain_text_only_by_its_hash() {
        let text = real();
        let hash = sha1_hex(text.as_bytes());
        // Not gzip (no magic): the text itself, still held to the hash.
        assert_eq!(open_download(text.as_bytes(), &hash).unwrap().sha1, hash);
        assert!(matches!(
            open_download(b"<html>proxy error</html>", &hash).unwrap_err(),
            BillError::HashMismatch { .. }
        ));
    }

    #[test]
    fn open_download_bounds_the_text_and_wants_utf8() {
        let text = real();
        let file = gzip(text.as_bytes());
        let hash = sha1_hex(text.as_bytes());
        let limit = text.len() as u64 - 1;
        assert_eq!(
            open_download_limited(&file, &hash, limit).unwrap_err(),
            BillError::TooLarge {
                what: "decompressed text",
                limit
            }
        );
        assert!(open_download_limited(&file, &hash, text.len() as u64).is_ok());
        let mut latin1 = text.into_bytes();
        latin1.extend_from_slice(b"\n\xe9\n");
        let e = open_download(&gzip(&latin1), &sha1_hex(&latin1)).unwrap_err();
        assert_eq!(
            e,
            BillError::NotUtf8 {
                line: 6,
                offset: latin1.len() - 2
            }
        );
    }
}
