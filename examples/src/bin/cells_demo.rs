//! Nova cells on novarpc: an api whose broker is cell 0 reaches the compute
//! hosts of cell 1 on cell 1's broker, named in the configuration's
//! `[brokers.cell1]` table.
//!
//! `cells-demo` runs it in one process on the default `config/cells.toml`
//! (two in-process brokers, `memory://cell0` and `memory://cell1`): a compute
//! host on cell 0, two on cell 1, and the api, which casts to cell 1
//! (`cast_to_server`), to one host there, fans out to every compute of cell 1
//! (`fanout_cast_to_server`, none of cell 0's), calls and multicalls across,
//! and finds cell 2's broker down without holding up the others. With a
//! broker config (`config/cells-kombu.toml`: two RabbitMQ virtual hosts) the
//! roles run as separate processes: `cells-demo compute --host c0-compute1`,
//! `cells-demo compute --cell cell1 --host c1-compute1`, `cells-demo api`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use novarpc::{Broker, Context, Endpoint, EndpointError, RpcClient, RpcServer, Target, Transport};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Nova cells on novarpc: an api on cell 0 reaching cell 1's computes")]
struct Cli {
    /// The configuration file: the default broker is cell 0, [brokers.cell1]
    /// is cell 1 (and [brokers.cell2], if present, a cell that is down).
    #[arg(long, env = "NOVARPC_CONFIG", default_value = "config/cells.toml")]
    config: String,
    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Subcommand)]
