//! Request metrics through the [`metrics`] facade.
//!
//! novarpc records; the application chooses where figures go by installing a
//! recorder (`metrics-exporter-prometheus`, an OpenTelemetry bridge, …)
//! before it connects. Without one, recording costs a few instructions: the
//! handles of each method are registered once per transport and kept, so a
//! request allocates nothing for its metrics. (A recorder installed after a
//! transport has served a method does not see that method's figures.)
//!
//! | name | type | labels |
//! |---|---|---|
//! | `novarpc_requests_total` | counter | `side` (`client`/`server`), `backend`, `kind` (`call`, `cast`, `multicall`), `method`, `outcome` (`ok`, [`ErrorKind::label`](crate::ErrorKind::label) on clients, `failed` on servers) |
//! | `novarpc_request_duration_seconds` | histogram | `side`, `backend`, `kind`, `method` (calls: until the reply; casts: until sent) |
//! | `novarpc_requests_in_flight` | gauge | `side`, `backend` |
//! | `novarpc_undeliverable_messages_total` | counter | `backend` (requests and replies the broker returned or refused) |
//! | `novarpc_reconnects_total` | counter | `backend` (recorded by the broker drivers) |
//!
//! Method names on servers come from the network: past
//! [`MAX_METHODS`] distinct names a transport records the rest as `other`.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use parking_lot::RwLock;

use crate::error::ErrorKind;

/// How many distinct method names a transport labels metrics with.
pub const MAX_METHODS: usize = 512;

/// The metric names, for dashboards and tests.
pub mod names {
    /// Requests sent (clients) or handled (servers), by outcome.
    pub const REQUESTS: &str = "novarpc_requests_total";
    /// How long requests took, in seconds.
    pub const DURATION: &str = "novarpc_request_duration_seconds";
    /// Requests started and not finished.
    pub const IN_FLIGHT: &str = "novarpc_requests_in_flight";
    /// Messages the broker returned or refused.
    pub const UNDELIVERABLE: &str = "novarpc_undeliverable_messages_total";
    /// Connections a driver made again after losing one.
    pub const RECONNECTS: &str = "novarpc_reconnects_total";
}

/// Which end of a request a figure describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// What kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Call,
    Cast,
    Multicall,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Cast => "cast",
            Kind::Multicall => "multicall",
        }
    }

    fn slot(self, side: Side) -> usize {
        let side = match side {
            Side::Client => 0,
            Side::Server => 3,
        };
        side + self as usize
    }
}

/// The handles of one (side, kind, method).
struct Handles {
    ok: Counter,
    duration: Histogram,
}

type Slots = [Option<Arc<Handles>>; 6];

/// One transport's metric handles.
pub(crate) struct Metrics {
    backend: &'static str,
    in_flight: [Gauge; 2],
    undeliverable: Counter,
    methods: RwLock<crate::FastMap<Box<str>, Slots>>,
}

impl Metrics {
    pub(crate) fn new(backend: &'static str) -> Self {
        Metrics {
            backend,
            in_flight: [Side::Client, Side::Server].map(
                |side| gauge!(names::IN_FLIGHT, "side" => side.as_str(), "backend" => backend),
            ),
            undeliverable: counter!(names::UNDELIVERABLE, "backend" => backend),
            methods: RwLock::new(crate::FastMap::default()),
        }
    }

    fn handles(&self, side: Side, kind: Kind, method: &str) -> Arc<Handles> {
        let slot = kind.slot(side);
        // Read-locked on every request (servers' workers share it), written
        // once per method.
        if let Some(handles) = self
            .methods
            .read()
            .get(method)
            .and_then(|slots| slots[slot].as_ref())
        {
            return handles.clone();
        }
        let mut methods = self.methods.write();
        if let Some(handles) = methods.get(method).and_then(|slots| slots[slot].as_ref()) {
            return handles.clone();
        }
        let method = if methods.len() >= MAX_METHODS && !methods.contains_key(method) {
            "other"
        } else {
            method
        };
        let labels = [
            ("side", side.as_str().to_owned()),
            ("backend", self.backend.to_owned()),
            ("kind", kind.as_str().to_owned()),
            ("method", method.to_owned()),
        ];
        let handles = Arc::new(Handles {
            ok: counter!(names::REQUESTS, labels_with(&labels, "ok")),
            duration: histogram!(names::DURATION, labels_to_vec(&labels)),
        });
        methods.entry(method.into()).or_default()[slot] = Some(handles.clone());
        handles
    }

    /// A request starts: counted in flight until the guard drops.
    pub(crate) fn start(&self, side: Side) -> InFlight<'_> {
        let gauge = &self.in_flight[side as usize];
        gauge.increment(1.0);
        InFlight { gauge }
    }

    /// A request ended with `outcome` (`None`: it succeeded).
    pub(crate) fn finish(
        &self,
        side: Side,
        kind: Kind,
        method: &str,
        elapsed: Duration,
        outcome: Option<&'static str>,
    ) {
        let handles = self.handles(side, kind, method);
        handles.duration.record(elapsed.as_secs_f64());
        match outcome {
            None => handles.ok.increment(1),
            Some(outcome) => {
                // Failures are rare: their counters are registered as they come.
                let method = if self.methods.read().contains_key(method) {
                    method
                } else {
                    "other"
                };
                counter!(
                    names::REQUESTS,
                    "side" => side.as_str(),
                    "backend" => self.backend,
                    "kind" => kind.as_str(),
                    "method" => method.to_owned(),
                    "outcome" => outcome,
                )
                .increment(1);
            }
        }
    }

    /// A client request failed with `kind` (counted as undeliverable when
    /// the broker returned or refused it).
    pub(crate) fn client_error(&self, kind: ErrorKind) -> &'static str {
        if kind == ErrorKind::Undeliverable {
            self.undeliverable.increment(1);
        }
        kind.label()
    }

    /// A server's reply could not be sent.
    pub(crate) fn reply_failed(&self, kind: ErrorKind) {
        if kind == ErrorKind::Undeliverable {
            self.undeliverable.increment(1);
        }
    }
}

fn labels_to_vec(labels: &[(&'static str, String); 4]) -> Vec<metrics::Label> {
    labels
        .iter()
        .map(|(key, value)| metrics::Label::new(*key, value.clone()))
        .collect()
}

fn labels_with(labels: &[(&'static str, String); 4], outcome: &'static str) -> Vec<metrics::Label> {
    let mut all = labels_to_vec(labels);
    all.push(metrics::Label::new("outcome", outcome));
    all
}

/// Decrements the in-flight gauge when dropped (also when a request's
/// future is dropped half-way).
pub(crate) struct InFlight<'a> {
    gauge: &'a Gauge,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Counts one reconnect of `backend`'s driver (for drivers; see the table
/// above).
pub fn record_reconnect(backend: &'static str) {
    counter!(names::RECONNECTS, "backend" => backend).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        let metrics = Metrics::new("memory");
        for i in 0..MAX_METHODS + 10 {
            metrics.finish(
                Side::Server,
                Kind::Call,
                &format!("m{i}"),
                Duration::ZERO,
                None,
            );
        }
        let methods = metrics.methods.read();
        assert_eq!(methods.len(), MAX_METHODS + 1);
        assert!(methods.contains_key("other"));
    }
}
