//! The conformance runs: the test kit's suite (`novarpc-testkit`) against
//! every backend this repository ships, on real brokers. [`backends`] builds
//! each backend from the environment (`NOVARPC_TEST_RABBIT_URL`,
//! `NOVARPC_TEST_AMQP1_URL`, `NOVARPC_TEST_AMQP1_ADDRESSING`,
//! `NOVARPC_TEST_AMQP1_SASL`); a backend's test file is one line:
//! `conformance_suite!(backends::memory());`. [`cells`] gives each backend
//! a second broker for the cells tests.

pub use novarpc_testkit::*;

pub mod backends;
pub mod cells;
pub mod python;

/// Where `scripts/brokers.sh` put the test CA and client certificate
/// (`NOVARPC_TEST_TLS_DIR`, by default `/etc/rabbitmq/novarpc-tls`).
pub fn tls_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(
        std::env::var("NOVARPC_TEST_TLS_DIR")
            .unwrap_or_else(|_| "/etc/rabbitmq/novarpc-tls".to_owned()),
    );
    anyhow::ensure!(
        dir.join("ca.pem").exists(),
        "no test CA in {}: run ./scripts/test (it enables RabbitMQ's TLS listener on 5671)",
        dir.display()
    );
    Ok(dir)
}
