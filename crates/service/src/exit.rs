//! Exit codes, decided in one place: 0 success, 2 bad usage or
//! configuration, 1 anything else; and the `main` every binary runs.

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
/// holds with other arguments, or an operator's decision refused as not
/// applying), 1 for anything else.
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
