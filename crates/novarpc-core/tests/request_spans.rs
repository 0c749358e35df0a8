//! Every request runs in an `rpc.server` span naming its method, topic,
//! server, namespace, version, msg_id and outcome; a failed call is logged
//! once, at warn; clients' requests run in `rpc.client` spans.

use std::io::Write;
use std::sync::{Arc, Mutex};

use novarpc_core::memory::MemoryDriver;
use novarpc_core::{
    CommonOptions, Context, Endpoint, RpcClient, RpcServer, Target, Transport, Version,
};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

mod common;

#[test]
fn requests_run_in_spans_and_failed_calls_warn_once() {
    let log = Capture::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("novarpc_core=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = common::runtime();
    runtime.block_on(async {
        let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
        let endpoint =
            common::add_and_fail(Endpoint::new().namespace("ns").version(Version::new(1, 2)));
        let server = RpcServer::builder(transport.clone(), Target::new("spans").server("h1"))
            .endpoint(endpoint)
            .start()
            .await
            .unwrap();
        let client = RpcClient::new(transport, Target::new("spans"))
            .namespace("ns")
            .version(Version::new(1, 1));
        let sum = client
            .call::<i64, _>(&Context::new(), "add", &serde_json::json!({"a": 2, "b": 3}))
            .await
            .unwrap();
        assert_eq!(sum, 5);
        client
            .call::<(), _>(&Context::new(), "fail", &serde_json::json!({}))
            .await
            .unwrap_err();
        server.stop().await.unwrap();
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let server_lines: Vec<&str> = text.lines().filter(|l| l.contains("rpc.server{")).collect();
    assert!(
        server_lines.iter().any(|l| l.contains("method=\"add\"")
            && l.contains("topic=spans")
            && l.contains("server=\"h1\"")
            && l.contains("namespace=\"ns\"")
            && l.contains("version=\"1.1\"")
            && l.contains("msg_id=")
            && l.contains("outcome=\"ok\"")
            && l.contains("request done")),
        "{text}"
    );
    // The untyped client's side of the same call.
    assert!(
        text.lines().any(|l| l.contains("rpc.client{")
            && l.contains("kind=\"call\"")
            && l.contains("method=\"add\"")
            && l.contains("version=1.1")
            && l.contains("outcome=\"ok\"")
            && l.contains("request done")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("rpc.client{")
            && l.contains("method=\"fail\"")
            && l.contains("outcome=\"remote\"")),
        "{text}"
    );
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("method=\"fail\"")
            && warnings[0].contains("outcome=\"Boom\"")
            && warnings[0].contains("call failed"),
        "{text}"
    );
}
