//! Logging, set up once per process: `env_logger` with `RUST_LOG` (default
//! `info`), behind a guard that no `RUST_LOG` can lift. amiquip logs the AMQP
//! handshake at debug level, password in clear (`response: "\0user\0password"`),
//! so its records above `info` are dropped, whatever the filter says, in
//! either format.
//!
//! Two formats, chosen by `LOG_FORMAT` ([`FORMAT_VAR`]): `text` (the default,
//! `env_logger`'s own line) and `json`, one object per line:
//! `{"ts":"2026-12-06T22:19:23.123456Z","level":"INFO","target":"...","msg":"...",...}`
//! followed by the record's key-values (`log::info!(order_no = no.as_str(),
//! outcome = label; "...")`), numbers and booleans as such, `None` left
//! out, anything else as a string. The text format leaves key-values out: what they say is in the
//! message already. Key-values carry identifiers and labels only, never a
//! secret.
//!
//! Only `std`, `log`, `env_logger`, `chrono` and `serde_json` here on
//! purpose: `wechatpay-sim` includes this file (see [`crate::renamed`] for
//! why it does not depend on `service`).

use std::fmt;
use std::io::Write as _;
use std::sync::OnceLock;

use log::kv::{self, VisitSource};
use log::{Level, Log, Metadata, Record};

/// The environment variable that picks the format. Environment only, like
/// `RUST_LOG`: it is read before, and whatever, the command line says.
pub const FORMAT_VAR: &str = "LOG_FORMAT";

/// Targets whose records above `info` could carry a secret.
const QUIET_ABOVE_INFO: [&str; 1] = ["amiquip"];

/// Fields every JSON line has; a key-value of the same name is left out.
const RESERVED: [&str; 4] = ["ts", "level", "target", "msg"];

/// The format installed by the first [`init_as`].
static INSTALLED: OnceLock<Format> = OnceLock::new();

/// How each record is written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `env_logger`'s line: `[ts LEVEL target] msg`.
    #[default]
    Text,
    /// One JSON object per line (see the module's documentation).
    Json,
}

impl Format {
    /// The accepted values of [`FORMAT_VAR`], the default first.
    pub const NAMES: [&'static str; 2] = ["text", "json"];

    /// The format `LOG_FORMAT` asks for: unset or empty is `text`.
    pub fn from_env() -> Result<Self, FormatError> {
        match std::env::var_os(FORMAT_VAR) {
            None => Ok(Self::Text),
            Some(v) => v.to_str().map_or_else(
                || {
                    Err(FormatError {
                        value: v.to_string_lossy().into_owned(),
                    })
                },
                str::parse,
            ),
        }
    }
}

impl std::str::FromStr for Format {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, FormatError> {
        match s {
            "" | "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(FormatError {
                value: other.to_owned(),
            }),
        }
    }
}

/// `LOG_FORMAT` holds something else than `text` or `json`: a configuration
/// error (exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    value: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{FORMAT_VAR}={:?} is not a log format; set {FORMAT_VAR} to {} (the default) or {}, or unset it",
            self.value,
            Format::NAMES[0],
            Format::NAMES[1]
        )
    }
}

impl std::error::Error for FormatError {}

/// True when a record of `target` at `level` may be written.
#[must_use]
pub fn allowed(target: &str, level: Level) -> bool {
    level <= Level::Info || !QUIET_ABOVE_INFO.iter().any(|t| target.starts_with(t))
}

struct Guarded(env_logger::Logger);

