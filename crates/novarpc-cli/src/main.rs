//! `novarpc`: call, cast, notify, listen, check-config, ping and bench against
//! any configured backend.
//!
//! Exit codes: 0 success; 1 the remote method failed (remote error, no such
//! method, unsupported version); 2 bad usage or arguments; 3 invalid
//! configuration; 4 the backend is unreachable or failed; 5 timeout.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use novarpc::{
    Context, Endpoint, EndpointError, Error, ErrorKind, Notifier, Priority, RpcClient, RpcServer,
    StreamExt, Target, Transport,
};
use novarpc_cli::bench::{self, BenchOptions, Mode};
use novarpc_cli::load::Budget;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "novarpc",
    version,
    about = "Nova-style RPC from the command line: call, cast, notify, listen, check-config, ping, bench"
)]
struct Cli {
    /// The configuration file (nova.conf-style TOML).
    #[arg(
        long,
        global = true,
        env = "NOVARPC_CONFIG",
        default_value = "config/novarpc.toml"
    )]
    config: PathBuf,
    /// Override a configuration value: TABLE.KEY=VALUE (VALUE in TOML syntax, or a
    /// bare string), e.g. --set kombu.publisher_confirms=false. Repeatable.
    #[arg(long = "set", global = true, value_name = "TABLE.KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Addressing {
    /// Send to this server (host) only.
    #[arg(long)]
    server: Option<String>,
    /// Send on another broker (a Nova cell): a [brokers.NAME] table of the
    /// configuration, or a transport URL.
    #[arg(long, value_name = "NAME|URL")]
    broker: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// The message's API version (MAJOR.MINOR).
    #[arg(long)]
    version: Option<novarpc::Version>,
    /// The exchange (default: control_exchange).
    #[arg(long)]
    exchange: Option<String>,
    /// Keyword arguments: a JSON object, or @FILE.
    #[arg(long, default_value = "{}")]
    args: String,
    /// The request context: a JSON object, or @FILE.
    #[arg(long)]
    context: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Call METHOD on TOPIC and print its JSON result.
    Call {
        topic: String,
        method: String,
        #[command(flatten)]
        addressing: Addressing,
        /// Seconds to wait for the reply (default: rpc_response_timeout).
        #[arg(long)]
        timeout: Option<f64>,
        /// A multicall: print each element of the method's stream as a
        /// JSON line as it arrives.
        #[arg(long)]
        stream: bool,
    },
    /// Cast METHOD to TOPIC (one server, --server, or every server with --fanout;
    /// on another broker with --broker).
    Cast {
        topic: String,
        method: String,
        #[command(flatten)]
        addressing: Addressing,
        #[arg(long)]
        fanout: bool,
    },
    /// Send a notification.
    Notify {
        /// audit, debug, info, warn, error, critical or sample.
        priority: String,
        event_type: String,
        /// The payload: JSON, or @FILE.
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long, default_value = "novarpc.cli")]
        publisher_id: String,
        #[arg(long, default_value = "notifications")]
        topic: String,
        #[arg(long)]
        exchange: Option<String>,
        #[arg(long)]
        context: Option<String>,
    },
    /// Print notifications (or, with --rpc, the requests sent to a topic) as
    /// JSON lines, without taking them from their consumers.
    Listen {
        #[arg(long, default_value = "notifications")]
        topic: String,
        /// Priorities to print (repeatable; default: all).
        #[arg(long = "priority")]
        priorities: Vec<String>,
        /// Share a named pool's queue instead of a private copy.
        #[arg(long)]
        pool: Option<String>,
        /// Tap the RPC requests (calls and casts) sent to TOPIC instead.
        #[arg(long)]
        rpc: bool,
        /// With --rpc: only requests to this server.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        exchange: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (exit 5 if --count was not reached).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Validate the configuration and print the resolved settings (secrets redacted).
    CheckConfig,
    /// Check that the backend is reachable and a call makes the round trip.
    Ping {
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Measure throughput and latency; with --baseline raw, also the raw client.
    Bench {
        #[arg(long, value_enum, default_value_t = Mode::Call)]
        mode: Mode,
        /// Operations in flight.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Seconds to run (default 5, unless --messages).
        #[arg(long, conflicts_with = "messages")]
        duration: Option<f64>,
        /// Operations to run.
        #[arg(long)]
        messages: Option<u64>,
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        /// Servers to run (and fan out to).
        #[arg(long, default_value_t = 1)]
        servers: usize,
        /// Only the client side: servers run elsewhere (another `--server-only`,
        /// or any oslo.messaging server with `echo`/`sink` methods).
        #[arg(long, conflicts_with = "server_only")]
        client_only: bool,
        /// Only the server side, until interrupted.
        #[arg(long)]
        server_only: bool,
        #[arg(long, default_value = "novarpc_bench")]
        topic: String,
        #[arg(long, value_enum)]
        baseline: Option<Baseline>,
        /// Fail if the whole run has not finished after this many seconds
        /// (default: twice the duration of each measured run plus 120 s, or
        /// 600 s with --messages).
        #[arg(long)]
        deadline: Option<f64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Record novarpc's metrics during the run and write them, in
        /// Prometheus' text format, to FILE when it ends (`-`: stderr).
        #[arg(long, value_name = "FILE")]
        metrics: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Baseline {
    /// The client library the backend is built on, used directly.
    Raw,
}

/// An error with the exit code it should produce.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn classify(error: anyhow::Error) -> Failure {
    let code = match error.downcast_ref::<Error>().map(Error::kind) {
        Some(ErrorKind::Remote | ErrorKind::NoSuchMethod | ErrorKind::UnsupportedVersion) => 1,
        Some(ErrorKind::InvalidInput | ErrorKind::VersionCap | ErrorKind::Unsupported) => 2,
        Some(ErrorKind::Config) => 3,
        Some(ErrorKind::Timeout) => 5,
        Some(_) => 4,
        None if error.downcast_ref::<novarpc::ConfigError>().is_some() => 3,
        None if error.downcast_ref::<UsageError>().is_some() => 2,
        None => 4,
    };
    Failure { code, error }
}

/// Bad arguments found after parsing (exit code 2).
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

#[tokio::main]
async fn main() -> ExitCode {
    novarpc::logging::init("warn");
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let failure = classify(error);
            if let Some(Error::Remote(remote)) = failure.error.downcast_ref::<Error>() {
                eprintln!(
                    "novarpc: remote error: {}: {}",
                    remote.class, remote.message
                );
                if !remote.tb.is_empty() {
                    eprint!("{}", remote.traceback());
                }
            } else {
                // One line: the error and its causes, each said once.
                let error: &(dyn std::error::Error + 'static) = failure.error.as_ref();
                eprintln!("novarpc: {}", novarpc::error_chain(error));
            }
            ExitCode::from(failure.code)
        }
    }
}

/// Reads the configuration, applying `--set` overrides and `NOVARPC_*` variables.
fn load_config(cli: &Cli) -> Result<novarpc::Config> {
    let origin = cli.config.display().to_string();
    if cli.overrides.is_empty() {
        return Ok(novarpc::Config::from_file(&cli.config)?);
    }
    let text =
        std::fs::read_to_string(&cli.config).map_err(|cause| novarpc::ConfigError::Read {
            path: cli.config.clone(),
            cause,
        })?;
    let mut document: toml::Table =
        toml::from_str(&text).map_err(|e| novarpc::ConfigError::Parse {
            origin: origin.clone(),
            message: novarpc::config::redact_secrets(&e.to_string()),
        })?;
    for setting in &cli.overrides {
        let (path, value) = setting
            .split_once('=')
            .ok_or_else(|| usage(format!("--set takes TABLE.KEY=VALUE, got `{setting}`")))?;
        let (table, key) = path.split_once('.').ok_or_else(|| {
            usage(format!(
                "--set needs a table and a key (TABLE.KEY), got `{path}`"
            ))
        })?;
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        document
            .entry(table.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| usage(format!("`{table}` is not a table")))?
            .insert(key.to_owned(), value);
    }
    let text = toml::to_string(&document).context("re-serializing the configuration")?;
    let mut config = novarpc::Config::from_toml_str(&text, &format!("{origin} (with --set)"))?;
    config.apply_overrides(std::env::vars())?;
    novarpc::validate(&config)?;
    Ok(config)
}

fn json_arg(text: &str, what: &str) -> Result<Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {what} from {path}"))?
        }
        None => text.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| usage(format!("{what} is not JSON: {e}")))
}

