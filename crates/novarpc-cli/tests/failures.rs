//! The `novarpc` command when the broker says no: every permanent failure
//! (wrong password, unknown virtual host, untrusted certificate, a SASL
//! mechanism the broker does not offer) and an unreachable broker end in exit
//! code 4 with one line naming the cause, within 2 s, on both AMQP backends;
//! and nothing printed at `RUST_LOG=trace` ever holds the password.
//!
//! Needs the machine's RabbitMQ with its TLS listener and AMQP 1.0 plugin
//! (`./scripts/test` sets them up); the SASL case also needs the Proton
//! example broker (`NOVARPC_PROTON_URL`, started by `./scripts/test`).
//! Another broker: `NOVARPC_TEST_RABBIT_URL` and `NOVARPC_TEST_AMQP1_URL`
//! (their host and port are used), `NOVARPC_TEST_TLS_PORT` (default 5671)
//! and `NOVARPC_TEST_RABBITMQCTL`, as for the conformance suite.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use novarpc_conformance::backends::{amqp1_env_options, amqp1_url, kombu_env_options, rabbit_url};
use novarpc_conformance::faults::rabbitmqctl_argv;
use novarpc_conformance::{tls_dir, unique};

/// A permanent failure must be reported within this.
const PROMPT: Duration = Duration::from_secs(2);

fn novarpc(config: &std::path::Path, args: &[&str], rust_log: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_novarpc"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOVARPC_CONFIG")
        .env_remove("RUST_LOG");
    if let Some(level) = rust_log {
        command.env("RUST_LOG", level);
    }
    command.output().expect("the novarpc binary runs")
}

fn temp_config(contents: &str) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("novarpc-failure")));
    std::fs::write(&path, contents)?;
    Ok(path)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `ping` and `call` and checks exit 4, one line naming `cause`, and
/// the time taken.
fn fails_promptly(case: &str, config: &str, cause: &[&str]) -> Result<()> {
    fails_within(case, config, cause, PROMPT)
}

fn fails_within(case: &str, config: &str, cause: &[&str], limit: Duration) -> Result<()> {
    let path = temp_config(config)?;
    for args in [
        &["ping", "--timeout", "5"][..],
        &["call", "novarpc_nobody", "ping"][..],
    ] {
        let started = Instant::now();
        let out = novarpc(&path, args, None);
        let elapsed = started.elapsed();
        let stderr = text(&out.stderr);
        println!("{case} / {}: {elapsed:?}: {}", args[0], stderr.trim_end());
        ensure!(
            out.status.code() == Some(4),
            "{case}: `{}` exited {:?}: {stderr}",
            args[0],
            out.status.code()
        );
        ensure!(
            stderr.lines().count() == 1,
            "{case}: more than one line on stderr: {stderr}"
        );
        ensure!(
            !stderr.contains('\u{1b}'),
            "{case}: colour escapes on a non-terminal: {stderr:?}"
        );
        let lower = stderr.to_lowercase();
        ensure!(
            cause.iter().any(|c| lower.contains(&c.to_lowercase())),
            "{case}: the cause ({cause:?}) is not named: {stderr}"
        );
        ensure!(elapsed < limit, "{case}: `{}` took {elapsed:?}", args[0]);
    }
    Ok(())
}

fn kombu_config(url: &str, extra: &str) -> String {
    format!(
        "[DEFAULT]\nrpc_backend = \"kombu\"\ntransport_url = \"{url}\"\n[kombu]\nretry_interval = 0.5\nmax_retries = 1\n{extra}"
    )
}

fn qpid_config(url: &str, extra: &str) -> String {
    format!(
        "[DEFAULT]\nrpc_backend = \"qpid\"\ntransport_url = \"{url}\"\n[qpid]\nretry_interval = 0.5\nmax_retries = 1\n{extra}"
    )
}

/// `host:port` of a transport URL (no credentials, no virtual host).
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// The broker under test's AMQP 0-9-1 address.
fn kombu_at() -> String {
    authority(&rabbit_url())
}

/// The broker under test's AMQP 1.0 address.
fn qpid_at() -> String {
    authority(&amqp1_url())
}

