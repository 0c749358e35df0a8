//! A Nova-like `conductor` written with `#[novarpc::service]`: a versioned
//! API (1.0 to 1.3) with calls, a cast, a streaming method and a typed error,
//! and notifications.
//!
//! `conductor` runs the service and a client in one process on the default
//! config (memory). With a broker config the sides run as separate
//! processes: `conductor serve --host conductor1` (stops gracefully on
//! SIGTERM or Ctrl-C) and `conductor client`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use novarpc::{
    CallError, Context, EndpointError, Notifier, RpcServer, RpcStream, StreamExt, Target,
    Transport, Version,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

// ---- The service: what both sides share -------------------------------------

/// What the conductor's methods fail with; Python peers see
/// `nova.exception.<variant>`.
#[derive(Debug, thiserror::Error, novarpc::RemoteError)]
#[remote(module = "nova.exception")]
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

/// The conductor API. 1.0: `ping`, `get_instance`; 1.1: `instance_update`;
/// 1.2: `build_instances` (a cast); 1.3: `migrate_server` (a stream).
#[novarpc::service(namespace = "conductor", version = "1.3")]
pub trait Conductor {
    /// Answers with `message`.
    async fn ping(&self, ctx: &Context, message: String) -> Result<String, EndpointError>;

    /// The instance named `instance_id`.
    async fn get_instance(
        &self,
        ctx: &Context,
        instance_id: String,
    ) -> Result<Instance, ConductorError>;

    /// Sets an instance's state and notifies `compute.instance.update`.
    #[rpc(since = "1.1")]
    async fn instance_update(
        &self,
        ctx: &Context,
        instance_id: String,
        state: String,
    ) -> Result<Instance, ConductorError>;

    /// Creates instances, without answering.
    #[rpc(cast, since = "1.2")]
    async fn build_instances(
        &self,
        ctx: &Context,
        instance_ids: Vec<String>,
        host: String,
    ) -> Result<(), ConductorError>;

    /// Moves an instance to `host`, streaming its progress.
    #[rpc(stream, since = "1.3")]
    fn migrate_server(
        &self,
        ctx: &Context,
        instance_id: String,
        host: String,
    ) -> RpcStream<Progress, ConductorError>;
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
}

impl Conductor for ConductorManager {
    async fn ping(&self, _ctx: &Context, message: String) -> Result<String, EndpointError> {
        Ok(message)
    }

    async fn get_instance(
        &self,
        _ctx: &Context,
        instance_id: String,
    ) -> Result<Instance, ConductorError> {
        self.instance(instance_id)
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

    async fn build_instances(
        &self,
        ctx: &Context,
        instance_ids: Vec<String>,
        host: String,
    ) -> Result<(), ConductorError> {
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
        Ok(())
    }

    fn migrate_server(
        &self,
        _ctx: &Context,
        instance_id: String,
        host: String,
    ) -> RpcStream<Progress, ConductorError> {
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

async fn start_conductor(transport: &Transport, host: &str) -> Result<RpcServer> {
    let manager = ConductorManager {
        instances: Arc::default(),
        notifier: Notifier::new(transport.clone(), format!("conductor.{host}")),
    };
    let server = RpcServer::builder(transport.clone(), Target::new("conductor").server(host))
        .endpoint(manager.into_endpoint())
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

async fn run_client(transport: &Transport) -> Result<()> {
    let conductor = ConductorClient::new(transport.clone(), Target::new("conductor"))
        .timeout(Duration::from_secs(10));
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
            Err(CallError::Service(ConductorError::InstanceNotFound { .. })) => {
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
        Err(CallError::Service(error @ ConductorError::InstanceNotFound { .. })) => say(
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
    if let Some(Err(CallError::Service(error))) = refused.into_future().await.0 {
        say(
            "client",
            format!("migrate_server(i-2) -> typed error: {error}"),
        );
    }

    // A client pinned to peers of API 1.2 does not send what appeared in 1.3.
    let old_peers = conductor.prepare().version_cap(Version::new(1, 2));
    match old_peers
        .migrate_server(&ctx, "i-1".into(), "compute1".into())
        .await
    {
        Err(error) if error.kind() == novarpc::ErrorKind::VersionCap => {
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
        "conductor",
        "A Nova-like conductor written with #[novarpc::service]",
    )
    .await
}
