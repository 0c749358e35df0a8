//! The conformance suite on the qpid (AMQP 1.0) driver against RabbitMQ's
//! AMQP 1.0 plugin. Ignored by plain `cargo test`; `./scripts/test` enables
//! the plugin and runs these with `--include-ignored`.
novarpc_conformance::conformance_suite!(
    novarpc_conformance::backends::qpid(),
    #[ignore = "needs RabbitMQ with rabbitmq_amqp1_0: run ./scripts/test, or cargo test -- --include-ignored with it up"]
);
