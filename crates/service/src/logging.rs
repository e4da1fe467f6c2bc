//! Logging, set up once per process: `env_logger` with `RUST_LOG` (default
//! `info`), behind a guard that no `RUST_LOG` can lift. amiquip logs the AMQP
//! handshake at debug level, password in clear (`response: "\0user\0password"`),
//! so its records above `info` are dropped, whatever the filter says.

use log::{Level, Log, Metadata, Record};

/// Targets whose records above `info` could carry a secret.
const QUIET_ABOVE_INFO: [&str; 1] = ["amiquip"];

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

/// Installs the logger (stderr). A second call does nothing.
pub fn init() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Guarded(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amiquip_is_kept_at_info_and_others_are_not() {
        assert!(allowed("amiquip::io_loop", Level::Info));
        assert!(!allowed("amiquip::io_loop::handshake_state", Level::Debug));
        assert!(!allowed("amiquip", Level::Trace));
        assert!(allowed("order_timeout_worker::consumer", Level::Trace));
        assert!(allowed("ureq", Level::Debug));
    }
}
