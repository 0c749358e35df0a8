//! Two brokers ("cells") per backend, for the suite's cells tests
//! (`Backend::cells`): cell 0 is the backend's broker, cell 1 another one.
//!
//! - memory: two named in-process brokers (`memory://NAME`);
//! - kombu: the test broker's URL and a virtual host of the same RabbitMQ
//!   made for each test with `rabbitmqctl` (`novarpc_cell1_<id>`, the URL's
//!   user granted everything on it) and deleted with everything in it when
//!   the test drops its [`Cells`];
//! - qpid: the same over RabbitMQ's AMQP 1.0 plugin, which picks the virtual
//!   host from the open frame's hostname (`vhost:NAME`, sent by the driver).
//!   Other AMQP 1.0 brokers (`NOVARPC_TEST_AMQP1_ADDRESSING` other than
//!   `rabbitmq3`) skip the cells tests.
//!
//! On a broker other than the local one (`NOVARPC_TEST_RABBIT_URL` or
//! `NOVARPC_TEST_AMQP1_URL` elsewhere), the virtual hosts are made with
//! `NOVARPC_TEST_RABBITMQCTL` (split on spaces); without it the cells tests
//! are skipped, with the reason printed.
//!
//! A broker that is down is a URL of the same kind to a closed local port,
//! or to a local peer that never answers; for memory (nothing in-process is
//! ever down) a kombu URL, which the memory test binary can connect with.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::backends::{amqp1_env_options, amqp1_url, kombu_env_options, rabbit_url};
use crate::Cells;

/// `send_timeout` of the cells' configurations: the bound of the dead-broker
/// checks.
const SEND_TIMEOUT_SECS: u32 = 5;

/// How the cells tests reach `rabbitmqctl`: `NOVARPC_TEST_RABBITMQCTL`
/// (split on spaces, e.g. `bash scripts/brokers-extra.sh ctl`, as the fault
/// harness reads it), by default `rabbitmqctl` on the `PATH`.
fn rabbitmqctl() -> Vec<String> {
    match std::env::var("NOVARPC_TEST_RABBITMQCTL") {
        Ok(words) if !words.trim().is_empty() => {
            words.split_whitespace().map(str::to_owned).collect()
        }
        _ => vec!["rabbitmqctl".to_owned()],
    }
}

/// Why the cells tests cannot make virtual hosts on the broker at `url`
/// (read from `url_var`), if they cannot: a broker other than the local
/// default one, with no `NOVARPC_TEST_RABBITMQCTL` saying which
/// `rabbitmqctl` manages it.
fn unmanaged_broker(url_var: &str) -> Option<String> {
    let configured = std::env::var(url_var).ok()?;
    if std::env::var("NOVARPC_TEST_RABBITMQCTL").is_ok() {
        return None;
    }
    let url: novarpc::TransportUrl = configured.parse().ok()?;
    let local = url.hosts.iter().all(|h| {
        matches!(
            h.hostname.as_str(),
            "127.0.0.1" | "localhost" | "::1" | "[::1]"
        ) && h.port.unwrap_or(5672) == 5672
    });
    (!local).then(|| {
        format!(
            "cells: skipped, {url_var} points at {url}, and without NOVARPC_TEST_RABBITMQCTL \
             the tests cannot tell which rabbitmqctl makes virtual hosts on it"
        )
    })
}

/// A RabbitMQ virtual host made for one test: created (idempotently) with
/// `rabbitmqctl`, `user` granted configure/write/read on it, and deleted
/// with its queues and exchanges on drop.
pub struct Vhost {
    name: String,
}

impl Vhost {
    /// Creates `name` on the local RabbitMQ and grants `user` on it.
    pub async fn create(name: &str, user: &str) -> anyhow::Result<Vhost> {
        // Deleted on drop from here on, even if granting fails.
        let vhost = Vhost {
            name: name.to_owned(),
        };
        run_rabbitmqctl(&["add_vhost", name]).await?;
        run_rabbitmqctl(&["set_permissions", "-p", name, user, ".*", ".*", ".*"]).await?;
        Ok(vhost)
    }

    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let words = rabbitmqctl();
        let deleted = std::process::Command::new(&words[0])
            .args(&words[1..])
            .args(["delete_vhost", &self.name])
            .output();
        match deleted {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "could not delete the test virtual host {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("could not delete the test virtual host {}: {e}", self.name),
        }
    }
}

