//! Behaviour of the kombu driver that RabbitMQ users expect beyond the shared
//! suite: failover across the transport URL's hosts, mandatory replies and
//! casts, quorum queues, connection names. Needs RabbitMQ (`./scripts/test`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use novarpc::{Context, Endpoint, EndpointError, Error, RpcClient, RpcServer, Target};
use novarpc_conformance::backends::{kombu_with, START_RABBITMQ};
use novarpc_conformance::{tls_dir, unique, Backend};
use serde_json::{json, Value};

async fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .context("running rabbitmqctl")?;
    ensure!(output.status.success(), "rabbitmqctl {args:?} failed");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn config(text: &str) -> Result<novarpc::Config> {
    Ok(novarpc::Config::from_toml_str(text, "<kombu features>")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn fails_over_to_the_next_host_of_the_transport_url() -> Result<()> {
    // Nothing listens on port 1; the second host is the real broker.
    let config = config(
        "[DEFAULT]\ntransport_url = \"rabbit://guest:guest@127.0.0.1:1,guest:guest@127.0.0.1:5672/\"\n\
         [kombu]\nretry_interval = 0.1\nretry_interval_max = 0.2\nmax_retries = 3\n",
    )?;
    ping_over(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn all_hosts_down_is_a_clear_error() -> Result<()> {
    let config = config(
        "[DEFAULT]\ntransport_url = \"rabbit://nova:s3cret@127.0.0.1:1,nova:s3cret@127.0.0.1:2/\"\n\
         [kombu]\nretry_interval = 0.05\nretry_interval_max = 0.1\nmax_retries = 2\n",
    )?;
    let error = novarpc::connect(&config)
        .await
        .expect_err("no broker there");
    let text = novarpc::error_chain(&error);
    ensure!(
        matches!(
            error,
            Error::Transport {
                backend: "kombu",
                ..
            }
        ),
        "{error:?}"
    );
    ensure!(
        error.kind() == novarpc::ErrorKind::Unreachable && error.is_temporary(),
        "{error:?}"
    );
    ensure!(text.contains("cannot connect"), "{text}");
    ensure!(!text.contains("s3cret"), "the password leaked: {text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn a_reply_to_a_vanished_caller_is_reported() -> Result<()> {
    let backend = kombu_with("missing_consumer_retry_timeout = 1\nretry_interval = 0.1");
    let transport = backend.transport().await?;
    let started = Instant::now();
    // Servers reply through the driver; a reply nobody takes is undeliverable.
    let result = transport
        .driver()
        .send_reply(
            "reply_nobody_listens_here",
            "0123456789abcdef0123456789abcdef",
            bytes::Bytes::from_static(b"{}"),
        )
        .await;
    match result {
        Err(error) => ensure!(
            error.kind() == novarpc::ErrorKind::Undeliverable,
            "{error:?}"
        ),
        Ok(()) => anyhow::bail!("a reply to nobody was taken"),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    transport.cleanup().await?;
    Ok(())
}

/// A server (host `h1`) answering `ping` with "pong" on `topic` in
/// `exchange`, and a client of it, each on a transport of its own.
async fn ping_service(
    backend: &dyn Backend,
    topic: &str,
    exchange: &str,
) -> Result<(RpcServer, RpcClient)> {
    let server = RpcServer::builder(
        backend.transport().await?,
        Target::new(topic).exchange(exchange).server("h1"),
    )
    .endpoint(Endpoint::new().method("ping", |_ctx, _: Value| async move {
        Ok::<_, EndpointError>("pong")
    }))
    .start()
    .await?;
    let client = RpcClient::new(
        backend.transport().await?,
        Target::new(topic).exchange(exchange),
    );
    Ok((server, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn quorum_queues_serve_calls() -> Result<()> {
    let backend = kombu_with("quorum_queues = true\nquorum_delivery_limit = 5");
    let topic = unique("quorum");
    // Quorum queues make the control exchange durable (as oslo does); an
    // exchange of its own, so the test owns what it declares.
    let exchange = unique("quorum_ex");
    let (server, client) = ping_service(&backend, &topic, &exchange).await?;
    let pong: String = client.call(&Context::new(), "ping", &json!({})).await?;
    ensure!(pong == "pong");
    let queues =
        rabbitmqctl(&["list_queues", "-q", "name", "type", "durable", "arguments"]).await?;
    let line = queues
        .lines()
        .find(|l| l.split_whitespace().next() == Some(topic.as_str()))
        .context("the topic queue is missing")?;
    ensure!(
        line.contains("quorum") && line.contains("true") && line.contains("x-delivery-limit"),
        "{line}"
    );
    server.stop().await?;
    client.cleanup().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn direct_reply_to_answers_calls_without_a_reply_queue() -> Result<()> {
    // With quorum queues the requests are confirmed, on the same channel.
    for options in [
        "direct_reply_to = true",
        "direct_reply_to = true\nquorum_queues = true",
    ] {
        let backend = kombu_with(options);
        let topic = unique("direct");
        let exchange = unique("direct_ex");
        let (server, client) = ping_service(&backend, &topic, &exchange).await?;
        for _ in 0..3 {
            let pong: String = client.call(&Context::new(), "ping", &json!({})).await?;
            ensure!(pong == "pong", "{options}: {pong}");
        }
        let transport = backend.transport().await?;
        ensure!(
            transport.driver().reply_address().await? == "amq.rabbitmq.reply-to",
            "{options}: the reply address is a queue"
        );
        server.stop().await?;
        client.cleanup().await?;
        transport.cleanup().await?;
        backend
            .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn a_server_whose_queue_is_deleted_declares_it_again() -> Result<()> {
    // The broker cancels the consumer of a deleted queue while the server's
    // other consumers (its own queue, its fanout) go on: the server must
    // notice, as kombu's consumer-cancel handling does, and declare it again.
    let backend = kombu_with("");
    let topic = unique("deleted");
    let exchange = unique("deleted_ex");
    let (server, client) = ping_service(&backend, &topic, &exchange).await?;
    let pong: String = client.call(&Context::new(), "ping", &json!({})).await?;
    ensure!(pong == "pong");
    rabbitmqctl(&["delete_queue", &topic]).await?;
    // A call sent before the queue is back is dropped unrouted (calls are
    // not mandatory, as in oslo): it times out and the next one is tried.
    let started = Instant::now();
    let answered = loop {
        let result: novarpc::Result<String> = client
            .prepare()
            .timeout(Duration::from_millis(500))
            .call(&Context::new(), "ping", &json!({}))
            .await;
        match result {
            Ok(pong) => break pong,
            Err(error)
                if error.kind() == novarpc::ErrorKind::Timeout
                    && started.elapsed() < Duration::from_secs(15) => {}
            Err(error) => return Err(error).context("no call answered after the queue went"),
        }
    };
    ensure!(answered == "pong");
    server.stop().await?;
    client.cleanup().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
        .await
}

/// Declares `exchange` as a topic exchange with the given durability, as
/// another service (or an earlier configuration) would have.
async fn predeclare_exchange(exchange: &str, durable: bool) -> Result<()> {
    let mut url = novarpc_conformance::backends::rabbit_url().replacen("rabbit://", "amqp://", 1);
    // An AMQP URI's empty path is the virtual host "" to lapin; oslo's is "/".
    if url.ends_with('/') {
        url.push_str("%2f");
    }
    let connection =
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn an_exchange_of_the_other_durability_is_used_as_it_is() -> Result<()> {
    // Durable queues (or quorum queues) want a durable control exchange; a
    // deployment that switched them on after its services first declared a
    // transient one finds the broker refusing (PRECONDITION_FAILED). oslo
    // falls back to the exchange as it is; so does novarpc, both ways.
    for (existing_durable, options) in [(false, "durable_queues = true"), (true, "")] {
        let topic = unique("durability");
        let exchange = unique("durability_ex");
        predeclare_exchange(&exchange, existing_durable).await?;
        let backend = kombu_with(options);
        let (server, client) = ping_service(&backend, &topic, &exchange)
            .await
            .with_context(|| {
                format!("a server with `{options}` on an exchange durable={existing_durable}")
            })?;
        let client = client.timeout(Duration::from_secs(10));
        let pong: String = client
            .call(&Context::new(), "ping", &json!({}))
            .await
            .with_context(|| {
                format!("a call with `{options}` on an exchange durable={existing_durable}")
            })?;
        ensure!(pong == "pong");
        client
            .cast(&Context::new(), "ping", &json!({}))
            .await
            .context("a cast")?;
        server.stop().await?;
        client.cleanup().await?;
        backend
            .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[exchange])
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: run ./scripts/test"]
async fn connections_are_named_and_negotiate_heartbeat_and_prefetch() -> Result<()> {
    let backend = kombu_with(
        "processname = \"nova-compute-test\"\nhostname = \"node-7\"\nheartbeat_timeout = 17\nprefetch_count = 23",
    );
    let transport = backend.transport().await?;
    let topic = unique("named");
    let server = RpcServer::builder(transport.clone(), Target::new(&topic).server("h1"))
        .endpoint(Endpoint::new().method("ping", |_ctx, _: Value| async move {
            Ok::<_, EndpointError>("pong")
        }))
        .start()
        .await?;
    let connections =
        rabbitmqctl(&["list_connections", "-q", "timeout", "client_properties"]).await?;
    let ours = connections
        .lines()
        .find(|l| l.contains("nova-compute-test"))
        .with_context(|| format!("no named connection in: {connections}"))?;
    ensure!(
        ours.contains("node-7") && ours.contains("novarpc"),
        "{ours}"
    );
    ensure!(
        ours.trim_start().starts_with("17"),
        "heartbeat not negotiated: {ours}"
    );
    let channels =
        rabbitmqctl(&["list_channels", "-q", "prefetch_count", "consumer_count"]).await?;
    ensure!(
        channels
            .lines()
            .any(|l| l.split_whitespace().next() == Some("23")),
        "no consumer channel with prefetch 23: {channels}"
    );
    server.stop().await?;
    transport.cleanup().await?;
    backend
        .remove_topology(&[topic.clone(), format!("{topic}.h1")], &[])
        .await
}

fn tls_config(host: &str, extra: &str) -> Result<novarpc::Config> {
    let dir = tls_dir()?;
    config(&format!(
        "[DEFAULT]\ntransport_url = \"rabbit://guest:guest@{host}:5671/\"\n\
         [kombu]\nssl = true\nssl_ca_file = \"{}\"\nretry_interval = 0.05\nretry_interval_max = 0.1\nmax_retries = 1\n{extra}\n",
        dir.join("ca.pem").display()
    ))
}

/// Serves and calls `ping` over a transport built from `config`.
async fn ping_over(config: &novarpc::Config) -> Result<()> {
    novarpc_conformance::ping_over(config, &kombu_with(""), &[])
        .await
        .map_err(|e| anyhow::anyhow!("{e}; {START_RABBITMQ}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with the TLS listener: run ./scripts/test"]
async fn tls_with_a_ca_file_and_a_client_certificate() -> Result<()> {
    ping_over(&tls_config("localhost", "")?).await?;
    let dir = tls_dir()?;
    let with_client_cert = tls_config(
        "localhost",
        &format!(
            "ssl_cert_file = \"{}\"\nssl_key_file = \"{}\"",
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        ),
    )?;
    ping_over(&with_client_cert).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with the TLS listener: run ./scripts/test"]
async fn tls_refuses_a_host_name_the_certificate_does_not_name() -> Result<()> {
    // The broker's certificate names `localhost` only.
    let error = novarpc::connect(&tls_config("127.0.0.1", "")?)
        .await
        .expect_err("host name must be verified");
    ensure!(
        matches!(
            error,
            Error::Transport {
                backend: "kombu",
                ..
            }
        ),
        "{error:?}"
    );
    let text = novarpc::error_chain(&error);
    ensure!(
        text.contains("NotValidForName") || text.contains("not valid for"),
        "not a host-name failure: {text}"
    );
    ensure!(error.kind() == novarpc::ErrorKind::Tls, "{error:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with the TLS listener: run ./scripts/test"]
async fn tls_refuses_a_broker_signed_by_an_unknown_ca() -> Result<()> {
    let _ = tls_dir()?;
    let config = config(
        "[DEFAULT]\ntransport_url = \"rabbit://guest:guest@localhost:5671/\"\n\
         [kombu]\nssl = true\nretry_interval = 0.05\nretry_interval_max = 0.1\nmax_retries = 1\n",
    )?;
    let error = novarpc::connect(&config)
        .await
        .expect_err("an unknown CA must be refused");
    ensure!(
        matches!(
            error,
            Error::Transport {
                backend: "kombu",
                ..
            }
        ),
        "{error:?}"
    );
    let text = novarpc::error_chain(&error);
    ensure!(
        text.contains("UnknownIssuer") || text.contains("unknown issuer"),
        "not a CA failure: {text}"
    );
    ensure!(error.kind() == novarpc::ErrorKind::Tls, "{error:?}");
    Ok(())
}
