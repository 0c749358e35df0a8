//! novarpc's error type and its classification.
//!
//! Every error has an [`ErrorKind`], the same on every backend, and says whether
//! it is temporary ([`Error::is_temporary`]): drivers retry only temporary
//! failures, and tools map kinds to exit codes. Driver failures keep the
//! driver's own error as their [`std::error::Error::source`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigError;
use crate::envelope::RemoteFailure;

/// Result type of novarpc operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is: the same classification on every
/// backend. Match on it (with a wildcard arm: kinds may be added).
///
/// ```
/// use novarpc_core::ErrorKind;
///
/// fn exit_code(kind: ErrorKind) -> i32 {
///     match kind {
///         ErrorKind::Timeout => 3,
///         ErrorKind::Config | ErrorKind::InvalidInput => 2,
///         _ => 1,
///     }
/// }
/// assert_eq!(exit_code(ErrorKind::Timeout), 3);
/// assert!(ErrorKind::Unreachable.is_temporary());
/// assert_eq!(ErrorKind::Authentication.to_string(), "authentication failed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A deadline passed: a call's reply or a send's bound.
    Timeout,
    /// The backend (or its broker, or its addressing profile) cannot do this.
    Unsupported,
    /// The remote endpoint has no such method.
    NoSuchMethod,
    /// No remote endpoint handles the requested namespace and version.
    UnsupportedVersion,
    /// The remote method failed.
    Remote,
    /// The client's version cap forbids the request's version.
    VersionCap,
    /// The caller passed something unusable (target, version, arguments).
    InvalidInput,
    /// A value could not be serialized or a result deserialized.
    Serialization,
    /// Bytes on the wire that are not an oslo.messaging message.
    MalformedMessage,
    /// The transport was cleaned up.
    Closed,
    /// The broker cannot be reached (refused, unresolvable, connection lost).
    Unreachable,
    /// The broker refused the credentials or offers no usable SASL mechanism.
    Authentication,
    /// The broker refused access (unknown virtual host, missing permission,
    /// a node or link it will not attach).
    AccessRefused,
    /// TLS could not be set up (certificate, host name, handshake).
    Tls,
    /// The broker or the client library broke the protocol, or refused an
    /// operation for a reason other than access.
    Protocol,
    /// The broker took a message but could not deliver it (returned,
    /// rejected, nacked) and will not by retrying.
    Undeliverable,
    /// The broker is up but refuses work for now (memory alarm, no credit).
    Busy,
    /// The configuration is malformed or names something unknown.
    Config,
}

impl ErrorKind {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::Unreachable | ErrorKind::Busy
        )
    }

    /// A short lower-case description, as in messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timed out",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NoSuchMethod => "no such method",
            ErrorKind::UnsupportedVersion => "unsupported version",
            ErrorKind::Remote => "remote error",
            ErrorKind::VersionCap => "version cap",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Serialization => "serialization failed",
            ErrorKind::MalformedMessage => "malformed message",
            ErrorKind::Closed => "closed",
            ErrorKind::Unreachable => "broker unreachable",
            ErrorKind::Authentication => "authentication failed",
            ErrorKind::AccessRefused => "access refused",
            ErrorKind::Tls => "TLS failure",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Undeliverable => "undeliverable",
            ErrorKind::Busy => "broker busy",
            ErrorKind::Config => "configuration error",
        }
    }
}

impl ErrorKind {
    /// The kind as a snake_case identifier (`timeout`, `remote`,
    /// `undeliverable`, …): the `outcome` of request metrics and spans.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NoSuchMethod => "no_such_method",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::Remote => "remote",
            ErrorKind::VersionCap => "version_cap",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Serialization => "serialization",
            ErrorKind::MalformedMessage => "malformed_message",
            ErrorKind::Closed => "closed",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Authentication => "authentication",
            ErrorKind::AccessRefused => "access_refused",
            ErrorKind::Tls => "tls",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Undeliverable => "undeliverable",
            ErrorKind::Busy => "busy",
            ErrorKind::Config => "config",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A driver's error that knows its [`ErrorKind`]: drivers implement it for
/// their own error types so that [`Error::transport`] classifies them.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    /// The kind of this failure.
    fn kind(&self) -> ErrorKind;
}

