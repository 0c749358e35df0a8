//! The behaviour every backend must show, by family. Each test takes a fresh
//! transport and unique exchange/topic names, asserts error kinds (never
//! text), and gates what a backend may lack on its capabilities (never on its
//! name).

mod calls;
mod casts;
mod cells;
mod failures;
mod fanout;
mod notifications;
mod tools;

pub use calls::*;
pub use casts::*;
pub use cells::*;
pub use failures::*;
pub use fanout::*;
pub use notifications::*;
pub use tools::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use futures::StreamExt;
use novarpc::{
    Context, Endpoint, EndpointError, Error, ErrorKind, NotificationListener, Notifier, Priority,
    RpcClient, RpcServer, Target, Transport, Version,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

pub use crate::args::{MessageArgs, ValueArgs};
use crate::{unique, Backend};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct CountArgs {
    n: u64,
}

#[derive(Deserialize)]
struct NoArgs {}

type Record = (String, Value);

/// The endpoint most tests serve: `server` names the host it runs as.
fn standard_endpoint(server: &str, records: mpsc::UnboundedSender<Record>) -> Endpoint {
    let name = server.to_owned();
    let whoami = server.to_owned();
    Endpoint::new()
        .method("echo", |_ctx, args: ValueArgs| async move {
            Ok::<_, EndpointError>(args.value)
        })
        .method("add", |_ctx, args: AddArgs| async move {
            Ok::<_, EndpointError>(args.a + args.b)
        })
        .method("record", move |_ctx, args: ValueArgs| {
            let records = records.clone();
            let name = name.clone();
            async move {
                let _ = records.send((name, args.value));
                Ok::<_, EndpointError>(())
            }
        })
        .method("whoami", move |_ctx, _: NoArgs| {
            let whoami = whoami.clone();
            async move { Ok::<_, EndpointError>(whoami) }
        })
        .method("context", |ctx: Context, _: NoArgs| async move {
            Ok::<_, EndpointError>(ctx)
        })
        .method("fail", |_ctx, args: MessageArgs| async move {
            Err::<(), _>(
                EndpointError::new("ValueError", args.message)
                    .module("builtins")
                    .traceback(vec!["Traceback: in fail\n".into()]),
            )
        })
        .method("io_fail", |_ctx, _: NoArgs| async move {
            Err::<(), _>(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "disk gone",
            ))
        })
        .method("panic", |_ctx, _: NoArgs| async move {
            if true {
                panic!("handler exploded");
            }
            Ok::<(), EndpointError>(())
        })
        .method("panic_in_result", |_ctx, _: NoArgs| async move {
            Ok::<_, EndpointError>(PanicsWhenSerialized)
        })
        .method("_private", |_ctx, _: NoArgs| async move {
            Ok::<_, EndpointError>("secret")
        })
        .stream_method("count", |_ctx, args: CountArgs| {
            futures::stream::iter((0..args.n).map(Ok::<u64, EndpointError>))
        })
        .stream_method("count_then_fail", |_ctx, args: CountArgs| {
            futures::stream::iter(
                (0..args.n)
                    .map(Ok::<u64, EndpointError>)
                    .chain(std::iter::once(Err(EndpointError::new(
                        "RuntimeError",
                        "stream broke",
                    )))),
            )
        })
}

struct Fixture<'b> {
    backend: &'b dyn Backend,
    hosts: Vec<String>,
    exchange: String,
    topic: String,
    client_transport: Transport,
    records: mpsc::UnboundedReceiver<Record>,
    records_tx: mpsc::UnboundedSender<Record>,
    servers: Vec<RpcServer>,
}

impl<'b> Fixture<'b> {
    async fn new(backend: &'b dyn Backend) -> Result<Self> {
        let (records_tx, records) = mpsc::unbounded_channel();
        Ok(Fixture {
            backend,
            hosts: Vec::new(),
            exchange: unique("ex"),
            topic: unique("topic"),
            client_transport: backend.transport().await?,
            records,
            records_tx,
            servers: Vec::new(),
        })
    }

    fn target(&self) -> Target {
        Target::new(&self.topic).exchange(&self.exchange)
    }

    fn client(&self) -> RpcClient {
        RpcClient::new(self.client_transport.clone(), self.target()).timeout(WAIT)
    }

    /// Starts a server for `host` on its own transport, serving the standard endpoint.
    async fn serve(&mut self, backend: &dyn Backend, host: &str) -> Result<()> {
        let endpoint = standard_endpoint(host, self.records_tx.clone());
        self.serve_endpoints(backend, host, vec![endpoint]).await
    }

    async fn serve_endpoints(
        &mut self,
        backend: &dyn Backend,
        host: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<()> {
        let transport = backend.transport().await?;
        self.hosts.push(host.to_owned());
        let mut builder = RpcServer::builder(transport, self.target().server(host));
        for endpoint in endpoints {
            builder = builder.endpoint(endpoint);
        }
        self.servers.push(builder.start().await?);
        Ok(())
    }

    async fn next_record(&mut self) -> Result<Record> {
        tokio::time::timeout(WAIT, self.records.recv())
            .await
            .context("timed out waiting for a cast to arrive")?
            .context("record channel closed")
    }

    /// Everything recorded within `window`.
    async fn drain_records(&mut self, window: Duration) -> Vec<Record> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(record)) = tokio::time::timeout_at(deadline, self.records.recv()).await {
            out.push(record);
        }
        out
    }

    async fn stop(self) -> Result<()> {
        for server in self.servers {
            server.stop().await?;
        }
        self.client_transport.cleanup().await?;
        let mut queues = vec![self.topic.clone()];
        queues.extend(self.hosts.iter().map(|h| format!("{}.{h}", self.topic)));
        queues.dedup();
        self.backend
            .remove_topology(&queues, std::slice::from_ref(&self.exchange))
            .await
    }
}

fn ctx() -> Context {
    Context::new()
}

/// A result whose serialization panics: the server answers with a `Panic`
/// failure and goes on serving.
struct PanicsWhenSerialized;

impl serde::Serialize for PanicsWhenSerialized {
    fn serialize<S: serde::Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        panic!("result exploded while serializing")
    }
}