/// Its TLS listener, at `localhost` (the certificate's name).
fn tls_at() -> String {
    let port = std::env::var("NOVARPC_TEST_TLS_PORT").unwrap_or_else(|_| "5671".into());
    format!("localhost:{port}")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

#[test]
#[ignore = "needs RabbitMQ with TLS and AMQP 1.0: run ./scripts/test"]
fn kombu_failures_exit_4_naming_the_cause() -> Result<()> {
    let ca = tls_dir()?;
    let port = closed_port();
    fails_promptly(
        "kombu wrong password",
        &kombu_config(
            &format!("rabbit://guest:not-the-password@{}/", kombu_at()),
            "",
        ),
        &["authentication failed"],
    )?;
    fails_promptly(
        "kombu closed port",
        &kombu_config(&format!("rabbit://guest:guest@127.0.0.1:{port}/"), ""),
        &["unreachable"],
    )?;
    fails_promptly(
        "kombu unknown vhost",
        &kombu_config(
            &format!("rabbit://guest:guest@{}/no_such_vhost", kombu_at()),
            "",
        ),
        &["access refused"],
    )?;
    // RabbitMQ offers AMQPLAIN and PLAIN, not EXTERNAL (without its
    // rabbitmq_auth_mechanism_ssl plugin).
    fails_promptly(
        "kombu SASL mechanism not offered",
        &kombu_config(
            &format!("rabbit://guest:guest@{}/", kombu_at()),
            "login_method = \"EXTERNAL\"\n",
        ),
        &["does not offer the SASL mechanism EXTERNAL; it offers"],
    )?;
    // The broker's CA is not trusted: the system roots are used.
    fails_promptly(
        "kombu untrusted certificate",
        &kombu_config(
            &format!("rabbit://guest:guest@{}/", tls_at()),
            "ssl = true\n",
        ),
        &["TLS"],
    )?;
    drop(ca);
    Ok(())
}

#[test]
#[ignore = "needs RabbitMQ with TLS and AMQP 1.0: run ./scripts/test"]
fn qpid_failures_exit_4_naming_the_cause() -> Result<()> {
    let _ = tls_dir()?;
    let port = closed_port();
    // RabbitMQ 3.10's AMQP 1.0 plugin answers a failed SASL PLAIN only after
    // 3 s (python-qpid-proton waits as long): the broker sets this bound.
    fails_within(
        "qpid wrong password",
        &qpid_config(&format!("amqp://guest:not-the-password@{}/", qpid_at()), ""),
        &["authentication failed"],
        Duration::from_secs(4),
    )?;
    fails_promptly(
        "qpid closed port",
        &qpid_config(&format!("amqp://guest:guest@127.0.0.1:{port}/"), ""),
        &["unreachable"],
    )?;
    fails_promptly(
        "qpid untrusted certificate",
        &qpid_config(&format!("amqps://guest:guest@{}/", tls_at()), ""),
        &["TLS"],
    )?;
    // The Proton example broker offers ANONYMOUS only.
    let proton = std::env::var("NOVARPC_PROTON_URL").context(
        "NOVARPC_PROTON_URL is not set: start the Proton example broker with \
         `scripts/brokers-extra.sh start` (./scripts/test does it)",
    )?;
    let proton = proton.replacen("amqp://", "amqp://guest:guest@", 1);
    fails_promptly(
        "qpid SASL mechanism not offered",
        &qpid_config(&proton, "sasl_mechanism = \"PLAIN\"\n"),
        &["offers SASL mechanisms: ANONYMOUS"],
    )?;
    Ok(())
}

/// On its own, so that a broker that cannot name an unknown virtual host
/// can skip it: RabbitMQ 4.0.5 closes such an AMQP 1.0 connection after 3 s
/// without a close frame (its log says why; the client sees a broken pipe),
/// so CI runs this case on RabbitMQ 3.10 only.
#[test]
#[ignore = "needs RabbitMQ with AMQP 1.0: run ./scripts/test"]
fn qpid_unknown_vhost_exits_4_naming_the_cause() -> Result<()> {
    fails_promptly(
        "qpid unknown vhost",
        &qpid_config(
            &format!("amqp://guest:guest@{}/no_such_vhost", qpid_at()),
            "",
        ),
        &["access refused", "authentication failed"],
    )
}

/// Everything printed at `RUST_LOG=trace` by a succeeding and a failing
/// `ping`, scanned for the password (as text and as the bytes lapin dumps).
/// `driver_options`: what the broker under test needs (RabbitMQ 4's quorum
/// reply queues, an AMQP 1.0 addressing profile).
fn password_never_printed(
    backend: &str,
    scheme: &str,
    at: &str,
    driver_options: &str,
) -> Result<()> {
    let user = unique("trace_user");
    let password = format!("Pw{}", unique("x").replace('_', ""));
    rabbitmqctl(&["add_user", &user, &password])?;
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"])?;
    let result = (|| {
        let config = |password: &str| {
            format!(
                "[DEFAULT]\nrpc_backend = \"{backend}\"\ntransport_url = \"{scheme}://{user}:{password}@{at}/\"\n[{backend}]\nmax_retries = 0\n{driver_options}"
            )
        };
        let wrong = format!("{password}Wrong");
        for (case, pw, code) in [
            ("succeeding", password.as_str(), 0),
            ("failing", wrong.as_str(), 4),
        ] {
            let path = temp_config(&config(pw))?;
            let out = novarpc(&path, &["ping", "--timeout", "5"], Some("trace"));
            let all = text(&out.stdout) + &text(&out.stderr);
            ensure!(
                out.status.code() == Some(code),
                "{backend} {case} ping exited {:?}: {}",
                out.status.code(),
                all.lines().last().unwrap_or_default()
            );
            ensure!(
                code != 0 || all.lines().count() > 3,
                "{backend} {case}: RUST_LOG=trace printed almost nothing: {all}"
            );
            let as_bytes = pw
                .bytes()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            ensure!(
                !all.contains(pw) && !all.contains(&as_bytes),
                "{backend} {case}: the password was printed at trace level"
            );
            println!(
                "{backend} {case}: {} lines at trace, no password",
                all.lines().count()
            );
        }
        Ok(())
    })();
    rabbitmqctl(&["delete_user", &user])?;
    result
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let argv = rabbitmqctl_argv();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .arg("-q")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running rabbitmqctl")?;
    ensure!(status.success(), "rabbitmqctl {args:?} failed");
    Ok(())
}

#[test]
#[ignore = "needs RabbitMQ with AMQP 1.0: run ./scripts/test"]
fn kombu_trace_never_prints_the_password() -> Result<()> {
    password_never_printed("kombu", "rabbit", &kombu_at(), &kombu_env_options())
}

#[test]
#[ignore = "needs RabbitMQ with AMQP 1.0: run ./scripts/test"]
fn qpid_trace_never_prints_the_password() -> Result<()> {
    password_never_printed("qpid", "amqp", &qpid_at(), &amqp1_env_options())
}
