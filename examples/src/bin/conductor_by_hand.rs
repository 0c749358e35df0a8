//! The `conductor` example written by hand, without `#[novarpc::service]`
//! and `#[derive(RemoteError)]`: the same API, behaviour and scenario, on
//! `Endpoint` and `RpcClient` with a hand-written client stub and error
//! mapping. Kept to measure what the macros save (compare the sections
//! before "The process" in both files) and to show the untyped layer they
//! build on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures::stream::BoxStream;
use novarpc::{
    Context, Endpoint, EndpointError, Error, Notifier, RemoteFailure, RpcClient, RpcServer,
    StreamExt, Target, Transport, Version,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

// ---- The service: what both sides share -------------------------------------

/// What the conductor's methods fail with; Python peers see
/// `nova.exception.<variant>`.
#[derive(Debug, thiserror::Error)]
pub enum ConductorError {
    /// No such instance.
    #[error("Instance {instance_id} could not be found.")]
    InstanceNotFound { instance_id: String },
    /// The instance cannot do that now.
    #[error("Instance {instance_id} in {state} state cannot {action}.")]
    InstanceInvalidState {
        instance_id: String,
        state: String,
        action: String,
    },
}

const ERROR_MODULE: &str = "nova.exception";

// Not `From`: the blanket `From<std::error::Error>` of EndpointError would
// take ConductorError by its type name, without module and kwargs.
impl ConductorError {
    fn into_endpoint_error(self) -> EndpointError {
        let error = self;
        let (class, kwargs) = match &error {
            ConductorError::InstanceNotFound { instance_id } => {
                ("InstanceNotFound", json!({ "instance_id": instance_id }))
            }
            ConductorError::InstanceInvalidState {
                instance_id,
                state,
                action,
            } => (
                "InstanceInvalidState",
                json!({ "instance_id": instance_id, "state": state, "action": action }),
            ),
        };
        let mut failure = RemoteFailure::new(class, ERROR_MODULE, error.to_string());
        if let Value::Object(kwargs) = kwargs {
            failure.kwargs = kwargs;
        }
        EndpointError::from_failure(failure)
    }

    fn from_failure(failure: &RemoteFailure) -> Option<Self> {
        if failure.module != ERROR_MODULE {
            return None;
        }
        let kwarg = |key: &str| {
            failure
                .kwargs
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match failure.class.as_str() {
            "InstanceNotFound" => Some(ConductorError::InstanceNotFound {
                instance_id: kwarg("instance_id")?,
            }),
            "InstanceInvalidState" => Some(ConductorError::InstanceInvalidState {
                instance_id: kwarg("instance_id")?,
                state: kwarg("state")?,
                action: kwarg("action")?,
            }),
            _ => None,
        }
    }
}

/// What the client stub returns on failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Conductor(ConductorError),
    #[error(transparent)]
    Rpc(Error),
}

impl From<Error> for ClientError {
    fn from(error: Error) -> Self {
        match &error {
            Error::Remote(failure) => match ConductorError::from_failure(failure) {
                Some(typed) => ClientError::Conductor(typed),
                None => ClientError::Rpc(error),
            },
            _ => ClientError::Rpc(error),
        }
    }
}

/// An instance as the conductor returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub host: String,
    pub state: String,
}

/// A step of a migration.
#[derive(Debug, Serialize, Deserialize)]
pub struct Progress {
    pub instance_id: String,
    pub percent: u32,
}

const NAMESPACE: &str = "conductor";
const VERSION: Version = Version::new(1, 3);

#[derive(Serialize, Deserialize)]
struct PingArgs {
    message: String,
}

#[derive(Serialize, Deserialize)]
struct InstanceArgs {
    instance_id: String,
}

#[derive(Serialize, Deserialize)]
struct UpdateArgs {
    instance_id: String,
    state: String,
}

#[derive(Serialize, Deserialize)]
struct BuildArgs {
    instance_ids: Vec<String>,
    host: String,
}

#[derive(Serialize, Deserialize)]
struct MigrateArgs {
    instance_id: String,
    host: String,
}

// ---- The server side ---------------------------------------------------------

struct ConductorManager {
    instances: Arc<Mutex<HashMap<String, Instance>>>,
    notifier: Notifier,
}

impl ConductorManager {
    fn instance(&self, instance_id: String) -> Result<Instance, ConductorError> {
        let instances = self.instances.lock();
        instances
            .get(&instance_id)
            .cloned()
            .ok_or(ConductorError::InstanceNotFound { instance_id })
    }