/// Everything that can go wrong in novarpc. Match on [`Error::kind`] (or on the
/// variant); new variants may appear, so keep a wildcard arm.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use novarpc_core::{
///     memory::MemoryDriver, CommonOptions, Context, Error, ErrorKind, RpcClient, Target,
///     Transport,
/// };
///
/// let transport = Transport::new(MemoryDriver::new(CommonOptions::default()));
/// let client = RpcClient::new(transport.clone(), Target::new("compute"));
/// transport.cleanup().await.unwrap();
///
/// let args = serde_json::json!({});
/// match client.cast(&Context::new(), "reboot", &args).await {
///     Err(error) if error.kind() == ErrorKind::Closed => assert!(!error.is_temporary()),
///     Err(Error::Timeout { method, .. }) => panic!("{method} timed out"),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No (final) reply arrived within the call's timeout, counted from the
    /// moment `call` was invoked.
    #[error("timed out after {timeout:?} waiting for a reply to `{method}` on topic `{topic}`")]
    Timeout {
        /// The method called.
        method: String,
        /// The target it was sent to.
        topic: String,
        /// The call's timeout.
        timeout: Duration,
    },
    /// A cast, fanout cast or notification could not be handed to the broker
    /// within the transport's `send_timeout`.
    #[error(
        "{operation} to `{target}` not sent within {timeout:?} (is the broker up and unblocked?)"
    )]
    SendTimeout {
        /// What was being sent (`cast`, `notification`, ...).
        operation: &'static str,
        /// Where it was going.
        target: String,
        /// The bound that passed.
        timeout: Duration,
    },
    /// The backend cannot do this operation (see its [`crate::Capabilities`]).
    #[error("the `{backend}` backend does not support {operation}")]
    Unsupported {
        /// The backend's registered name.
        backend: &'static str,
        /// What was asked of it.
        operation: &'static str,
    },
    /// The server has a compatible endpoint but no such (public) method.
    #[error("endpoint does not support RPC method `{method}`")]
    NoSuchMethod {
        /// The method asked for.
        method: String,
    },
    /// No endpoint of the server matches the requested namespace and version.
    #[error("endpoint does not support RPC version {version} (method `{method}`)")]
    UnsupportedVersion {
        /// The version asked for.
        version: String,
        /// The method asked for.
        method: String,
    },
    /// The remote method failed; carries the remote class, message and traceback.
    #[error("remote error: {0}")]
    Remote(Box<RemoteFailure>),
    /// The client's `version_cap` forbids sending this version.
    #[error("requested message version {version} is incompatible with the version cap {cap}")]
    VersionCap {
        /// The request's version.
        version: String,
        /// The client's cap.
        cap: String,
    },
    /// A version string that is not `MAJOR[.MINOR]`.
    #[error("invalid RPC version `{0}`: expected MAJOR or MAJOR.MINOR")]
    InvalidVersion(String),
    /// A target that cannot be routed (empty topic, fanout with a server, ...).
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// Arguments must serialize to a JSON object (keyword arguments).
    #[error("invalid arguments for `{method}`: {reason}")]
    InvalidArguments {
        /// The method called.
        method: String,
        /// What is wrong with them.
        reason: String,
    },
    /// A value could not be serialized or a result not deserialized.
    #[error("serialization failed")]
    Serialization(#[source] serde_json::Error),
    /// Bytes on the wire that are not an oslo.messaging message.
    #[error("malformed message: {0}")]
    MalformedMessage(String),
    /// The transport was cleaned up.
    #[error("the transport is closed")]
    Closed,
    /// A driver failure (connecting, authenticating, publishing ...), with
    /// its classification; the driver's error is the `source()`.
    #[error("{backend}: {kind}")]
    Transport {
        /// The backend's registered name.
        backend: &'static str,
        /// What kind of failure it is.
        kind: ErrorKind,
        /// The driver's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Configuration problems: malformed file, unknown backend, bad URL,
    /// a broker name no `[brokers]` table has.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A send to another broker on a transport that cannot resolve brokers
    /// (one built with `Transport::new` rather than `novarpc::connect`).
    #[error("cannot send to broker `{broker}`: this transport has no broker resolver (build it with novarpc::connect, or attach one with Transport::with_resolver)")]
    NoBrokerResolver {
        /// The broker asked for, passwords hidden.
        broker: String,
    },
    /// No connection to another broker could be made in time.
    #[error("no connection to broker `{broker}` within {timeout:?}")]
    ConnectTimeout {
        /// The broker, passwords hidden.
        broker: String,
        /// The bound that passed.
        timeout: Duration,
    },
}

impl Error {
    /// Wraps a driver's own (classified) error.
    pub fn transport<E: Classify>(backend: &'static str, error: E) -> Self {
        Error::Transport {
            backend,
            kind: error.kind(),
            source: Box::new(error),
        }
    }

    /// Wraps any error as a driver failure of `kind`.
    pub fn transport_of_kind(
        backend: &'static str,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Transport {
            backend,
            kind,
            source: source.into(),
        }
    }

    /// `error` for one of the callers that waited on it together: the
    /// same kind, backend and source (a driver failure's own error is
    /// shared, not copied).
    pub(crate) fn shared(error: &Arc<Error>, backend: &'static str) -> Error {
        match &**error {
            Error::Closed => Error::Closed,
            Error::Transport { backend, kind, .. } => Error::Transport {
                backend,
                kind: *kind,
                source: Box::new(SharedSource(error.clone())),
            },
            other => Error::Transport {
                backend,
                kind: other.kind(),
                source: Box::new(SharedSource(error.clone())),
            },
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Timeout { .. } | Error::SendTimeout { .. } | Error::ConnectTimeout { .. } => {
                ErrorKind::Timeout
            }
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::NoSuchMethod { .. } => ErrorKind::NoSuchMethod,
            Error::UnsupportedVersion { .. } => ErrorKind::UnsupportedVersion,
            Error::Remote(_) => ErrorKind::Remote,
            Error::VersionCap { .. } => ErrorKind::VersionCap,
            Error::InvalidVersion(_) | Error::InvalidTarget(_) | Error::InvalidArguments { .. } => {
                ErrorKind::InvalidInput
            }
            Error::Serialization(_) => ErrorKind::Serialization,
            Error::MalformedMessage(_) => ErrorKind::MalformedMessage,
            Error::Closed => ErrorKind::Closed,
            Error::Transport { kind, .. } => *kind,
            Error::Config(_) | Error::NoBrokerResolver { .. } => ErrorKind::Config,
        }
    }

    /// Whether the same operation may succeed if tried again later (the broker
    /// was unreachable or busy, or a deadline passed). Permanent failures
    /// (credentials, access, TLS, unsupported, bad input) are not.
    pub fn is_temporary(&self) -> bool {
        self.kind().is_temporary()
    }
}

