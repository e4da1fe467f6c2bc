//! `order-timeout-worker`: glue only. `service::main` parses the command
//! line, sets up logging and the SIGTERM/SIGINT flag, runs, and maps the
//! outcome to an exit code (0 success, 2 bad usage or configuration, 1
//! anything else).

fn main() -> std::process::ExitCode {
    service::main(order_timeout_worker::run)
}