enum Role {
    /// Everything in one process (the default).
    All,
    /// A compute host serving the `compute` topic in a cell.
    Compute {
        #[arg(long)]
        host: String,
        /// The cell's broker: a [brokers] name (default: the config's own
        /// broker, cell 0).
        #[arg(long)]
        cell: Option<String>,
    },
    /// The api (on cell 0): drives the scenario against running computes.
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

/// What the computes of this process received: (host, method).
type Seen = Arc<Mutex<Vec<(String, &'static str)>>>;

fn say(role: &str, text: impl std::fmt::Display) {
    println!("[{role:<11}] {text}");
}

fn compute_endpoint(host: &str, seen: Seen) -> Endpoint {
    let record = move |host: &str, method: &'static str| {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((host.to_owned(), method));
    };
    let (h1, h2, h3, h4, h5) = (
        host.to_owned(),
        host.to_owned(),
        host.to_owned(),
        host.to_owned(),
        host.to_owned(),
    );
    let (r2, r3, r4) = (record.clone(), record.clone(), record);
    Endpoint::new()
        .method("get_console_output", move |_ctx, args: InstanceArgs| {
            let host = h1.clone();
            async move {
                say(&host, format!("get_console_output({})", args.instance));
                Ok::<_, EndpointError>(format!("login: ({} on {host})", args.instance))
            }
        })
        .method("run_instance", move |_ctx, args: InstanceArgs| {
            let host = h2.clone();
            let record = r2.clone();
            async move {
                say(&host, format!("run_instance({})", args.instance));
                record(&host, "run_instance");
                Ok::<_, EndpointError>(())
            }
        })
        .method("terminate_instance", move |_ctx, args: InstanceArgs| {
            let host = h3.clone();
            let record = r3.clone();
            async move {
                say(&host, format!("terminate_instance({})", args.instance));
                record(&host, "terminate_instance");
                Ok::<_, EndpointError>(())
            }
        })
        .method("update_capabilities", move |_ctx, caps: Capabilities| {
            let host = h4.clone();
            let record = r4.clone();
            async move {
                say(
                    &host,
                    format!("update_capabilities(free_ram_mb={})", caps.free_ram_mb),
                );
                record(&host, "update_capabilities");
                Ok::<_, EndpointError>(())
            }
        })
        .stream_method("live_migrate", move |_ctx, args: InstanceArgs| {
            say(
                &h5,
                format!("live_migrate({}) streaming progress", args.instance),
            );
            futures::stream::iter((1..=2).map(move |step| {
                Ok::<_, EndpointError>(Progress {
                    instance: args.instance.clone(),
                    percent: step * 50,
                })
            }))
        })
}

async fn start_compute(
    transport: Transport,
    cell: &str,
    host: &str,
    seen: Seen,
) -> Result<RpcServer> {
    let server = RpcServer::builder(transport, Target::new("compute").server(host))
        .endpoint(compute_endpoint(host, seen))
        .start()
        .await?;
    say(host, format!("serving topic `compute` on {cell}'s broker"));
    Ok(server)
}

async fn run_api(transport: &Transport, config: &novarpc::Config) -> Result<()> {
    let mut ctx = Context::new();
    ctx.insert("request_id".into(), json!("req-7"));
    let compute =
        RpcClient::new(transport.clone(), Target::new("compute")).timeout(Duration::from_secs(10));
    let instance = |name: &str| InstanceArgs {
        instance: name.to_owned(),
    };
    let cell1 = Broker::named("cell1");

    let output: String = compute
        .prepare()
        .server("c0-compute1")
        .call(&ctx, "get_console_output", &instance("i-1"))
        .await?;
    say(
        "api",
        format!("call compute.c0-compute1.get_console_output (cell 0) -> {output:?}"),
    );

    compute
        .cast_to_server(&ctx, &cell1, "run_instance", &instance("i-2"))
        .await?;
    say(
        "api",
        "cast_to_server(cell1) compute.run_instance(i-2): one compute of cell 1",
    );

    compute
        .prepare()
        .broker(cell1.clone())
        .server("c1-compute2")
        .cast(&ctx, "terminate_instance", &instance("i-3"))
        .await?;
    say(
        "api",
        "cast to host c1-compute2 on cell 1: terminate_instance(i-3)",
    );

    compute
        .fanout_cast_to_server(
            &ctx,
            &cell1,
            "update_capabilities",
            &Capabilities { free_ram_mb: 4096 },
        )
        .await?;
    say(
        "api",
        "fanout_cast_to_server(cell1) compute.update_capabilities: every compute of cell 1",
    );

    let in_cell1 = compute
        .prepare()
        .broker(cell1.clone())
        .server("c1-compute1");
    let output: String = in_cell1
        .call(&ctx, "get_console_output", &instance("i-4"))
        .await?;
    say(
        "api",
        format!("call across cells, compute.c1-compute1.get_console_output -> {output:?}"),
    );
    let mut progress = in_cell1
        .multicall::<Progress, _>(&ctx, "live_migrate", &instance("i-4"))
        .await?;
    while let Some(step) = progress.next().await {
        let step = step?;
        say(
            "api",
            format!(
                "  ... multicall across cells: {} is {}% migrated",
                step.instance, step.percent
            ),
        );
    }

    if config.brokers().iter().any(|b| b.name == "cell2") {
        let started = Instant::now();
        match compute
            .cast_to_server(
                &ctx,
                Broker::named("cell2"),
                "run_instance",
                &instance("i-5"),
            )
            .await
        {
            Err(error) => say(
                "api",
                format!(
                    "cast_to_server(cell2) failed as expected after {:.1} s: {} ({})",
                    started.elapsed().as_secs_f64(),
                    error.kind(),
                    if error.is_temporary() {
                        "temporary"
                    } else {
                        "permanent"
                    }
                ),
            ),
            Ok(()) => bail!("cell2 is meant to be down, yet a cast to it was accepted"),
        }
        let started = Instant::now();
        compute
            .cast_to_server(&ctx, &cell1, "run_instance", &instance("i-6"))
            .await?;
        say(
            "api",
            format!(
                "cast_to_server(cell1) still fine ({} ms)",
                started.elapsed().as_millis()
            ),
        );
    }
    Ok(())
}

/// Waits until this process's computes saw what the api sent, and checks
/// that the fanout reached cell 1 only.
async fn check_deliveries(seen: &Seen, dead_cell: bool) -> Result<()> {
    let expected_runs = if dead_cell { 2 } else { 1 };
    let count = |host_prefix: &str, method: &str| {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(h, m)| h.starts_with(host_prefix) && *m == method)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count("c1-", "update_capabilities") < 2
        || count("c1-", "run_instance") < expected_runs
        || count("c1-compute2", "terminate_instance") < 1
    {
        if Instant::now() > deadline {
            bail!(
                "cell 1's computes did not receive everything: {:?}",
                seen.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything meant for cell 1 that strayed into cell 0 would be here by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let strays = count("c0-", "update_capabilities")
        + count("c0-", "run_instance")
        + count("c0-", "terminate_instance");
    if strays > 0 {
        bail!("cell 0's compute received {strays} message(s) meant for cell 1");
    }
    say(
        "demo",
        "cell 1's computes got the casts and the fanout; cell 0's compute got none of them",
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cells-demo: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    novarpc::logging::init("warn");
    let cli = Cli::parse();
    let config = novarpc::Config::from_file(&cli.config)
        .with_context(|| format!("loading {}", cli.config))?;
    if !config.brokers().iter().any(|b| b.name == "cell1") {
        bail!(
            "{} has no [brokers.cell1] table: cell 1's broker",
            cli.config
        );
    }
    let role = cli.role.unwrap_or(Role::All);
    match role {
        Role::All => {
            let transport = novarpc::connect(&config).await?;
            say(
                "demo",
                format!("cell 0 on `{}` from {}", transport.backend(), cli.config),
            );
            let seen = Seen::default();
            let cell1 = transport.for_broker(&Broker::named("cell1")).await?;
            let servers = vec![
                start_compute(transport.clone(), "cell0", "c0-compute1", seen.clone()).await?,
                start_compute(cell1.clone(), "cell1", "c1-compute1", seen.clone()).await?,
                start_compute(cell1, "cell1", "c1-compute2", seen.clone()).await?,
            ];
            run_api(&transport, &config).await?;
            let dead_cell = config.brokers().iter().any(|b| b.name == "cell2");
            check_deliveries(&seen, dead_cell).await?;
            for server in servers {
                server.stop().await?;
            }
            // Closes cell 1's transport too.
            transport.cleanup().await?;
            say("demo", "done");
        }
        Role::Compute { host, cell } => {
            let (config, cell) = match cell {
                Some(name) => (config.for_broker(&name)?, name),
                None => (config, "cell0".to_owned()),
            };
            let transport = novarpc::connect(&config).await?;
            ensure_cross_process(&transport)?;
            let server = start_compute(transport.clone(), &cell, &host, Seen::default()).await?;
            server.serve_until_signal().await?;
            transport.cleanup().await?;
        }
        Role::Api => {
            let transport = novarpc::connect(&config).await?;
            ensure_cross_process(&transport)?;
            run_api(&transport, &config).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            transport.cleanup().await?;
        }
    }
    Ok(())
}

fn ensure_cross_process(transport: &Transport) -> Result<()> {
    if !transport.capabilities().cross_process {
        bail!(
            "the `{}` backend cannot reach other processes: run `cells-demo` (all roles in one \
             process) or pick a broker config, e.g. --config config/cells-kombu.toml",
            transport.backend()
        );
    }
    Ok(())
}
