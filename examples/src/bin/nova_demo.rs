//! A Nova-like scenario on novarpc.
//!
//! `nova-demo` runs everything in one process on the default config (memory):
//! two compute hosts, a scheduler that also prints notifications, and an api
//! that issues a call, a cast, a cast to one host, a fanout cast and a
//! multicall. With a broker config the roles run as separate processes:
//! `nova-demo compute --host compute1`, `nova-demo scheduler`, `nova-demo api`
//! (servers stop gracefully on SIGTERM or Ctrl-C). The compute and scheduler
//! APIs are traits under `#[novarpc::service]`: the api drives them through
//! the generated clients.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use novarpc::{
    Context, EndpointError, NotificationListener, Notifier, Priority, RpcServer, RpcStream, Target,
    Transport,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Parser)]
#[command(about = "A Nova-like demo of novarpc")]
struct Cli {
    /// The configuration file (nova.conf-style TOML).
    #[arg(long, env = "NOVARPC_CONFIG", default_value = "config/novarpc.toml")]
    config: String,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand)]
enum Role {
    /// Everything in one process (the default).
    All,
    /// A compute host serving the `compute` topic.
    Compute {
        #[arg(long)]
        host: String,
    },
    /// The scheduler: picks hosts and prints notifications.
    Scheduler,
    /// The api: drives the scenario against running compute and scheduler services.
    Api,
}

#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    instance: String,
    percent: u32,
}

/// A compute host's API (topic `compute`).
#[novarpc::service]
trait Compute {
    /// The instance's console.
    async fn get_console_output(
        &self,
        ctx: &Context,
        instance: String,
    ) -> Result<String, EndpointError>;
    /// Boots an instance and notifies `compute.instance.create.end`.
    #[rpc(cast)]
    async fn run_instance(&self, ctx: &Context, instance: String) -> Result<(), EndpointError>;
    /// Deletes an instance.
    #[rpc(cast)]
    async fn terminate_instance(
        &self,
        ctx: &Context,
        instance: String,
    ) -> Result<(), EndpointError>;
    /// What the scheduler should know about this host (a fanout cast).
    #[rpc(cast)]
    async fn update_capabilities(
        &self,
        ctx: &Context,
        free_ram_mb: u64,
    ) -> Result<(), EndpointError>;
    /// Moves an instance, streaming its progress.
    #[rpc(stream)]
    fn live_migrate(&self, ctx: &Context, instance: String) -> RpcStream<Progress, EndpointError>;
}

/// The scheduler's API (topic `scheduler`).
#[novarpc::service]
trait Scheduler {
    /// The host an instance should run on.
    async fn select_destination(
        &self,
        ctx: &Context,
        instance: String,
    ) -> Result<String, EndpointError>;
}

fn say(role: &str, text: impl std::fmt::Display) {
    println!("[{role:<9}] {text}");
}

struct ComputeHost {
    host: String,
    notifier: Notifier,
}

impl Compute for ComputeHost {
    async fn get_console_output(
        &self,
        _ctx: &Context,
        instance: String,
    ) -> Result<String, EndpointError> {
        let host = &self.host;
        say(host, format!("get_console_output({instance})"));
        Ok(format!(
            "[    0.000000] Linux version 6.1 ({instance} on {host})\nlogin:"
        ))
    }

    async fn run_instance(&self, ctx: &Context, instance: String) -> Result<(), EndpointError> {
        let request_id = ctx.get("request_id").unwrap_or(&json!("-")).clone();
        say(
            &self.host,
            format!("run_instance({instance}) from request {request_id}"),
        );
        let payload = json!({"instance": instance, "host": self.host});
        self.notifier
            .info(ctx, "compute.instance.create.end", &payload)
            .await?;
        Ok(())
    }

    async fn terminate_instance(
        &self,
        _ctx: &Context,
        instance: String,
    ) -> Result<(), EndpointError> {
        say(&self.host, format!("terminate_instance({instance})"));
        Ok(())
    }

    async fn update_capabilities(
        &self,
        _ctx: &Context,
        free_ram_mb: u64,
    ) -> Result<(), EndpointError> {
        say(
            &self.host,
            format!("update_capabilities(free_ram_mb={free_ram_mb})"),
        );
        Ok(())
    }

    fn live_migrate(&self, _ctx: &Context, instance: String) -> RpcStream<Progress, EndpointError> {
        say(
            &self.host,
            format!("live_migrate({instance}) streaming progress"),
        );
        futures::stream::iter(1..=4u32)
            .then(move |step| {
                let instance = instance.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(Progress {
                        instance,
                        percent: step * 25,
                    })
                }
            })
            .boxed()
    }
}

