//! qpid-driver features against RabbitMQ's AMQP 1.0 plugin: TLS, SASL
//! mechanisms, authentication failures, and selection by URL scheme.

use anyhow::{ensure, Result};
use novarpc::Error;
use novarpc_conformance::backends::{qpid, START_AMQP1};
use novarpc_conformance::tls_dir;

fn config(text: &str) -> Result<novarpc::Config> {
    Ok(novarpc::Config::from_toml_str(text, "<qpid features>")?)
}

/// Serves and calls `ping` over a transport built from `config` (on the
/// qpid driver).
async fn ping_over(config: &novarpc::Config) -> Result<()> {
    let transport = novarpc::connect(config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; {START_AMQP1}"))?;
    ensure!(
        transport.backend() == "qpid",
        "chose {}",
        transport.backend()
    );
    transport.cleanup().await?;
    novarpc_conformance::ping_over(config, &qpid(), &["openstack".into()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0: run ./scripts/test"]
async fn an_amqp_url_selects_the_driver_and_anonymous_sasl_works() -> Result<()> {
    // No rpc_backend: the amqp:// scheme picks the qpid driver.
    ping_over(&config(
        "[DEFAULT]\ntransport_url = \"amqp://guest:guest@127.0.0.1:5672/\"\n",
    )?)
    .await?;
    ping_over(&config(
        "[DEFAULT]\nrpc_backend = \"amqp1\"\ntransport_url = \"amqp://127.0.0.1:5672/\"\n[qpid]\nsasl_mechanism = \"ANONYMOUS\"\n",
    )?)
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0: run ./scripts/test"]
async fn a_wrong_password_is_a_clear_transport_error() -> Result<()> {
    let error = novarpc::connect(&config(
        "[DEFAULT]\ntransport_url = \"amqp://guest:wrong@127.0.0.1:5672/\"\n[qpid]\nmax_retries = 0\nretry_interval = 0.05\n",
    )?)
    .await
    .expect_err("a wrong password must fail");
    ensure!(
        matches!(
            error,
            Error::Transport {
                backend: "qpid",
                ..
            }
        ),
        "{error:?}"
    );
    let text = novarpc::error_chain(&error);
    ensure!(!text.contains("wrong"), "the password leaked into: {text}");
    ensure!(
        error.kind() == novarpc::ErrorKind::Authentication,
        "{error:?}"
    );
    ensure!(
        text.contains("127.0.0.1:5672"),
        "no broker named in: {text}"
    );
    println!("{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ with rabbitmq_amqp1_0 and the TLS listener: run ./scripts/test"]
async fn tls_with_a_ca_file_and_a_client_certificate() -> Result<()> {
    let dir = tls_dir()?;
    let base = format!(
        "[DEFAULT]\ntransport_url = \"amqps://guest:guest@localhost:5671/\"\n[qpid]\nssl_ca_file = \"{}\"\nmax_retries = 1\nretry_interval = 0.05\n",
        dir.join("ca.pem").display()
    );
    ping_over(&config(&base)?).await?;
    ping_over(&config(&format!(
        "{base}ssl_cert_file = \"{}\"\nssl_key_file = \"{}\"\n",
        dir.join("client.pem").display(),
        dir.join("client.key").display()
    ))?)
    .await?;
    // The broker's certificate names `localhost` only.
    let error = novarpc::connect(&config(&base.replace("localhost", "127.0.0.1"))?)
        .await
        .expect_err("host name must be verified");
    ensure!(
        matches!(
            error,
            Error::Transport {
                backend: "qpid",
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