    async fn instance_update(
        &self,
        ctx: &Context,
        instance_id: String,
        state: String,
    ) -> Result<Instance, ConductorError> {
        let instance = {
            let mut instances = self.instances.lock();
            let Some(instance) = instances.get_mut(&instance_id) else {
                return Err(ConductorError::InstanceNotFound { instance_id });
            };
            instance.state = state;
            instance.clone()
        };
        // A lost notification does not fail the update (as in Nova).
        if let Err(error) = self
            .notifier
            .info(ctx, "compute.instance.update", &instance)
            .await
        {
            tracing::warn!(%error, "could not notify an instance update");
        }
        Ok(instance)
    }

    async fn build_instances(&self, ctx: &Context, instance_ids: Vec<String>, host: String) {
        for id in instance_ids {
            let instance = Instance {
                id: id.clone(),
                host: host.clone(),
                state: "active".into(),
            };
            self.instances.lock().insert(id, instance.clone());
            let _ = self
                .notifier
                .info(ctx, "compute.instance.create.end", &instance)
                .await;
        }
    }

    fn migrate_server(
        &self,
        instance_id: String,
        host: String,
    ) -> BoxStream<'static, Result<Progress, ConductorError>> {
        let instances = self.instances.clone();
        let start =
            self.instance(instance_id.clone())
                .and_then(|instance| match instance.state.as_str() {
                    "active" => Ok(instance),
                    state => Err(ConductorError::InstanceInvalidState {
                        instance_id: instance_id.clone(),
                        state: state.to_owned(),
                        action: "migrate".into(),
                    }),
                });
        let steps = match start {
            Err(error) => return futures::stream::iter([Err(error)]).boxed(),
            Ok(_) => 1..=4u32,
        };
        futures::stream::iter(steps)
            .then(move |step| {
                let (instances, instance_id, host) =
                    (instances.clone(), instance_id.clone(), host.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if step == 4 {
                        if let Some(instance) = instances.lock().get_mut(&instance_id) {
                            instance.host = host;
                        }
                    }
                    Ok(Progress {
                        instance_id,
                        percent: step * 25,
                    })
                }
            })
            .boxed()
    }
}

fn conductor_endpoint(manager: ConductorManager) -> Endpoint {
    let manager = Arc::new(manager);
    let (m1, m2, m3, m4) = (
        manager.clone(),
        manager.clone(),
        manager.clone(),
        manager.clone(),
    );
    Endpoint::new()
        .namespace(NAMESPACE)
        .version(VERSION)
        .method("ping", |_ctx: Context, args: PingArgs| async move {
            Ok::<_, EndpointError>(args.message)
        })
        .method("get_instance", move |_ctx: Context, args: InstanceArgs| {
            let manager = m1.clone();
            async move {
                manager
                    .instance(args.instance_id)
                    .map_err(ConductorError::into_endpoint_error)
            }
        })
        .method("instance_update", move |ctx: Context, args: UpdateArgs| {
            let manager = m2.clone();
            async move {
                manager
                    .instance_update(&ctx, args.instance_id, args.state)
                    .await
                    .map_err(ConductorError::into_endpoint_error)
            }
        })
        .method("build_instances", move |ctx: Context, args: BuildArgs| {
            let manager = m3.clone();
            async move {
                manager
                    .build_instances(&ctx, args.instance_ids, args.host)
                    .await;
                Ok::<_, EndpointError>(())
            }
        })
        .stream_method("migrate_server", move |_ctx: Context, args: MigrateArgs| {
            m4.migrate_server(args.instance_id, args.host)
                .map(|item| item.map_err(ConductorError::into_endpoint_error))
        })
}

async fn start_conductor(transport: &Transport, host: &str) -> Result<RpcServer> {
    let manager = ConductorManager {
        instances: Arc::default(),
        notifier: Notifier::new(transport.clone(), format!("conductor.{host}")),
    };
    let server = RpcServer::builder(transport.clone(), Target::new("conductor").server(host))
        .endpoint(conductor_endpoint(manager))
        .grace_period(Duration::from_secs(10))
        .start()
        .await?;
    say(
        host,
        "serving topic `conductor`, namespace `conductor`, API 1.3",
    );
    Ok(server)
}

// ---- The client side ---------------------------------------------------------

/// The client stub, as Nova's rpcapi classes are written.
#[derive(Clone)]
struct ConductorApi {
    client: RpcClient,
}

impl ConductorApi {
    fn new(transport: Transport) -> Self {
        ConductorApi {
            client: RpcClient::new(transport, Target::new("conductor")).namespace(NAMESPACE),
        }
    }

    fn timeout(self, timeout: Duration) -> Self {
        ConductorApi {
            client: self.client.timeout(timeout),
        }
    }

    fn version_cap(&self, cap: Version) -> Self {
        ConductorApi {
            client: self.client.prepare().version_cap(cap),
        }
    }

    async fn ping(&self, ctx: &Context, message: String) -> Result<String, ClientError> {
        let args = PingArgs { message };
        let client = self.client.prepare().version(Version::new(1, 0));
        Ok(client.call(ctx, "ping", &args).await?)
    }

