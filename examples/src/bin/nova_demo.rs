//! A Nova-like scenario on novarpc.
//!
//! `nova-demo` runs everything in one process on the default config (memory):
//! two compute hosts, a scheduler that also prints notifications, and an api
//! that issues a call, a cast, a cast to one host, a fanout cast and a
//! multicall. With a broker config the roles run as separate processes:
//! `nova-demo compute --host compute1`, `nova-demo scheduler`, `nova-demo api`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use novarpc::{
    Context, Endpoint, EndpointError, NotificationListener, Notifier, Priority, RpcClient,
    RpcServer, Target, Transport,
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
struct InstanceArgs {
    instance: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Capabilities {
    free_ram_mb: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    instance: String,
    percent: u32,
}

fn say(role: &str, text: impl std::fmt::Display) {
    println!("[{role:<9}] {text}");
}

fn compute_endpoint(host: &str, notifier: Notifier) -> Endpoint {
    let (h1, h2, h3, h4, h5) = (
        host.to_owned(),
        host.to_owned(),
        host.to_owned(),
        host.to_owned(),
        host.to_owned(),
    );
    Endpoint::new()
        .method("get_console_output", move |_ctx, args: InstanceArgs| {
            let host = h1.clone();
            async move {
                say(&host, format!("get_console_output({})", args.instance));
                Ok::<_, EndpointError>(format!(
                    "[    0.000000] Linux version 6.1 ({} on {host})\nlogin:",
                    args.instance
                ))
            }
        })
        .method("run_instance", move |ctx: Context, args: InstanceArgs| {
            let host = h2.clone();
            let notifier = notifier.clone();
            async move {
                say(
                    &host,
                    format!(
                        "run_instance({}) from request {}",
                        args.instance,
                        ctx.get("request_id").unwrap_or(&json!("-"))
                    ),
                );
                notifier
                    .info(
                        &ctx,
                        "compute.instance.create.end",
                        &json!({"instance": args.instance, "host": host}),
                    )
                    .await
                    .map_err(|e| EndpointError::new("NotifyError", e.to_string()))?;
                Ok::<_, EndpointError>(())
            }
        })
        .method("terminate_instance", move |_ctx, args: InstanceArgs| {
            let host = h3.clone();
            async move {
                say(&host, format!("terminate_instance({})", args.instance));
                Ok::<_, EndpointError>(())
            }
        })
        .method("update_capabilities", move |_ctx, caps: Capabilities| {
            let host = h4.clone();
            async move {
                say(
                    &host,
                    format!("update_capabilities(free_ram_mb={})", caps.free_ram_mb),
                );
                Ok::<_, EndpointError>(())
            }
        })
        .stream_method("live_migrate", move |_ctx, args: InstanceArgs| {
            let host = h5.clone();
            say(
                &host,
                format!("live_migrate({}) streaming progress", args.instance),
            );
            futures::stream::iter((1..=4).map(move |step| {
                Ok::<_, EndpointError>(Progress {
                    instance: args.instance.clone(),
                    percent: step * 25,
                })
            }))
            .then(|p| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                p
            })
        })
}

async fn start_compute(transport: &Transport, host: &str) -> Result<RpcServer> {
    let notifier = Notifier::new(transport.clone(), format!("compute.{host}"));
    let server = RpcServer::builder(transport.clone(), Target::new("compute").server(host))
        .endpoint(compute_endpoint(host, notifier))
        .start()
        .await?;
    say(host, "serving topic `compute`");
    Ok(server)
}

async fn start_scheduler(
    transport: &Transport,
    seen: Arc<AtomicUsize>,
) -> Result<(RpcServer, tokio::task::JoinHandle<()>)> {
    let hosts = ["compute1", "compute2"];
    let next = Arc::new(AtomicUsize::new(0));
    let endpoint = Endpoint::new().method("select_destination", move |_ctx, args: InstanceArgs| {
        let next = next.clone();
        async move {
            let host = hosts[next.fetch_add(1, Ordering::Relaxed) % hosts.len()];
            say(
                "scheduler",
                format!("select_destination({}) -> {host}", args.instance),
            );
            Ok::<_, EndpointError>(host)
        }
    });
    let server = RpcServer::builder(
        transport.clone(),
        Target::new("scheduler").server("scheduler1"),
    )
    .endpoint(endpoint)
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
    let scheduler = RpcClient::new(transport.clone(), Target::new("scheduler"))
        .timeout(Duration::from_secs(10));
    let compute =
        RpcClient::new(transport.clone(), Target::new("compute")).timeout(Duration::from_secs(10));
    let instance = |name: &str| InstanceArgs {
        instance: name.to_owned(),
    };

    let host: String = scheduler
        .call(&ctx, "select_destination", &instance("i-1"))
        .await?;
    say(
        "api",
        format!("call scheduler.select_destination -> {host}"),
    );

    let output: String = compute
        .prepare()
        .server(&host)
        .call(&ctx, "get_console_output", &instance("i-1"))
        .await?;
    say(
        "api",
        format!("call compute.{host}.get_console_output -> {:?}", output),
    );

    compute.cast(&ctx, "run_instance", &instance("i-2")).await?;
    say("api", "cast compute.run_instance(i-2) to the shared topic");

    compute
        .cast_to_host(&ctx, "compute2", "terminate_instance", &instance("i-3"))
        .await?;
    say(
        "api",
        "cast_to_host compute.compute2.terminate_instance(i-3)",
    );

    compute
        .fanout_cast(
            &ctx,
            "update_capabilities",
            &Capabilities { free_ram_mb: 2048 },
        )
        .await?;
    say(
        "api",
        "fanout_cast compute.update_capabilities to every compute host",
    );

    say("api", "multicall compute.compute1.live_migrate(i-1):");
    let mut progress = compute
        .prepare()
        .server("compute1")
        .multicall::<Progress, _>(&ctx, "live_migrate", &instance("i-1"))
        .await?;
    while let Some(step) = progress.next().await {
        let step = step?;
        say(
            "api",
            format!("  ... {} is {}% migrated", step.instance, step.percent),
        );
    }
    say("api", "multicall finished");

    match compute
        .call::<serde_json::Value, _>(&ctx, "reboot_instance", &instance("i-1"))
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
            let server = start_compute(&transport, &host).await?;
            tokio::signal::ctrl_c().await?;
            server.stop().await?;
        }
        Role::Scheduler => {
            let (server, printer) =
                start_scheduler(&transport, Arc::new(AtomicUsize::new(0))).await?;
            tokio::signal::ctrl_c().await?;
            server.stop().await?;
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
