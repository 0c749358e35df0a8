//! Logging that keeps secrets and message bodies out of logs (feature
//! `logging`).
//!
//! novarpc itself never logs a message body or a credential. The client
//! libraries underneath do at some levels: lapin dumps whole AMQP frames at
//! `trace` (the SASL PLAIN response, password included, as bytes) and every
//! returned message, body and all, at `warn`. [`secret_filter`] drops those
//! events and nothing else; [`init`] installs a `fmt` subscriber with it.
//!
//! ```no_run
//! // In main(): RUST_LOG decides, else `warn` (client libraries silent).
//! novarpc::logging::init("warn");
//! ```

use std::io::IsTerminal;

use tracing::Metadata;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Targets of the AMQP client libraries novarpc's drivers use.
const CLIENT_LIBRARIES: &[&str] = &["lapin", "amq_protocol", "fe2o3_amqp", "serde_amqp"];

/// Field names under which those libraries dump whole frames or messages.
const DUMP_FIELDS: &[&str] = &["next_msg", "frame", "frames", "method", "body"];

/// Whether an event or span may be logged: false for the client libraries'
/// frame and message dumps (which can hold credentials and bodies).
pub fn is_safe(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    if !CLIENT_LIBRARIES.iter().any(|lib| target.starts_with(lib)) {
        return true;
    }
    // lapin's "Server returned us a message" prints the body byte by byte;
    // the kombu driver logs returned messages itself, by size.
    if target.starts_with("lapin::returned_messages") {
        return false;
    }
    !metadata
        .fields()
        .iter()
        .any(|field| DUMP_FIELDS.contains(&field.name()))
}

/// A per-layer filter dropping what [`is_safe`] refuses.
pub fn secret_filter() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    FilterFn::new(is_safe as fn(&Metadata<'_>) -> bool)
}

/// The filter used when `RUST_LOG` is unset: `default` for novarpc and the
/// application, the client libraries silenced (their failures reach the
/// caller as classified errors; logging them too would say everything twice).
fn default_filter(default: &str) -> EnvFilter {
    let mut directives = default.to_owned();
    for lib in CLIENT_LIBRARIES {
        directives.push_str(&format!(",{lib}=off"));
    }
    EnvFilter::new(directives)
}

/// Installs a `fmt` subscriber on stderr: `RUST_LOG` if set, else `default`
/// (client libraries off); colours only when stderr is a terminal; the
/// [`secret_filter`] always. Does nothing if a subscriber is already set.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter(default));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(secret_filter());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// Like [`init`], writing through the test harness's capture (for tests).
pub fn init_for_tests(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter(default));
    let layer = tracing_subscriber::fmt::layer()
        .with_test_writer()
        .with_ansi(false)
        .with_filter(secret_filter());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}
