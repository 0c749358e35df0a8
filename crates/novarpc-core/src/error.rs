use std::time::Duration;

use crate::config::ConfigError;
use crate::envelope::RemoteFailure;

/// Result type of novarpc operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in novarpc. Match on the variant (the error kind);
/// new variants may appear, so keep a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No (final) reply arrived within the call's timeout.
    #[error("timed out after {timeout:?} waiting for a reply to `{method}` on topic `{topic}`")]
    Timeout {
        method: String,
        topic: String,
        timeout: Duration,
    },
    /// The backend cannot do this operation (see its [`crate::Capabilities`]).
    #[error("the `{backend}` backend does not support {operation}")]
    Unsupported {
        backend: &'static str,
        operation: &'static str,
    },
    /// The server has a compatible endpoint but no such (public) method.
    #[error("endpoint does not support RPC method `{method}`")]
    NoSuchMethod { method: String },
    /// No endpoint of the server matches the requested namespace and version.
    #[error("endpoint does not support RPC version {version} (method `{method}`)")]
    UnsupportedVersion { version: String, method: String },
    /// The remote method failed; carries the remote class, message and traceback.
    #[error("remote error: {0}")]
    Remote(Box<RemoteFailure>),
    /// The client's `version_cap` forbids sending this version.
    #[error("requested message version {version} is incompatible with the version cap {cap}")]
    VersionCap { version: String, cap: String },
    /// A version string that is not `MAJOR[.MINOR]`.
    #[error("invalid RPC version `{0}`: expected MAJOR or MAJOR.MINOR")]
    InvalidVersion(String),
    /// A target that cannot be routed (empty topic, fanout with a server, ...).
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// Arguments must serialize to a JSON object (keyword arguments).
    #[error("invalid arguments for `{method}`: {reason}")]
    InvalidArguments { method: String, reason: String },
    /// A value could not be serialized or a result not deserialized.
    #[error("serialization failed: {0}")]
    Serialization(serde_json::Error),
    /// Bytes on the wire that are not an oslo.messaging message.
    #[error("malformed message: {0}")]
    MalformedMessage(String),
    /// The transport was cleaned up or its broker went away for good.
    #[error("the transport is closed")]
    Closed,
    /// A driver failure (broker connection, channel, publish ...). The cause
    /// is part of the message rather than a `source()`, so chains print it once.
    #[error("{backend} transport error: {cause}")]
    Transport {
        backend: &'static str,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Configuration problems: malformed file, unknown backend, bad URL.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl Error {
    /// Wraps a driver's own error.
    pub fn transport(
        backend: &'static str,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Transport {
            backend,
            cause: cause.into(),
        }
    }
}