impl Log for Guarded {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        allowed(m.target(), m.level()) && self.0.enabled(m)
    }

    fn log(&self, r: &Record<'_>) {
        if allowed(r.target(), r.level()) {
            self.0.log(r);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Sets `builder` up to write `format`.
fn configure(builder: &mut env_logger::Builder, format: Format) {
    if format == Format::Json {
        builder.format(|buf, record| {
            let line = json_line(record, chrono::Utc::now());
            writeln!(buf, "{line}")
        });
    }
}

/// Installs the logger (stderr) in the format `LOG_FORMAT` names. A second
/// call does nothing. An unknown format installs nothing and is returned:
/// the caller exits 2 with it.
pub fn init() -> Result<(), FormatError> {
    init_as(Format::from_env()?);
    Ok(())
}

/// Installs the logger (stderr) in `format`. A second call does nothing.
pub fn init_as(format: Format) {
    if INSTALLED.set(format).is_err() {
        return;
    }
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    configure(&mut builder, format);
    let logger = builder.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Guarded(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// The error a process ends with, on stderr, whatever `RUST_LOG` says: in
/// the text format (or before [`init`]) `{prefix}: {message}` as always; in
/// the JSON format one `ERROR` line whose target is the program's name, so
/// that every line of a process's stderr is JSON.
pub fn fatal(prefix: &str, message: &str) {
    let line = match INSTALLED.get() {
        Some(Format::Json) => {
            let program = std::env::args_os()
                .next()
                .as_deref()
                .and_then(|p| std::path::Path::new(p).file_name())
                .map_or_else(|| prefix.to_owned(), |n| n.to_string_lossy().into_owned());
            json_line(
                &Record::builder()
                    .level(Level::Error)
                    .target(&program)
                    .args(format_args!("{message}"))
                    .build(),
                chrono::Utc::now(),
            )
        }
        _ => format!("{prefix}: {message}"),
    };
    // Nothing to do if stderr is gone.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// One record as a JSON object (no newline): `ts` (RFC 3339, UTC,
/// microseconds), `level`, `target`, `msg`, then the record's key-values in
/// the order given.
#[must_use]
pub fn json_line(record: &Record<'_>, ts: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"ts\":");
    push_str(
        &mut out,
        &ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    out.push_str(",\"level\":");
    push_str(&mut out, record.level().as_str());
    out.push_str(",\"target\":");
    push_str(&mut out, record.target());
    out.push_str(",\"msg\":");
    match record.args().as_str() {
        Some(s) => push_str(&mut out, s),
        None => push_str(&mut out, &record.args().to_string()),
    }
    let mut fields = Fields {
        out,
        seen: Vec::new(),
    };
    // Our visitor never fails.
    let _ = record.key_values().visit(&mut fields);
    let mut out = fields.out;
    out.push('}');
    out
}

/// A JSON string literal of `s`, escaped.
fn push_str(out: &mut String, s: &str) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Appends `,"key":value` for each key-value, once per key; a key whose
/// value is empty (`None`) is left out.
struct Fields {
    out: String,
    seen: Vec<String>,
}

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let key = key.as_str();
        if RESERVED.contains(&key) || self.seen.iter().any(|k| k == key) {
            return Ok(());
        }
        let mut json = JsonValue(None);
        value.visit(&mut json)?;
        let Some(json) = json.0 else {
            return Ok(());
        };
        self.seen.push(key.to_owned());
        self.out.push(',');
        push_str(&mut self.out, key);
        self.out.push(':');
        self.out.push_str(&json);
        Ok(())
    }
}

/// One key-value's value as JSON: numbers and booleans as such, `None` as
/// nothing, anything else as the string of its `Display`.
struct JsonValue(Option<String>);

impl JsonValue {
    fn string(&mut self, s: &str) {
        let mut out = String::with_capacity(s.len() + 2);
        push_str(&mut out, s);
        self.0 = Some(out);
    }
}

impl kv::VisitValue<'_> for JsonValue {
    fn visit_any(&mut self, value: kv::Value<'_>) -> Result<(), kv::Error> {
        self.string(&value.to_string());
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0 = None;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        self.0 = Some(value.to_string());
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        self.0 = Some(value.to_string());
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        self.0 = Some(value.to_string());
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        self.0 = Some(value.to_string());
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        match serde_json::Number::from_f64(value) {
            Some(n) => self.0 = Some(n.to_string()),
            None => self.string(&value.to_string()),
        }
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0 = Some(value.to_string());
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        self.string(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn amiquip_is_kept_at_info_and_others_are_not() {
        assert!(allowed("amiquip::io_loop", Level::Info));
        assert!(!allowed("amiquip::io_loop::handshake_state", Level::Debug));
        assert!(!allowed("amiquip", Level::Trace));
        assert!(allowed("order_timeout_worker::consumer", Level::Trace));
        assert!(allowed("ureq", Level::Debug));
    }

    #[test]
    fn the_format_is_text_or_json_and_anything_else_is_refused_by_name() {
        assert_eq!("".parse(), Ok(Format::Text));
        assert_eq!("text".parse(), Ok(Format::Text));
        assert_eq!("json".parse(), Ok(Format::Json));
        let err = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("LOG_FORMAT"), "{err}");
        assert!(err.contains("\"xml\""), "{err}");
        assert!(err.contains("text") && err.contains("json"), "{err}");
    }

    /// A logger as `init_as` builds it, at `trace`, writing into a buffer.
    fn capture(format: Format) -> (Guarded, Arc<Mutex<Vec<u8>>>) {
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut builder = env_logger::Builder::new();
        builder
            .parse_filters("trace")
            .write_style(env_logger::WriteStyle::Never)
            .target(env_logger::Target::Pipe(Box::new(Buf(Arc::clone(&buf)))));
        configure(&mut builder, format);
        (Guarded(builder.build()), buf)
    }

    fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
        String::from_utf8(buf.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_json_line_has_the_fields_and_the_key_values() {
        let (logger, buf) = capture(Format::Json);
        let order_no = "OT20261206abc";
        logger.log(
            &Record::builder()
                .level(Level::Info)
                .target("order_timeout_worker::lane")
                .args(format_args!("order {order_no}: closed"))
                .key_values(&[
                    ("order_no", kv::Value::from(order_no)),
                    ("outcome", kv::Value::from("closed")),
                    ("attempt", kv::Value::from(3_u32)),
                    ("msg", kv::Value::from("not the message")),
                    ("reason", kv::ToValue::to_value(&None::<&str>)),
                    ("refunded", kv::Value::from(true)),
                    ("order_no", kv::Value::from("a second order_no")),
                ])
                .build(),
        );
        let out = text(&buf);
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        let ts = v["ts"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(ts).unwrap();
        assert!(ts.ends_with('Z'), "{ts}");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "order_timeout_worker::lane");
        assert_eq!(v["msg"], "order OT20261206abc: closed");
        assert_eq!(v["order_no"], "OT20261206abc");
        assert_eq!(v["outcome"], "closed");
        assert_eq!(v["attempt"], 3);
        assert_eq!(v["refunded"], true);
        // No `reason` (None), one `order_no`, the record's own `msg`.
        assert_eq!(v.as_object().unwrap().len(), 8, "{v}");
        assert_eq!(out.matches("order_no").count(), 1, "{out}");
    }

    #[test]
    fn quotes_newlines_and_unicode_are_escaped_into_one_line() {
        let (logger, buf) = capture(Format::Json);
        let msg = "say \"hi\"\nthen\tleave \\ 退款 \u{1}";
        logger.log(
            &Record::builder()
                .level(Level::Warn)
                .target("t")
                .args(format_args!("{msg}"))
                .key_values(&[("out_refund_no", kv::Value::from_display(&"R\"1\n"))])
                .build(),
        );
        let out = text(&buf);
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["msg"], msg);
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["out_refund_no"], "R\"1\n");
    }

    #[test]
    fn amiquip_debug_is_dropped_in_both_formats() {
        for format in [Format::Text, Format::Json] {
            let (logger, buf) = capture(format);
            let secret = "response: \"\\0guest\\0s3cret-password\"";
            let target = "amiquip::io_loop::handshake_state";
            assert!(!logger.enabled(
                &Metadata::builder()
                    .level(Level::Debug)
                    .target(target)
                    .build()
            ));
            logger.log(
                &Record::builder()
                    .level(Level::Debug)
                    .target(target)
                    .args(format_args!("{secret}"))
                    .build(),
            );
            logger.log(
                &Record::builder()
                    .level(Level::Info)
                    .target("amiquip::io_loop")
                    .args(format_args!("connected"))
                    .build(),
            );
            let out = text(&buf);
            assert!(!out.contains("s3cret"), "{format:?}: {out}");
            assert!(out.contains("connected"), "{format:?}: {out}");
        }
    }

    #[test]
    fn the_text_line_leaves_key_values_out() {
        let line = |kvs: &[(&str, kv::Value<'_>)]| {
            let (logger, buf) = capture(Format::Text);
            logger.log(
                &Record::builder()
                    .level(Level::Info)
                    .target("t")
                    .args(format_args!("order A1B2C3: closed"))
                    .key_values(&kvs)
                    .build(),
            );
            // Strip the timestamp: `[2026-12-06T22:19:23Z INFO t] ...`.
            let out = text(&buf);
            out.split_once(' ').unwrap().1.to_owned()
        };
        let with = line(&[("order_no", kv::Value::from("A1B2C3"))]);
        assert_eq!(with, line(&[]));
        assert_eq!(with, "INFO  t] order A1B2C3: closed\n");
    }
}
