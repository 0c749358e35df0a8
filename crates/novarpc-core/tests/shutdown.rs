//! A server stops on SIGTERM and lets the request in flight finish. Its own
//! test binary: the signal goes to this process.

use std::time::Duration;

use novarpc_core::memory::MemoryDriver;
use novarpc_core::{
    CommonOptions, Context, Endpoint, EndpointError, RpcClient, RpcServer, Target, Transport,
};

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_after_the_request_in_flight() {
    let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
    let endpoint =
        Endpoint::new().method("slow", |_ctx: Context, _args: serde_json::Value| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, EndpointError>("finished")
        });
    let server = RpcServer::builder(transport.clone(), Target::new("life").server("h1"))
        .endpoint(endpoint)
        .grace_period(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let serving = tokio::spawn(server.serve_until_signal());
    let client =
        RpcClient::new(transport.clone(), Target::new("life")).timeout(Duration::from_secs(5));
    let call = tokio::spawn(async move {
        client
            .call::<String, _>(&Context::new(), "slow", &serde_json::json!({}))
            .await
    });
    // The handler is running and the signal handler installed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap(), "finished");
    // Stopped: a new call finds no server.
    let late = RpcClient::new(transport, Target::new("life"))
        .timeout(Duration::from_millis(200))
        .call::<String, _>(&Context::new(), "slow", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(late.kind(), novarpc_core::ErrorKind::Timeout);
}

#[tokio::test]
async fn serve_until_stops_when_the_future_completes() {
    let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
    let server = RpcServer::builder(transport, Target::new("life2").server("h1"))
        .endpoint(Endpoint::new())
        .start()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<&str>();
    let serving = tokio::spawn(server.serve_until(rx));
    tx.send("test over").unwrap();
    serving.await.unwrap().unwrap();
}