    async fn get_instance(
        &self,
        ctx: &Context,
        instance_id: String,
    ) -> Result<Instance, ClientError> {
        let args = InstanceArgs { instance_id };
        let client = self.client.prepare().version(Version::new(1, 0));
        Ok(client.call(ctx, "get_instance", &args).await?)
    }

    async fn instance_update(
        &self,
        ctx: &Context,
        instance_id: String,
        state: String,
    ) -> Result<Instance, ClientError> {
        let args = UpdateArgs { instance_id, state };
        let client = self.client.prepare().version(Version::new(1, 1));
        Ok(client.call(ctx, "instance_update", &args).await?)
    }

    async fn build_instances(
        &self,
        ctx: &Context,
        instance_ids: Vec<String>,
        host: String,
    ) -> Result<(), ClientError> {
        let args = BuildArgs { instance_ids, host };
        let client = self.client.prepare().version(Version::new(1, 2));
        Ok(client.cast(ctx, "build_instances", &args).await?)
    }

    async fn migrate_server(
        &self,
        ctx: &Context,
        instance_id: String,
        host: String,
    ) -> Result<BoxStream<'static, Result<Progress, ClientError>>, ClientError> {
        let args = MigrateArgs { instance_id, host };
        let client = self.client.prepare().version(Version::new(1, 3));
        let replies = client
            .multicall::<Progress, _>(ctx, "migrate_server", &args)
            .await?;
        Ok(replies.map(|item| item.map_err(ClientError::from)).boxed())
    }
}

async fn run_client(transport: &Transport) -> Result<()> {
    let conductor = ConductorApi::new(transport.clone()).timeout(Duration::from_secs(10));
    let mut ctx = Context::new();
    ctx.insert("request_id".into(), "req-7".into());

    say(
        "client",
        format!("ping -> {}", conductor.ping(&ctx, "hello".into()).await?),
    );
    conductor
        .build_instances(&ctx, vec!["i-1".into(), "i-2".into()], "compute1".into())
        .await?;
    say("client", "cast build_instances(i-1, i-2)");
    // The cast is taken asynchronously: wait until its first instance shows.
    let mut instance = None;
    for _ in 0..100 {
        match conductor.get_instance(&ctx, "i-1".into()).await {
            Ok(found) => {
                instance = Some(found);
                break;
            }
            Err(ClientError::Conductor(ConductorError::InstanceNotFound { .. })) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(other) => return Err(other.into()),
        }
    }
    let Some(instance) = instance else {
        bail!("i-1 was never built")
    };
    say("client", format!("get_instance(i-1) -> {instance:?}"));

    match conductor.get_instance(&ctx, "i-404".into()).await {
        Err(ClientError::Conductor(error @ ConductorError::InstanceNotFound { .. })) => say(
            "client",
            format!("get_instance(i-404) -> typed error: {error}"),
        ),
        other => bail!("expected InstanceNotFound, got {other:?}"),
    }
    let updated = conductor
        .instance_update(&ctx, "i-2".into(), "shelved".into())
        .await?;
    say(
        "client",
        format!("instance_update(i-2, shelved) -> {updated:?}"),
    );

    let mut progress = conductor
        .migrate_server(&ctx, "i-1".into(), "compute2".into())
        .await?;
    while let Some(step) = progress.next().await {
        let step = step?;
        say(
            "client",
            format!(
                "  migrate_server: {} is {}% moved",
                step.instance_id, step.percent
            ),
        );
    }
    let refused = conductor
        .migrate_server(&ctx, "i-2".into(), "compute2".into())
        .await?;
    if let Some(Err(ClientError::Conductor(error))) = refused.into_future().await.0 {
        say(
            "client",
            format!("migrate_server(i-2) -> typed error: {error}"),
        );
    }

    // A client pinned to peers of API 1.2 does not send what appeared in 1.3.
    let old_peers = conductor.version_cap(Version::new(1, 2));
    match old_peers
        .migrate_server(&ctx, "i-1".into(), "compute1".into())
        .await
    {
        Err(ClientError::Rpc(error)) if error.kind() == novarpc::ErrorKind::VersionCap => {
            say("client", format!("capped at 1.2: {error}"))
        }
        other => bail!("expected a version-cap refusal, got {:?}", other.err()),
    }
    Ok(())
}

// ---- The process (shared with the other conductor example) ------------------

#[path = "../conductor/process.rs"]
mod process;
use process::say;

struct This;

impl process::Conductor for This {
    async fn start(transport: &Transport, host: &str) -> Result<RpcServer> {
        start_conductor(transport, host).await
    }
    async fn client(transport: &Transport) -> Result<()> {
        run_client(transport).await
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    process::main::<This>(
        "conductor-by-hand",
        "The conductor example written without #[novarpc::service], for comparison",
    )
    .await
}
