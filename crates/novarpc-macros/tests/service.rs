//! `#[novarpc::service]` and `#[derive(novarpc::RemoteError)]` on the memory
//! backend: calls, casts, streams, versions, namespaces and typed errors, as
//! they look on the wire too.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use novarpc::memory::MemoryDriver;
use novarpc::{
    CallError, CommonOptions, Context, EndpointError, Error, ErrorKind, RemoteError, RemoteFailure,
    RpcClient, RpcServer, RpcStream, Target, Transport, Version,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

#[derive(Debug, PartialEq, thiserror::Error, novarpc::RemoteError)]
#[remote(module = "nova.exception")]
enum ConductorError {
    #[error("Instance {instance_id} could not be found.")]
    InstanceNotFound { instance_id: String },
    #[error("Instance {instance_id} is {state}, cannot {action}.")]
    #[remote(class = "InstanceInvalidState")]
    InvalidState {
        instance_id: String,
        state: String,
        action: String,
    },
    #[error("No valid host was found.")]
    #[remote(module = "nova.scheduler")]
    NoValidHost,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Instance {
    id: String,
    state: String,
}

/// A conductor.
#[novarpc::service(namespace = "conductor", version = "1.3")]
trait Conductor {
    /// Looks an instance up.
    async fn get_instance(
        &self,
        ctx: &Context,
        instance_id: String,
    ) -> Result<Instance, ConductorError>;

    /// No arguments.
    #[rpc(since = "1.1")]
    async fn ping(&self, ctx: &Context) -> Result<String, EndpointError>;

    /// Optional arguments are omitted by older callers.
    #[rpc(since = "1.2")]
    async fn resize(
        &self,
        ctx: &Context,
        instance_id: String,
        flavor: Option<String>,
    ) -> Result<String, anyhow::Error>;

    /// A cast.
    #[rpc(cast)]
    async fn record(&self, ctx: &Context, event: String) -> Result<(), ConductorError>;

    /// A stream.
    #[rpc(stream, since = "1.3")]
    fn progress(&self, ctx: &Context, steps: u32) -> RpcStream<u32, ConductorError>;

    /// A std error as the error type.
    #[rpc(name = "parse")]
    async fn parse_number(
        &self,
        _ctx: &Context,
        text: String,
    ) -> Result<u32, std::num::ParseIntError>;
}

/// The casts a service took: event and user.
type Events = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[derive(Default)]
struct Service {
    events: Events,
}

impl Conductor for Service {
    async fn get_instance(
        &self,
        _ctx: &Context,
        instance_id: String,
    ) -> Result<Instance, ConductorError> {
        match instance_id.as_str() {
            "i-1" => Ok(Instance {
                id: instance_id,
                state: "active".into(),
            }),
            "i-2" => Err(ConductorError::InvalidState {
                instance_id,
                state: "building".into(),
                action: "get".into(),
            }),
            "none" => Err(ConductorError::NoValidHost),
            _ => Err(ConductorError::InstanceNotFound { instance_id }),
        }
    }

    async fn ping(&self, ctx: &Context) -> Result<String, EndpointError> {
        Ok(format!(
            "pong for {}",
            ctx.get("user").and_then(|u| u.as_str()).unwrap_or("-")
        ))
    }

    async fn resize(
        &self,
        _ctx: &Context,
        instance_id: String,
        flavor: Option<String>,
    ) -> Result<String, anyhow::Error> {
        match flavor {
            Some(flavor) => Ok(format!("{instance_id} -> {flavor}")),
            None => Err(anyhow::anyhow!("no flavor").context("resize failed")),
        }
    }

    async fn record(&self, ctx: &Context, event: String) -> Result<(), ConductorError> {
        let user = ctx.get("user").and_then(|u| u.as_str()).map(str::to_owned);
        self.events.lock().await.push((event, user));
        Ok(())
    }

    fn progress(&self, _ctx: &Context, steps: u32) -> RpcStream<u32, ConductorError> {
        futures::stream::iter((1..=steps).map(Ok))
            .chain(futures::stream::iter(
                (steps == 0).then_some(Err(ConductorError::NoValidHost)),
            ))
            .boxed()
    }

    async fn parse_number(
        &self,
        _ctx: &Context,
        text: String,
    ) -> Result<u32, std::num::ParseIntError> {
        text.parse()
    }
}

fn transport() -> Transport {
    Transport::new(MemoryDriver::new(CommonOptions::default()))
}

async fn serve(transport: &Transport, topic: &str) -> (RpcServer, Events) {
    let service = Service::default();
    let events = service.events.clone();
    let server = RpcServer::builder(transport.clone(), Target::new(topic).server("host1"))
        .endpoint(service.into_endpoint())
        .start()
        .await
        .unwrap();
    (server, events)
}

fn ctx() -> Context {
    let mut ctx = Context::new();
    ctx.insert("user".into(), "u1".into());
    ctx
}

#[tokio::test]
async fn calls_casts_and_streams_are_typed() {
    let transport = transport();
    let (server, events) = serve(&transport, "conductor").await;
    let client = ConductorClient::new(transport.clone(), Target::new("conductor"))
        .timeout(Duration::from_secs(5));
    let ctx = ctx();

    let instance = client.get_instance(&ctx, "i-1".into()).await.unwrap();
    assert_eq!(instance.state, "active");
    assert_eq!(client.ping(&ctx).await.unwrap(), "pong for u1");
    assert_eq!(
        client
            .resize(&ctx, "i-1".into(), Some("m1.small".into()))
            .await
            .unwrap(),
        "i-1 -> m1.small"
    );
    assert_eq!(client.parse_number(&ctx, "42".into()).await.unwrap(), 42);

    client.record(&ctx, "boot".into()).await.unwrap();
    let items: Vec<u32> = client
        .progress(&ctx, 3)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [1, 2, 3]);
    // The cast was taken before the stream's request, by the same server.
    for _ in 0..100 {
        if !events.lock().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *events.lock().await,
        [("boot".to_owned(), Some("u1".to_owned()))]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn typed_errors_come_back_as_their_variants() {
    let transport = transport();
    let (server, _) = serve(&transport, "conductor").await;
    let client = ConductorClient::new(transport.clone(), Target::new("conductor"));
    let ctx = ctx();

    match client.get_instance(&ctx, "i-9".into()).await {
        Err(CallError::Service(ConductorError::InstanceNotFound { instance_id })) => {
            assert_eq!(instance_id, "i-9")
        }
        other => panic!("{other:?}"),
    }
    let error = client.get_instance(&ctx, "i-2".into()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Remote);
    assert_eq!(
        error.service(),
        Some(ConductorError::InvalidState {
            instance_id: "i-2".into(),
            state: "building".into(),
            action: "get".into()
        })
    );
    assert!(matches!(
        client.get_instance(&ctx, "none".into()).await,
        Err(CallError::Service(ConductorError::NoValidHost))
    ));
    // A stream's failure is typed too.
    let mut stream = client.progress(&ctx, 0).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Err(CallError::Service(ConductorError::NoValidHost)))
    ));
    assert!(stream.next().await.is_none());

    // anyhow and std errors: untyped, with a sensible class.
    match client.resize(&ctx, "i-1".into(), None).await {
        Err(CallError::Rpc(Error::Remote(failure))) => {
            assert_eq!(failure.class, "RuntimeError");
            assert_eq!(failure.module, "builtins");
            assert_eq!(failure.message, "resize failed: no flavor");
        }
        other => panic!("{other:?}"),
    }
    match client.parse_number(&ctx, "x".into()).await {
        Err(CallError::Rpc(Error::Remote(failure))) => assert_eq!(failure.class, "ParseIntError"),
        other => panic!("{other:?}"),
    }
    server.stop().await.unwrap();
}

