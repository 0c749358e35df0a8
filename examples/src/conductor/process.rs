//! The conductor examples' process: roles, configuration, the notification
//! printer and `main`, shared by `conductor` (written with the macros) and
//! `conductor-by-hand` (without), so the two differ only in their service
//! and client code.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use novarpc::{NotificationListener, Priority, RpcServer, Target, Transport};

#[derive(Parser)]
struct Cli {
    /// The configuration file (nova.conf-style TOML).
    #[arg(long, env = "NOVARPC_CONFIG", default_value = "config/novarpc.toml")]
    config: String,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand)]
enum Role {
    /// Service, notification listener and client in one process (the default).
    All,
    /// The conductor service, until SIGTERM or Ctrl-C.
    Serve {
        #[arg(long, default_value = "conductor1")]
        host: String,
    },
    /// The client scenario against a running service.
    Client,
}

/// One conductor implementation: its server and its client scenario.
pub trait Conductor {
    /// Starts the conductor service as `host`.
    async fn start(transport: &Transport, host: &str) -> Result<RpcServer>;
    /// Runs the client scenario.
    async fn client(transport: &Transport) -> Result<()>;
}

/// Prints one line as `role`.
pub fn say(role: &str, text: impl std::fmt::Display) {
    println!("[{role:<10}] {text}");
}

async fn print_notifications(transport: &Transport) -> Result<tokio::task::JoinHandle<()>> {
    let mut listener = NotificationListener::start(
        transport,
        &[Target::new("notifications")],
        &[Priority::Info],
        None,
    )
    .await?;
    Ok(tokio::spawn(async move {
        while let Some(n) = listener.next().await {
            say(
                "listener",
                format!("{} from {}: {}", n.event_type, n.publisher_id, n.payload),
            );
        }
    }))
}

/// The process's `main`: `name` and `about` for the command line.
pub async fn main<C: Conductor>(name: &str, about: &'static str) -> std::process::ExitCode {
    novarpc::logging::init("warn");
    match run::<C>(about).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run<C: Conductor>(about: &'static str) -> Result<()> {
    let matches = Cli::command().about(about).get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let config = novarpc::Config::from_file(&cli.config)
        .with_context(|| format!("loading {}", cli.config))?;
    let transport = novarpc::connect(&config).await?;
    let role = cli.role.unwrap_or(Role::All);
    if !matches!(role, Role::All) && !transport.capabilities().cross_process {
        bail!(
            "the `{}` backend cannot reach other processes: pick a broker config",
            transport.backend()
        );
    }
    match role {
        Role::All => {
            let printer = print_notifications(&transport).await?;
            let server = C::start(&transport, "conductor1").await?;
            C::client(&transport).await?;
            tokio::time::sleep(Duration::from_millis(100)).await; // the last notifications
            server.stop().await?;
            printer.abort();
        }
        Role::Serve { host } => {
            let printer = print_notifications(&transport).await?;
            C::start(&transport, &host)
                .await?
                .serve_until_signal()
                .await?;
            printer.abort();
            say(&host, "stopped");
        }
        Role::Client => C::client(&transport).await?,
    }
    transport.cleanup().await?;
    Ok(())
}
