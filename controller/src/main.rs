//! `cks-controller`: `serve` runs the Kubernetes service; `version` and `cluster` are a CLI over
//! its API for people.

use std::path::PathBuf;
use std::process::ExitCode;

use cks_controller::cli::{self, ClientArgs, ClusterCommand, VersionCommand};
use cks_controller::config::Config;
use clap::{Parser, Subcommand};
use tracing::error;

const AFTER_HELP: &str = "\
The API is CloudStack's: point any CloudStack client (e.g. `cs`) at the controller's endpoint and \
it gets the whole CloudStack API plus the Kubernetes commands.

Exit codes: 0 success, 1 failure, 64 invalid command line or configuration.
Logging: RUST_LOG sets the level (default info); logs go to stderr.";

/// The Kubernetes service for Apache CloudStack: the CKS API, durable cluster workflows, and
/// the agents' endpoint.
#[derive(Debug, Parser)]
#[command(name = "cks-controller", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller: the API, the agent endpoint and the workflows (resumed after a
    /// restart). Configuration: a TOML file and CKS_* environment variables.
    Serve {
        /// TOML configuration file
        #[arg(long, env = "CKS_CONTROLLER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Rotate the key that seals kubeconfigs and registry passwords at rest: every secret is
    /// re-sealed with a fresh key in one transaction, then the new key replaces the old one.
    /// Run it with the controller stopped (it refuses otherwise); safe to run again if
    /// interrupted.
    Reseal {
        /// TOML configuration file (its data_dir is used)
        #[arg(long, env = "CKS_CONTROLLER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Supported Kubernetes versions
    Version {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: VersionCommand,
    },
    /// Kubernetes clusters
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config } => match load(config) {
            Ok(config) => runtime.block_on(serve(config)),
            Err(code) => code,
        },
        Command::Reseal { config } => {
            let config = match load(config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            match cks_controller::reseal::reseal(&config.data_dir) {
                Ok(count) => {
                    println!(
                        "re-sealed {count} secrets with a new key in {}",
                        config
                            .data_dir
                            .join(cks_controller::reseal::KEY_FILE)
                            .display()
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("cks-controller: {}", cks_controller::error_chain(&err));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Version { client, command } => {
            report(runtime.block_on(cli::version(&client, command)))
        }
        Command::Cluster { client, command } => {
            report(runtime.block_on(cli::cluster(&client, command)))
        }
    }
}

/// The configuration, or the exit code of a bad one (64, with the reason on stderr).
fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(path.as_deref()).map_err(|err| {
        eprintln!("cks-controller: {err}");
        ExitCode::from(64)
    })
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cks-controller: {}", cli::describe(&err));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let running = match cks_controller::server::start(&config).await {
        Ok(running) => running,
        Err(err) => {
            error!(error = %cks_controller::error_chain(&err), "cannot start");
            return ExitCode::FAILURE;
        }
    };
    wait_for_signal().await;
    tracing::info!(
        "stopping: workflows pause at their next step boundary and resume at the next start"
    );
    if tokio::time::timeout(std::time::Duration::from_secs(30), running.stop())
        .await
        .is_err()
    {
        error!(
            "workflows did not stop within 30 s; exiting anyway (they resume at the next start)"
        );
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