async fn run_rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let words = rabbitmqctl();
    let program = words.join(" ");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&words[0])
            .args(&words[1..])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("`{program} {}` took over 60 s", args.join(" ")))?
    .with_context(|| {
        format!(
            "cannot run `{program}`: the cells tests make RabbitMQ virtual hosts with it \
             (set NOVARPC_TEST_RABBITMQCTL, or run them where RabbitMQ runs)"
        )
    })?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// `url` with its virtual host (path) replaced by `vhost`, query kept.
pub fn with_vhost(url: &str, vhost: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").with_context(|| {
        format!(
            "not a transport URL: {}",
            novarpc::config::redact_url_text(url)
        )
    })?;
    let (netlocs, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    Ok(format!("{scheme}://{netlocs}/{vhost}{query}"))
}

/// `url` pointed at `addr`, its credentials, virtual host and query kept.
fn with_address(url: &str, addr: SocketAddr) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("rabbit://guest:guest@{addr}/");
    };
    let (netlocs, tail) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => rest.split_at(i),
        Some(i) => (&rest[..i], "/"),
        None => (rest, "/"),
    };
    let first = netlocs.split(',').next().unwrap_or("");
    let userinfo = first.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}{tail}", userinfo.unwrap_or_default())
}

/// The user name of `url`'s first host (RabbitMQ's default `guest`).
fn user_of(url: &str) -> anyhow::Result<String> {
    let parsed: novarpc::TransportUrl = url.parse()?;
    Ok(parsed
        .hosts
        .first()
        .and_then(|h| h.username.clone())
        .unwrap_or_else(|| "guest".to_owned()))
}

fn config(text: String, origin: &str) -> anyhow::Result<novarpc::Config> {
    let config = novarpc::Config::from_toml_str(&text, origin)?;
    novarpc::validate(&config)?;
    Ok(config)
}

/// Two in-process brokers.
pub fn memory() -> anyhow::Result<Option<Cells>> {
    let (cell0, cell1) = (crate::unique("cell0"), crate::unique("cell1"));
    let cell1_url = format!("memory://{cell1}");
    let common = format!(
        "rpc_response_timeout = 10\nsend_timeout = {SEND_TIMEOUT_SECS}\n\n\
         # For the dead-broker URLs (kombu: nothing in-process is ever down).\n\
         [kombu]\nretry_interval = 0.2\nretry_interval_max = 1\nmax_retries = 2\n"
    );
    Ok(Some(Cells {
        cell0: config(
            format!(
                "[DEFAULT]\ntransport_url = \"memory://{cell0}\"\n{common}\n\
                 [brokers.cell1]\ntransport_url = \"{cell1_url}\"\n"
            ),
            "<cells memory cell0>",
        )?,
        cell1_name: "cell1".to_owned(),
        cell1: config(
            format!("[DEFAULT]\ntransport_url = \"{cell1_url}\"\n{common}"),
            "<cells memory cell1>",
        )?,
        cell1_url,
        url_at: Box::new(|addr| format!("rabbit://guest:guest@{addr}/")),
        guard: None,
    }))
}

