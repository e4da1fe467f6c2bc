//! `order-producer`: glue only. `service::main` parses the command line,
//! sets up logging and the SIGTERM/SIGINT flag (the relay finishes its batch
//! and exits 0), runs, and maps the outcome to an exit code (0 success, 2
//! bad usage or configuration, 1 anything else).

fn main() -> std::process::ExitCode {
    service::main(order_producer::run)
}