#[test]
fn remote_errors_map_to_oslo_failures_and_back() {
    let failure = ConductorError::InstanceNotFound {
        instance_id: "i-3".into(),
    }
    .into_failure();
    assert_eq!(failure.class, "InstanceNotFound");
    assert_eq!(failure.module, "nova.exception");
    assert_eq!(failure.message, "Instance i-3 could not be found.");
    assert_eq!(
        failure.args,
        [serde_json::json!("Instance i-3 could not be found.")]
    );
    assert_eq!(failure.kwargs["instance_id"], "i-3");

    // As Nova's exceptions arrive from Python: extra kwargs (`code`) are ignored.
    let mut python = RemoteFailure::new(
        "InstanceNotFound",
        "nova.exception",
        "Instance i-4 could not be found.",
    );
    python.kwargs.insert("instance_id".into(), "i-4".into());
    python.kwargs.insert("code".into(), 404.into());
    assert_eq!(
        ConductorError::from_failure(Box::new(python)),
        Ok(ConductorError::InstanceNotFound {
            instance_id: "i-4".into()
        })
    );
    // Another module, missing kwargs, unknown classes: not ours.
    let other_module = RemoteFailure::new("NoValidHost", "nova.exception", "x");
    assert!(ConductorError::from_failure(Box::new(other_module)).is_err());
    let no_kwargs = RemoteFailure::new("InstanceNotFound", "nova.exception", "x");
    assert!(ConductorError::from_failure(Box::new(no_kwargs)).is_err());
    let unknown = RemoteFailure::new("KeyError", "builtins", "x");
    assert_eq!(
        *ConductorError::from_failure(Box::new(unknown.clone())).unwrap_err(),
        unknown
    );
}

