//! Running the Python oslo.messaging peers in `tests/interop/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The venv's python: `NOVARPC_PYTHON`, else the venv `scripts/test` creates.
pub fn python() -> Result<PathBuf> {
    let path = match std::env::var_os("NOVARPC_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            PathBuf::from(home).join(".cache/novarpc/venv-oslo-18.3.1/bin/python")
        }
    };
    if !path.exists() {
        bail!(
            "no Python with oslo.messaging at {}: run ./scripts/test (it creates the venv), \
             or set NOVARPC_PYTHON to a python that can `import oslo_messaging`",
            path.display()
        );
    }
    Ok(path)
}

pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// The oslo URL of the test broker.
pub fn oslo_url() -> String {
    crate::backends::rabbit_url()
}

/// `python SCRIPT --url … --exchange … --topic … --server …`: a peer in
/// `tests/interop/` pointed at the test broker and a target.
pub fn oslo_peer(script_name: &str, exchange: &str, topic: &str, server: &str) -> Result<Command> {
    let mut command = Command::new(python()?);
    command.arg(script(script_name)).args([
        "--url",
        &oslo_url(),
        "--exchange",
        exchange,
        "--topic",
        topic,
        "--server",
        server,
    ]);
    // oslo's queue manager takes an external (file) lock: it needs a place.
    command.env("OSLO_LOCK_PATH", std::env::temp_dir());
    Ok(command)
}

/// An `oslo_server.py` process.
pub struct PythonServer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PythonServer {
    /// Starts a server and waits until it serves.
    pub async fn start(exchange: &str, topic: &str, server: &str) -> Result<Self> {
        PythonServer::start_with(exchange, topic, server, &[]).await
    }

    /// Like [`PythonServer::start`], with `[oslo_messaging_rabbit]` options
    /// (`("rabbit_quorum_queue", "true")`, ...).
    pub async fn start_with(
        exchange: &str,
        topic: &str,
        server: &str,
        rabbit_options: &[(&str, &str)],
    ) -> Result<Self> {
        let options: Vec<String> = rabbit_options
            .iter()
            .flat_map(|(k, v)| ["--rabbit-option".to_owned(), format!("{k}={v}")])
            .collect();
        let mut command = oslo_peer("oslo_server.py", exchange, topic, server)?;
        if rabbit_options
            .iter()
            .any(|(k, _)| *k == "use_queue_manager")
        {
            // oslo's queue manager reads its process group leader's /proc
            // entry and fails when the leader has exited (as under CI's
            // shells): the server leads a group of its own.
            command.process_group(0);
        }
        let mut child = command
            .args(&options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting oslo_server.py")?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let mut server = PythonServer {
            child,
            stdin,
            lines,
        };
        let ready = server.next_event(Duration::from_secs(30)).await?;
        anyhow::ensure!(ready["event"] == "ready", "unexpected first line {ready}");
        Ok(server)
    }

    /// The next JSON line the server prints.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Value> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("the Python server printed nothing in time")??
            .context("the Python server exited")?;
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    }

    /// Closes stdin (the server's cue to stop) and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "oslo_server.py exited with {status}");
        Ok(())
    }
}

/// Runs `oslo_client.py` against a server and returns its JSON report.
pub async fn run_client(exchange: &str, topic: &str, server: &str) -> Result<Value> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        oslo_peer("oslo_client.py", exchange, topic, server)?
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .context("oslo_client.py took too long")??;
    anyhow::ensure!(
        output.status.success(),
        "oslo_client.py exited with {}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout)?;
    serde_json::from_str(stdout.trim()).with_context(|| format!("not JSON: {stdout}"))
}
