//! From the process's command line to a parsed `Cli`: renamed settings are
//! mapped to their new names ([`crate::renamed`]), and options written
//! before the subcommand (`order-producer --database-url X migrate`, the
//! form every command accepted when the shared settings were global) are
//! moved after it, where each subcommand now declares exactly the settings
//! it reads. Such an early option that the subcommand does not read (a
//! wrapper passing `--database-url` to every command) is dropped with a
//! warning, as it was ignored before; after the subcommand, clap refuses it.

use std::ffi::OsString;

use clap::Command;

/// True when `--name` takes a value in any command of the tree.
fn takes_value(cmd: &Command, name: &str) -> bool {
    cmd.get_arguments()
        .any(|a| a.get_long() == Some(name) && a.get_action().takes_values())
        || cmd.get_subcommands().any(|s| takes_value(s, name))
}

/// True when the option `token` (`--name`, `--name=value`, `-x`) is one
/// `cmd` itself reads, or help/version.
fn reads(cmd: &Command, token: &str) -> bool {
    let Some(long) = token.strip_prefix("--") else {
        return true;
    };
    let name = long.split_once('=').map_or(long, |(n, _)| n);
    matches!(name, "help" | "version") || cmd.get_arguments().any(|a| a.get_long() == Some(name))
}

/// Moves the options given before the (innermost) subcommand to just after
/// it; those it does not read are dropped, each with a warning. A command
/// line without a subcommand is returned unchanged.
#[must_use]
pub fn options_after_subcommand(
    top: &Command,
    args: Vec<OsString>,
) -> (Vec<OsString>, Vec<String>) {
    let mut path = Vec::new();
    // Each early option with its value, if it takes one.
    let mut pending: Vec<Vec<OsString>> = Vec::new();
    let mut cmd = top;
    let mut rest_from = args.len();
    let mut i = 1;
    while i < args.len() {
        let Some(text) = args[i].to_str() else {
            rest_from = i;
            break;
        };
        if text == "--" {
            rest_from = i;
            break;
        }
        if text.starts_with('-') {
            let mut option = vec![args[i].clone()];
            let long = text.strip_prefix("--").unwrap_or("");
            if !long.is_empty() && !long.contains('=') && takes_value(top, long) {
                if let Some(value) = args.get(i + 1) {
                    option.push(value.clone());
                    i += 1;
                }
            }
            pending.push(option);
        } else if let Some(sub) = cmd.find_subcommand(text) {
            path.push(args[i].clone());
            cmd = sub;
        } else {
            rest_from = i;
            break;
        }
        i += 1;
    }
    if path.is_empty() {
        return (args, Vec::new());
    }
    let mut warnings = Vec::new();
    let mut out = Vec::with_capacity(args.len());
    out.push(args[0].clone());
    let named = path
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    out.extend(path);
    for option in pending {
        let token = option[0].to_string_lossy();
        if reads(cmd, &token) {
            out.extend(option);
        } else {
            let name = token.split_once('=').map_or(&*token, |(n, _)| n);
            let warning = format!("{name} given before `{named}` is not read by it; ignored");
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
    }
    out.extend(args.into_iter().skip(rest_from));
    (out, warnings)
}

/// Parses `args` (`args[0]` the program) as `C` after moving options given
/// before the subcommand after it. Renamed settings are not mapped here
/// (that reads and writes the process environment: [`parse`] does it).
///
/// # Errors
/// clap's error for a bad command line.
pub fn try_parse_from<C: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<OsString>>,
) -> Result<C, clap::Error> {
    let args = args.into_iter().map(Into::into).collect();
    C::try_parse_from(options_after_subcommand(&C::command(), args).0)
}

/// Parses this process's command line as `C`: renamed settings mapped
/// (the environment updated), options moved after the subcommand. Exits 2
/// on bad usage, like clap. Returns the deprecation warnings to log once
/// logging is set up.
#[must_use]
pub fn parse<C: clap::Parser>() -> (C, Vec<String>) {
    let top = C::command();
    let (args, mut warnings) = match crate::renamed::apply(top.get_name()) {
        Ok(applied) => applied,
        Err(conflict) => {
            eprintln!("error: {conflict}");
            std::process::exit(2);
        }
    };
    let (args, ignored) = options_after_subcommand(&top, args);
    warnings.extend(ignored);
    let cli = C::try_parse_from(args).unwrap_or_else(|e| e.exit());
    (cli, warnings)
}

#[cfg(test)]
mod tests {
    use clap::{Args, Parser, Subcommand};

    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "t")]
    struct Top {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Run(Opts),
        #[command(subcommand)]
        Stock(Inner),
    }

    #[derive(Debug, Subcommand)]
    enum Inner {
        Set(Opts),
    }

    #[derive(Debug, Args)]
    struct Opts {
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        json: bool,
        name: Option<String>,
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn options_before_the_subcommand_move_after_it() {
        let cmd = Top::command_for_test();
        let moved = |v: &[&str]| options_after_subcommand(&cmd, os(v)).0;
        assert_eq!(
            moved(&["t", "--url", "run", "--json", "run", "x"]),
            os(&["t", "run", "--url", "run", "--json", "x"])
        );
        assert_eq!(
            moved(&["t", "--url=u", "stock", "--json", "set", "n"]),
            os(&["t", "stock", "set", "--url=u", "--json", "n"])
        );
        assert_eq!(moved(&["t", "--help"]), os(&["t", "--help"]));
        let (args, warnings) =
            options_after_subcommand(&cmd, os(&["t", "--nope", "run", "--url=u"]));
        assert_eq!(args, os(&["t", "run", "--url=u"]));
        assert_eq!(
            warnings,
            ["--nope given before `run` is not read by it; ignored"]
        );
        let parsed: Top = try_parse_from(["t", "--url", "u", "stock", "set", "n"]).unwrap();
        let Sub::Stock(Inner::Set(o)) = parsed.command else {
            panic!("{parsed:?}")
        };
        assert_eq!(
            (o.url.as_deref(), o.name.as_deref()),
            (Some("u"), Some("n"))
        );
    }

    impl Top {
        fn command_for_test() -> Command {
            <Self as clap::CommandFactory>::command()
        }
    }
}
