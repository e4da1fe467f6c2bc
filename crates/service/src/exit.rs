//! Exit codes, decided in one place: 0 success, 2 bad usage or
//! configuration, 1 anything else; and the `main` every binary runs.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use broker::BrokerError;

/// A mistake in the command line or configuration: exit code 2. The message
/// names the setting and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error: 2 when bad usage or configuration caused it
/// (a [`UsageError`] anywhere in its chain, a topology the broker lacks or
/// holds with other arguments, credentials the broker refuses, or an
/// operator's decision refused as not applying), 1 for anything else.
#[must_use]
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let usage = err.chain().any(|e| {
        e.downcast_ref::<UsageError>().is_some()
            || matches!(
                e.downcast_ref::<BrokerError>(),
                Some(
                    BrokerError::TopologyMismatch(_)
                        | BrokerError::TopologyMissing { .. }
                        | BrokerError::RetryDelaysDiffer { .. }
                        | BrokerError::AccessRefused { .. }
                )
            )
            || matches!(
                e.downcast_ref::<domain::StoreError>(),
                Some(domain::StoreError::Refused(_))
            )
    });
    if usage {
        2
    } else {
        1
    }
}

/// The reader of standard output went away (`order-producer cases | head`):
/// the command ends quietly, exit 1 (it did not write everything), with no
/// error line, as the tools of a pipeline do.
#[derive(Debug, thiserror::Error)]
#[error("the reader of standard output went away")]
pub struct ReaderGone;

/// Standard output as the commands write their reports to it: a write to a
/// closed pipe is a [`ReaderGone`] that [`main`] knows, rather than an
/// `error: Broken pipe (os error 32)` line. Any other error stays as it is.
#[derive(Debug)]
pub struct ReportOut(io::StdoutLock<'static>);

#[must_use]
pub fn stdout() -> ReportOut {
    ReportOut(io::stdout().lock())
}

fn reader_gone(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, ReaderGone)
    } else {
        e
    }
}

impl Write for ReportOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(reader_gone)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(reader_gone)
    }
}

fn is_reader_gone(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<ReaderGone>().is_some()
            || e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<ReaderGone>())
                .is_some()
    })
}

/// The whole `main` of a binary: parses the command line (renamed settings
/// mapped, see [`crate::cli::parse`]; clap exits 2 on bad usage), sets up
/// logging (an unknown `LOG_FORMAT` exits 2) and logs each deprecated name used, sets up the stop flag, runs
/// `run`, and prints an error's chain (`error: ...: ...`, or a JSON line
/// with `LOG_FORMAT=json`) with its exit code.
pub fn main<C: clap::Parser>(
    run: impl FnOnce(&C, &Arc<AtomicBool>) -> anyhow::Result<ExitCode>,
) -> ExitCode {
    let (cli, deprecated) = crate::cli::parse::<C>();
    if let Err(e) = crate::logging::init() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    for warning in deprecated {
        log::warn!("{warning}");
    }
    let stop = match crate::shutdown::stop_flag() {
        Ok(stop) => stop,
        Err(e) => {
            crate::logging::fatal(
                "error",
                &format!("could not install the SIGTERM/SIGINT handlers: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    match run(&cli, &stop) {
        Ok(code) => code,
        Err(err) if is_reader_gone(&err) => {
            log::debug!("{err:#}");
            ExitCode::FAILURE
        }
        Err(err) => {
            crate::logging::fatal("error", &format!("{err:#}"));
            ExitCode::from(exit_code(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_known_through_any_context() {
        let gone = anyhow::Error::new(reader_gone(io::Error::from(io::ErrorKind::BrokenPipe)))
            .context("writing the report");
        assert!(is_reader_gone(&gone));
        // Another broken pipe (a socket) is an error like any other.
        let socket = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_reader_gone(&socket));
        let other = anyhow::Error::new(reader_gone(io::Error::other("disk full")));
        assert!(!is_reader_gone(&other));
    }

    #[test]
    fn usage_anywhere_in_the_chain_is_2_else_1() {
        let usage = anyhow::Error::new(UsageError("bad".into())).context("while starting");
        assert_eq!(exit_code(&usage), 2);
        let missing = anyhow::Error::new(BrokerError::TopologyMissing {
            what: "queue x".into(),
        });
        assert_eq!(exit_code(&missing), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("database down")), 1);
    }
}