struct RoundRobin {
    hosts: [&'static str; 2],
    next: AtomicUsize,
}

impl Scheduler for RoundRobin {
    async fn select_destination(
        &self,
        _ctx: &Context,
        instance: String,
    ) -> Result<String, EndpointError> {
        let host = self.hosts[self.next.fetch_add(1, Ordering::Relaxed) % self.hosts.len()];
        say(
            "scheduler",
            format!("select_destination({instance}) -> {host}"),
        );
        Ok(host.to_owned())
    }
}

async fn start_compute(transport: &Transport, host: &str) -> Result<RpcServer> {
    let notifier = Notifier::new(transport.clone(), format!("compute.{host}"));
    let server = RpcServer::builder(transport.clone(), Target::new("compute").server(host))
        .endpoint(
            ComputeHost {
                host: host.to_owned(),
                notifier,
            }
            .into_endpoint(),
        )
        .start()
        .await?;
    say(host, "serving topic `compute`");
    Ok(server)
}

async fn start_scheduler(
    transport: &Transport,
    seen: Arc<AtomicUsize>,
) -> Result<(RpcServer, tokio::task::JoinHandle<()>)> {
    let scheduler = RoundRobin {
        hosts: ["compute1", "compute2"],
        next: AtomicUsize::new(0),
    };
    let server = RpcServer::builder(
        transport.clone(),
        Target::new("scheduler").server("scheduler1"),
    )
    .endpoint(scheduler.into_endpoint())
    .start()
    .await?;
    let mut listener = NotificationListener::start(
        transport,
        &[Target::new("notifications")],
        &[Priority::Info, Priority::Error],
        None,
    )
    .await?;
    let printer = tokio::spawn(async move {
        while let Some(n) = listener.next().await {
            say(
                "listener",
                format!(
                    "notification {} {} from {}: {}",
                    n.priority, n.event_type, n.publisher_id, n.payload
                ),
            );
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    say(
        "scheduler",
        "serving topic `scheduler`, listening to notifications.info/error",
    );
    Ok((server, printer))
}

async fn run_api(transport: &Transport) -> Result<()> {
    let mut ctx = Context::new();
    ctx.insert("request_id".into(), json!("req-42"));
    ctx.insert("user_id".into(), json!("demo"));
    let scheduler = SchedulerClient::new(transport.clone(), Target::new("scheduler"))
        .timeout(Duration::from_secs(10));
    let compute = ComputeClient::new(transport.clone(), Target::new("compute"))
        .timeout(Duration::from_secs(10));

    let host = scheduler.select_destination(&ctx, "i-1".into()).await?;
    say(
        "api",
        format!("call scheduler.select_destination -> {host}"),
    );

    let output = compute
        .prepare()
        .server(&host)
        .get_console_output(&ctx, "i-1".into())
        .await?;
    say(
        "api",
        format!("call compute.{host}.get_console_output -> {output:?}"),
    );

    compute.run_instance(&ctx, "i-2".into()).await?;
    say("api", "cast compute.run_instance(i-2) to the shared topic");

    compute
        .prepare()
        .server("compute2")
        .terminate_instance(&ctx, "i-3".into())
        .await?;
    say("api", "cast compute.compute2.terminate_instance(i-3)");

    compute
        .prepare()
        .fanout(true)
        .update_capabilities(&ctx, 2048)
        .await?;
    say(
        "api",
        "fanout cast compute.update_capabilities to every compute host",
    );

    say("api", "multicall compute.compute1.live_migrate(i-1):");
    let mut progress = compute
        .prepare()
        .server("compute1")
        .live_migrate(&ctx, "i-1".into())
        .await?;
    while let Some(step) = progress.next().await {
        let step = step?;
        say(
            "api",
            format!("  ... {} is {}% migrated", step.instance, step.percent),
        );
    }
    say("api", "multicall finished");

    // A method the service does not have, through the untyped client.
    match compute
        .rpc_client()
        .call::<serde_json::Value, _>(&ctx, "reboot_instance", &json!({"instance": "i-1"}))
        .await
    {
        Err(e) => say(
            "api",
            format!("call compute.reboot_instance -> error as expected: {e}"),
        ),
        Ok(v) => bail!("an unknown method answered {v}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("nova-demo: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    novarpc::logging::init("warn");
    let cli = Cli::parse();
    let config = novarpc::Config::from_file(&cli.config)
        .with_context(|| format!("loading {}", cli.config))?;
    let transport = novarpc::connect(&config).await?;
    let role = cli.role.unwrap_or(Role::All);
    if !matches!(role, Role::All) && !transport.capabilities().cross_process {
        bail!(
            "the `{}` backend cannot reach other processes: run `nova-demo` (all roles in one process) \
             or pick a broker config, e.g. --config config/kombu.toml",
            transport.backend()
        );
    }
    say(
        "demo",
        format!("backend `{}` from {}", transport.backend(), cli.config),
    );
    match role {
        Role::All => {
            let seen = Arc::new(AtomicUsize::new(0));
            let (scheduler, printer) = start_scheduler(&transport, seen.clone()).await?;
            let computes = vec![
                start_compute(&transport, "compute1").await?,
                start_compute(&transport, "compute2").await?,
            ];
            run_api(&transport).await?;
            // Casts and the notification travel on after the api returns.
            for _ in 0..100 {
                if seen.load(Ordering::Relaxed) >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            for server in computes {
                server.stop().await?;
            }
            scheduler.stop().await?;
            printer.abort();
            transport.cleanup().await?;
            say("demo", "done");
        }
        Role::Compute { host } => {
            // Until SIGTERM or Ctrl-C; requests in flight finish first.
            start_compute(&transport, &host)
                .await?
                .serve_until_signal()
                .await?;
        }
        Role::Scheduler => {
            let (server, printer) =
                start_scheduler(&transport, Arc::new(AtomicUsize::new(0))).await?;
            server.serve_until_signal().await?;
            printer.abort();
        }
        Role::Api => {
            run_api(&transport).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            transport.cleanup().await?;
        }
    }
    Ok(())
}