fn context_arg(text: Option<&str>) -> Result<Context> {
    match text {
        None => Ok(Context::new()),
        Some(text) => match json_arg(text, "--context")? {
            Value::Object(map) => Ok(map),
            other => Err(usage(format!(
                "--context must be a JSON object, got {other}"
            ))),
        },
    }
}

fn print_json(value: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if std::io::stdout().is_terminal() {
        serde_json::to_writer_pretty(&mut out, value)?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn client(transport: Transport, topic: &str, addressing: &Addressing) -> Result<RpcClient> {
    let mut target = Target::new(topic);
    target.server = addressing.server.clone();
    target.namespace = addressing.namespace.clone();
    target.version = addressing.version;
    target.exchange = addressing.exchange.clone();
    let client = RpcClient::new(transport, target);
    Ok(match &addressing.broker {
        Some(broker) => client.broker(
            broker
                .parse()
                .map_err(|e: novarpc::ConfigError| usage(format!("--broker: {e}")))?,
        ),
        None => client,
    })
}

async fn run(cli: Cli) -> Result<u8> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Call {
            topic,
            method,
            addressing,
            timeout,
            stream,
        } => {
            let args = json_arg(&addressing.args, "--args")?;
            let context = context_arg(addressing.context.as_deref())?;
            let transport = novarpc::connect(&config).await?;
            let mut client = client(transport.clone(), &topic, &addressing)?;
            if let Some(seconds) = timeout {
                client = client.timeout(
                    Duration::try_from_secs_f64(seconds)
                        .map_err(|_| usage("--timeout must be positive seconds"))?,
                );
            }
            if stream {
                let result = print_stream(&client, &context, &method, &args).await;
                transport.cleanup().await?;
                result?;
                return Ok(0);
            }
            let result = client.call::<Value, _>(&context, &method, &args).await;
            transport.cleanup().await?;
            print_json(&result?)?;
            Ok(0)
        }
        Command::Cast {
            topic,
            method,
            addressing,
            fanout,
        } => {
            let args = json_arg(&addressing.args, "--args")?;
            let context = context_arg(addressing.context.as_deref())?;
            let transport = novarpc::connect(&config).await?;
            // With --broker the client sends on that broker: a cast there is
            // cast_to_server, a fanout there fanout_cast_to_server.
            let client = client(transport.clone(), &topic, &addressing)?;
            let result = match (fanout, &addressing.server) {
                (true, Some(host)) => {
                    client
                        .fanout_cast_to_host(&context, host, &method, &args)
                        .await
                }
                (true, None) => client.fanout_cast(&context, &method, &args).await,
                (false, _) => client.cast(&context, &method, &args).await,
            };
            transport.cleanup().await?;
            result?;
            Ok(0)
        }
        Command::Notify {
            priority,
            event_type,
            payload,
            publisher_id,
            topic,
            exchange,
            context,
        } => {
            let priority: Priority = priority.parse().map_err(|e| usage(format!("{e}")))?;
            let payload = json_arg(&payload, "--payload")?;
            let context = context_arg(context.as_deref())?;
            let transport = novarpc::connect(&config).await?;
            let mut notifier = Notifier::new(transport.clone(), publisher_id).topics([topic]);
            if let Some(exchange) = exchange {
                notifier = notifier.exchange(exchange);
            }
            let result = notifier
                .notify(&context, priority, &event_type, &payload)
                .await;
            transport.cleanup().await?;
            result?;
            Ok(0)
        }
        Command::Listen {
            topic,
            priorities,
            pool,
            rpc,
            server,
            exchange,
            count,
            timeout,
        } => {
            listen(
                &config, topic, priorities, pool, rpc, server, exchange, count, timeout,
            )
            .await
        }
        Command::CheckConfig => check_config(&config),
        Command::Ping { timeout } => ping(&config, timeout).await,
        Command::Bench {
            mode,
            concurrency,
            duration,
            messages,
            payload_bytes,
            servers,
            client_only,
            server_only,
            topic,
            baseline,
            deadline,
            json,
            metrics,
        } => {
            // Installed before anything connects: transports register
            // their handles with the recorder present at the time.
            let recorder = match &metrics {
                Some(_) => Some(
                    metrics_exporter_prometheus::PrometheusBuilder::new()
                        .install_recorder()
                        .context("cannot install the metrics recorder")?,
                ),
                None => None,
            };
            let budget = match (messages, duration) {
                (Some(n), _) => Budget::Messages(n),
                (None, Some(s)) => Budget::Duration(
                    Duration::try_from_secs_f64(s)
                        .map_err(|_| usage("--duration must be positive seconds"))?,
                ),
                (None, None) => Budget::Duration(Duration::from_secs(5)),
            };
            if concurrency == 0 {
                bail!(usage("--concurrency must be at least 1"));
            }
            let baseline_raw = matches!(baseline, Some(Baseline::Raw));
            let deadline = match deadline {
                Some(s) => Duration::try_from_secs_f64(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| usage("--deadline must be positive seconds"))?,
                None => BenchOptions::default_deadline(budget, baseline_raw),
            };
            let options = BenchOptions {
                mode,
                concurrency,
                budget,
                payload_bytes,
                servers: servers.max(1),
                client_only,
                server_only,
                topic,
                baseline_raw,
                progress: !json && std::io::stderr().is_terminal(),
                deadline,
            };
            if server_only {
                let transport = novarpc::connect(&config).await?;
                eprintln!(
                    "serving {} ({:?} mode) on {}; ctrl-c stops",
                    options.topic,
                    mode,
                    transport.backend()
                );
                let received = bench::serve(transport.clone(), &options).await?;
                transport.cleanup().await?;
                eprintln!("received {received} messages");
                return Ok(0);
            }
            let report = bench::run(&config, &options).await?;
            if json {
                print_json(&serde_json::to_value(&report)?)?;
            } else {
                bench::print(&report, &options);
            }
            if let (Some(path), Some(recorder)) = (&metrics, recorder) {
                let text = recorder.render();
                if path.as_os_str() == "-" {
                    eprint!("{text}");
                } else {
                    std::fs::write(path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
            }
            Ok(0)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn listen(
    config: &novarpc::Config,
    topic: String,
    priorities: Vec<String>,
    pool: Option<String>,
    rpc: bool,
    server: Option<String>,
    exchange: Option<String>,
    count: Option<u64>,
    timeout: Option<f64>,
) -> Result<u8> {
    let transport = novarpc::connect(config).await?;
    let mut target = Target::new(&topic);
    target.exchange = exchange;
    let deadline = match timeout {
        Some(s) => Some(
            tokio::time::Instant::now()
                + Duration::try_from_secs_f64(s)
                    .map_err(|_| usage("--timeout must be positive seconds"))?,
        ),
        None => None,
    };
    let mut seen = 0u64;
    // A private pool gets a copy of every notification; it is removed on exit.
    let pools = transport.capabilities().notification_pools;
    let private_pool = (!rpc && pool.is_none() && pools)
        .then(|| format!("novarpc-listen-{}", uuid::Uuid::new_v4().simple()));
    if !rpc && !pools {
        eprintln!(
            "note: {} has no notification pools: listening on the shared queues, taking turns with other listeners",
            transport.backend()
        );
    }
    let outcome = async {
        if rpc {
            target.server = server;
            let mut tap = transport.tap(&target).await?;
            eprintln!("tapping requests to {target} on {}", transport.backend());
            loop {
                let next = tokio::select! {
                    next = tap.next() => next,
                    _ = sleep_until(deadline) => break,
                    _ = tokio::signal::ctrl_c() => break,
                };
                let Some(delivery) = next else { break };
                let line = match novarpc::driver::envelope::decode_request(&delivery.body) {
                    Ok(request) => json!({
                        "topic": topic,
                        "method": request.method(),
                        "args": serde_json::from_str::<Value>(request.args()).unwrap_or(Value::Null),
                        "namespace": request.namespace(),
                        "version": request.version(),
                        "context": request.context(),
                        "call": request.msg_id().is_some(),
                        "msg_id": request.msg_id(),
                    }),
                    Err(error) => json!({"topic": topic, "malformed": error.to_string()}),
                };
                delivery.ack().await;
                emit(&line)?;
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
            tap.stop().await?;
        } else {
            let priorities = if priorities.is_empty() {
                Priority::ALL.to_vec()
            } else {
                priorities
                    .iter()
                    .map(|p| p.parse::<Priority>().map_err(|e| usage(e.to_string())))
                    .collect::<Result<Vec<_>>>()?
            };
            let pool_name = pool.clone().or_else(|| private_pool.clone());
            let mut listener =
                novarpc::NotificationListener::start(&transport, std::slice::from_ref(&target), &priorities, pool_name.as_deref()).await?;
            eprintln!("listening to {topic}.{{{}}} on {}", priorities.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","), transport.backend());
            loop {
                let next = tokio::select! {
                    next = listener.next() => next,
                    _ = sleep_until(deadline) => break,
                    _ = tokio::signal::ctrl_c() => break,
                };
                let Some(n) = next else { break };
                emit(&json!({
                    "priority": n.priority.to_string(),
                    "event_type": n.event_type,
                    "publisher_id": n.publisher_id,
                    "payload": n.payload,
                    "timestamp": n.timestamp,
                    "message_id": n.message_id,
                    "context": n.context,
                }))?;
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
            listener.stop().await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(pool) = &private_pool {
        let _ = transport.delete_target(&Target::new(pool)).await;
    }
    transport.cleanup().await?;
    outcome?;
    match count {
        Some(n) if seen < n => Err(anyhow::Error::new(Error::Timeout {
            method: "listen".into(),
            topic,
            timeout: Duration::from_secs_f64(timeout.unwrap_or_default()),
        })),
        _ => Ok(0),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `call --stream`: one JSON line per element, flushed as each arrives (the
/// timeout bounds the wait for each, as in oslo's multicall).
async fn print_stream(
    client: &RpcClient,
    context: &Context,
    method: &str,
    args: &Value,
) -> Result<()> {
    let mut replies = client.multicall::<Value, _>(context, method, args).await?;
    while let Some(element) = replies.next().await {
        emit(&element?)?;
    }
    Ok(())
}

fn emit(line: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, line)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn check_config(config: &novarpc::Config) -> Result<u8> {
    let registry = novarpc::Registry::builtin();
    let driver = registry.validate(config)?;
    let common = config.common();
    let chosen_by = if common.rpc_backend.is_some() {
        "rpc_backend"
    } else if common.transport_url.is_some() {
        "transport_url scheme"
    } else {
        "default"
    };
    if chosen_by == "default" {
        // Easy to miss: a file with a typo'd or missing [DEFAULT] table
        // silently gives an in-process transport that reaches nobody.
        eprintln!(
            "warning: {} names no rpc_backend or transport_url; novarpc falls back to `{}`, which serves this process only",
            config.origin(),
            driver.name
        );
    }
    let caps = (driver.capabilities)(config)?;
    let mut capabilities = Vec::new();
    for (on, name) in [
        (caps.call, "call"),
        (caps.multicall, "multicall"),
        (caps.fanout, "fanout"),
        (caps.fanout_to_server, "fanout-to-server"),
        (caps.notifications, "notifications"),
        (caps.notification_pools, "notification-pools"),
        (caps.publisher_confirms, "publisher-confirms"),
        (caps.cross_process, "cross-process"),
        (caps.taps, "taps"),
        (caps.serve, "serve"),
    ] {
        if on {
            capabilities.push(name);
        }
    }
    println!("# {}: valid", config.origin());
    println!(
        "# backend `{}` (chosen by {chosen_by}); can: {}",
        driver.name,
        capabilities.join(", ")
    );
    println!("[DEFAULT]");
    println!("rpc_backend = {:?}", driver.name);
    if let Some(url) = &common.transport_url {
        // TransportUrl's Display redacts passwords.
        println!("transport_url = \"{url}\"");
    }
    println!("control_exchange = {:?}", common.control_exchange);
    println!(
        "rpc_response_timeout = {}",
        common.rpc_response_timeout.as_secs_f64()
    );
    println!("send_timeout = {}", common.send_timeout.as_secs_f64());
    println!(
        "executor_thread_pool_size = {}",
        common.executor_thread_pool_size
    );
    println!("broker_cache_size = {}", common.broker_cache_size);
    println!(
        "broker_idle_timeout = {}",
        common.broker_idle_timeout.as_secs_f64()
    );
    println!();
    println!("[{}]", driver.config_section);
    let resolved = (driver.resolved_options)(config)?;
    print!("{resolved}");
    for entry in config.brokers() {
        let broker_driver = registry.validate_broker(config, entry)?;
        let scoped = config.for_broker(&entry.name)?;
        println!();
        println!("[brokers.{}]", entry.name);
        // TransportUrl's Display redacts passwords.
        println!("transport_url = \"{}\"", entry.transport_url);
        println!("rpc_backend = {:?}", broker_driver.name);
        let options = (broker_driver.resolved_options)(&scoped)?;
        // Only what differs from the top-level table of the same driver.
        let differing = if broker_driver.name == driver.name {
            toml_differences(&resolved, &options)
        } else {
            options
        };
        if !differing.trim().is_empty() {
            println!();
            println!("[brokers.{}.{}]", entry.name, broker_driver.config_section);
            print!("{differing}");
        }
    }
    Ok(0)
}

/// The keys of `table` (TOML text) whose values differ from `base`'s, as TOML.
fn toml_differences(base: &str, table: &str) -> String {
    let (Ok(base), Ok(table)) = (
        toml::from_str::<toml::Table>(base),
        toml::from_str::<toml::Table>(table),
    ) else {
        return table.to_owned();
    };
    let differing: toml::Table = table
        .into_iter()
        .filter(|(k, v)| base.get(k) != Some(v))
        .collect();
    toml::to_string(&differing).unwrap_or_default()
}

async fn ping(config: &novarpc::Config, timeout: f64) -> Result<u8> {
    let timeout = Duration::try_from_secs_f64(timeout)
        .map_err(|_| usage("--timeout must be positive seconds"))?;
    let started = Instant::now();
    let backend = novarpc::Registry::builtin().resolve(config)?.name;
    let transport = tokio::time::timeout(timeout, novarpc::connect(config))
        .await
        .map_err(|_| {
            Error::transport_of_kind(
                backend,
                ErrorKind::Unreachable,
                format!("no connection to the broker within {timeout:?}"),
            )
        })??;
    let connected = started.elapsed();
    // Where shared queues cannot be removed, every probe shares one topic
    // instead of leaving a queue behind each time.
    let target = if transport.capabilities().removes_targets {
        Target::new(format!("novarpc_ping_{}", uuid::Uuid::new_v4().simple())).server("ping")
    } else {
        Target::new("novarpc_ping").server("ping")
    };
    let server = RpcServer::builder(transport.clone(), target.clone())
        .endpoint(Endpoint::new().method("ping", |_ctx, _: Value| async move {
            Ok::<_, EndpointError>("pong")
        }))
        .start()
        .await?;
    let round_trip = Instant::now();
    let result = RpcClient::new(transport.clone(), target.clone())
        .timeout(timeout)
        .call::<String, _>(&Context::new(), "ping", &json!({}))
        .await;
    let round_trip = round_trip.elapsed();
    server.stop().await?;
    let _ = transport.delete_target(&target).await;
    let backend = transport.backend();
    transport.cleanup().await?;
    result?;
    println!(
        "ok: {backend} reachable in {:.1} ms, call round trip {:.2} ms",
        connected.as_secs_f64() * 1000.0,
        round_trip.as_secs_f64() * 1000.0
    );
    Ok(0)
}
