//! The conformance suite on the kombu driver against a real RabbitMQ.
//! Ignored by plain `cargo test` (no broker needed for a first run);
//! `./scripts/test` starts RabbitMQ and runs these with `--include-ignored`.
novarpc_conformance::conformance_suite!(
    novarpc_conformance::backends::kombu(),
    #[ignore = "needs RabbitMQ: run ./scripts/test, or cargo test -- --include-ignored with a broker up"]
);