/// The test RabbitMQ and a virtual host of it made for the test.
pub async fn kombu() -> anyhow::Result<Option<Cells>> {
    if let Some(reason) = unmanaged_broker("NOVARPC_TEST_RABBIT_URL") {
        eprintln!("{reason}");
        return Ok(None);
    }
    // A broker given by URL gets the driver of its scheme: `rabbit`, so that
    // an `amqp://` test URL (RabbitMQ 4's) stays on the kombu driver.
    let url = match rabbit_url().split_once("://") {
        Some(("amqp", rest)) => format!("rabbit://{rest}"),
        _ => rabbit_url(),
    };
    let vhost = Vhost::create(&crate::unique("novarpc_cell1"), &user_of(&url)?).await?;
    let cell1_url = with_vhost(&url, vhost.name())?;
    let common = format!(
        "rpc_backend = \"kombu\"\nrpc_response_timeout = 10\nsend_timeout = {SEND_TIMEOUT_SECS}\n\n\
         [kombu]\n{}retry_interval = 0.2\nretry_interval_max = 1\nmax_retries = 2\n",
        kombu_env_options()
    );
    let scheme_url = url.clone();
    Ok(Some(Cells {
        cell0: config(
            format!(
                "[DEFAULT]\ntransport_url = \"{url}\"\n{common}\n\
                 [brokers.cell1]\ntransport_url = \"{cell1_url}\"\nrpc_backend = \"kombu\"\n"
            ),
            "<cells kombu cell0>",
        )?,
        cell1_name: "cell1".to_owned(),
        cell1: config(
            format!("[DEFAULT]\ntransport_url = \"{cell1_url}\"\n{common}"),
            "<cells kombu cell1>",
        )?,
        cell1_url,
        url_at: Box::new(move |addr| with_address(&scheme_url, addr)),
        guard: Some(Box::new(vhost)),
    }))
}

/// RabbitMQ's AMQP 1.0 plugin and a virtual host of it made for the test.
pub async fn qpid() -> anyhow::Result<Option<Cells>> {
    let profile = std::env::var("NOVARPC_TEST_AMQP1_ADDRESSING").unwrap_or_default();
    if !profile.is_empty() && profile != "rabbitmq3" {
        eprintln!(
            "cells: the AMQP 1.0 test broker uses the `{profile}` profile; virtual hosts \
             (two cells on one broker) are tested on RabbitMQ 3's plugin only"
        );
        return Ok(None);
    }
    if let Some(reason) = unmanaged_broker("NOVARPC_TEST_AMQP1_URL") {
        eprintln!("{reason}");
        return Ok(None);
    }
    let url = amqp1_url();
    let vhost = Vhost::create(&crate::unique("novarpc_cell1"), &user_of(&url)?).await?;
    let cell1_url = with_vhost(&url, vhost.name())?;
    let common = format!(
        "rpc_backend = \"qpid\"\nrpc_response_timeout = 10\nsend_timeout = {SEND_TIMEOUT_SECS}\n\n\
         [qpid]\n{}retry_interval = 0.2\nretry_interval_max = 1\nmax_retries = 2\n",
        amqp1_env_options()
    );
    let scheme_url = url.clone();
    Ok(Some(Cells {
        cell0: config(
            format!(
                "[DEFAULT]\ntransport_url = \"{url}\"\n{common}\n\
                 [brokers.cell1]\ntransport_url = \"{cell1_url}\"\nrpc_backend = \"qpid\"\n"
            ),
            "<cells qpid cell0>",
        )?,
        cell1_name: "cell1".to_owned(),
        cell1: config(
            format!("[DEFAULT]\ntransport_url = \"{cell1_url}\"\n{common}"),
            "<cells qpid cell1>",
        )?,
        cell1_url,
        url_at: Box::new(move |addr| with_address(&scheme_url, addr)),
        guard: Some(Box::new(vhost)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_vhost_or_an_address() {
        assert_eq!(
            with_vhost("rabbit://u:p@h:5672/", "c1").unwrap(),
            "rabbit://u:p@h:5672/c1"
        );
        assert_eq!(
            with_vhost("amqp://u:p@h?x=1", "c1").unwrap(),
            "amqp://u:p@h/c1?x=1"
        );
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            with_address("rabbit://u:p@h:5672,u:p@h2/vh", addr),
            "rabbit://u:p@127.0.0.1:9/vh"
        );
        assert_eq!(with_address("amqp://h", addr), "amqp://127.0.0.1:9/");
    }
}