/// The whole chain of an error on one line (`outer: cause: root cause`), for
/// tools and logs that print an error once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers that print their source themselves would repeat it.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("ACCESS_REFUSED - login refused")]
    struct Refused;

    impl Classify for Refused {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Authentication
        }
    }

    #[test]
    fn a_shared_error_keeps_kind_backend_and_source() {
        let original = Arc::new(Error::transport("kombu", Refused));
        let shared = Error::shared(&original, "other");
        assert_eq!(shared.kind(), ErrorKind::Authentication);
        assert!(matches!(
            shared,
            Error::Transport {
                backend: "kombu",
                ..
            }
        ));
        assert_eq!(error_chain(&shared), error_chain(&*original));

        let closed = Error::shared(&Arc::new(Error::Closed), "kombu");
        assert!(matches!(closed, Error::Closed));
        let timeout = Arc::new(Error::SendTimeout {
            operation: "reply",
            target: "t".into(),
            timeout: Duration::from_secs(1),
        });
        let shared = Error::shared(&timeout, "qpid");
        assert_eq!(shared.kind(), ErrorKind::Timeout);
        assert!(error_chain(&shared).contains(&timeout.to_string()));
    }

    #[test]
    fn transport_errors_keep_kind_and_source() {
        let error = Error::transport("kombu", Refused);
        assert_eq!(error.kind(), ErrorKind::Authentication);
        assert!(!error.is_temporary());
        assert_eq!(
            error_chain(&error),
            "kombu: authentication failed: ACCESS_REFUSED - login refused"
        );
        let unreachable =
            Error::transport_of_kind("qpid", ErrorKind::Unreachable, "connection refused");
        assert!(unreachable.is_temporary());
        assert!(!Error::Closed.is_temporary());
    }
}

/// The source of an error shared by several callers: a driver failure's
/// own error (what `Error::Transport` shows as its source), or the whole
/// error for anything else.
#[derive(Debug)]
struct SharedSource(Arc<Error>);

impl SharedSource {
    fn inner(&self) -> &(dyn std::error::Error + 'static) {
        match &*self.0 {
            Error::Transport { source, .. } => &**source,
            other => other,
        }
    }
}

impl fmt::Display for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner(), f)
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner().source()
    }
}