#[tokio::test]
async fn versions_and_namespaces_are_on_the_wire() {
    let transport = transport();
    let (server, _) = serve(&transport, "conductor").await;
    let untyped = RpcClient::new(transport.clone(), Target::new("conductor"));
    let ctx = ctx();

    // An oslo peer's request: keyword arguments named after the parameters,
    // the namespace and a version; omitting an optional argument is fine.
    let instance: Instance = untyped
        .prepare()
        .namespace("conductor")
        .version(Version::new(1, 0))
        .call(
            &ctx,
            "get_instance",
            &serde_json::json!({"instance_id": "i-1"}),
        )
        .await
        .unwrap();
    assert_eq!(instance.id, "i-1");
    let failure = untyped
        .prepare()
        .namespace("conductor")
        .version(Version::new(1, 2))
        .call::<String, _>(&ctx, "resize", &serde_json::json!({"instance_id": "i-1"}))
        .await
        .unwrap_err();
    assert_eq!(failure.kind(), ErrorKind::Remote);
    // The default namespace is not the conductor's.
    let wrong = untyped
        .call::<Instance, _>(
            &ctx,
            "get_instance",
            &serde_json::json!({"instance_id": "i-1"}),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::UnsupportedVersion);
    // A plain call of a stream gets its last element.
    let last: u32 = untyped
        .prepare()
        .namespace("conductor")
        .version(Version::new(1, 3))
        .call(&ctx, "progress", &serde_json::json!({"steps": 4}))
        .await
        .unwrap();
    assert_eq!(last, 4);

    // The client refuses what the cap does not allow, before sending.
    let client = ConductorClient::new(transport.clone(), Target::new("conductor"));
    assert_eq!(ConductorClient::VERSION, Version::new(1, 3));
    assert_eq!(ConductorClient::NAMESPACE, Some("conductor"));
    let capped = client.prepare().version_cap(Version::new(1, 1));
    assert!(capped.can_send_version(Version::new(1, 1)));
    assert!(!capped.can_send_version(Version::new(1, 2)));
    assert_eq!(capped.ping(&ctx).await.unwrap(), "pong for u1");
    let refused = capped
        .resize(&ctx, "i-1".into(), Some("m1".into()))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::VersionCap);
    assert_eq!(
        capped.progress(&ctx, 1).await.err().map(|e| e.kind()),
        Some(ErrorKind::VersionCap)
    );
    // A pinned version is what every message claims: 1.4 is beyond the server.
    let too_new = client.prepare().version(Version::new(1, 4));
    assert_eq!(
        too_new.ping(&ctx).await.unwrap_err().kind(),
        ErrorKind::UnsupportedVersion
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn prepared_clients_reach_one_server_or_all() {
    let transport = transport();
    let one = Service::default();
    let two = Service::default();
    let (events1, events2) = (one.events.clone(), two.events.clone());
    let mut servers = Vec::new();
    for (host, service) in [("host1", one), ("host2", two)] {
        servers.push(
            RpcServer::builder(transport.clone(), Target::new("fleet").server(host))
                .endpoint(service.into_endpoint())
                .start()
                .await
                .unwrap(),
        );
    }
    let client = ConductorClient::new(transport.clone(), Target::new("fleet"));
    let ctx = ctx();
    client
        .prepare()
        .server("host2")
        .record(&ctx, "to-host2".into())
        .await
        .unwrap();
    client
        .prepare()
        .fanout(true)
        .record(&ctx, "to-all".into())
        .await
        .unwrap();
    // A call cannot be a fanout.
    let fanout_call = client.prepare().fanout(true).ping(&ctx).await.unwrap_err();
    assert_eq!(fanout_call.kind(), ErrorKind::InvalidInput);
    for _ in 0..100 {
        if events1.lock().await.len() == 1 && events2.lock().await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let names = |events: &Vec<(String, Option<String>)>| {
        events.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&*events1.lock().await), ["to-all"]);
    let mut two = names(&*events2.lock().await);
    two.sort();
    assert_eq!(two, ["to-all", "to-host2"]);
    for server in servers {
        server.stop().await.unwrap();
    }
}
