//! The `yserve` binary: parses the command line, sets up logging, runs the subcommand.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use yserve::auth;
use yserve::cli::{self, CliError};
use yserve::config::{Cli, Command, Config, LogFormat, TokenArgs};

fn print_token(args: TokenArgs) -> anyhow::Result<()> {
    let secret =
        args.jwt_secret.ok_or_else(|| anyhow::anyhow!("no secret: pass --jwt-secret or set YSERVE_JWT_SECRET"))?;
    let grants = args.docs.iter().map(|d| auth::parse_grant(d)).collect::<Result<Vec<_>, _>>()?;
    let ttl = auth::parse_ttl(&args.ttl).map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    println!("{}", auth::issue(&secret, &args.sub, &grants, now + ttl)?);
    Ok(())
}

/// The operator commands' outcome; a closed stdout (`yserve log doc | head`) is not a failure.
fn cli_result(result: Result<(), CliError>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.is_broken_pipe() => Ok(()),
        other => Ok(other?),
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_env("YSERVE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout carries the `listening on` line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => config,
        Some(Command::Token(args)) => return print_token(args),
        Some(Command::Docs(args)) => return cli_result(cli::docs(&args)),
        Some(Command::Log(args)) => return cli_result(cli::log(&args)),
        Some(Command::Export(args)) => return cli_result(cli::export(&args)),
        Some(Command::Import(args)) => return cli_result(cli::import(&args)),
        Some(Command::Compact(args)) => return cli_result(cli::compact(&args)),
        None => cli.serve,
    };
    init_logging(&config);
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    runtime.block_on(yserve::server::run(config, yserve::server::signal()))
}
