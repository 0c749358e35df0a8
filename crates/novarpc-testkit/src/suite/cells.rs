//! Cells: sends to another message broker (`cast_to_server`,
//! `fanout_cast_to_server`, calls through `RpcClient::broker`), from a client
//! whose default broker is cell 0 to servers on cell 1's broker, and a cell
//! whose broker is down. Backends without a second broker skip them.

#[allow(unused_imports)]
use super::*;

use novarpc::Broker;

use crate::Cells;

#[derive(Clone, Copy)]
enum Cell {
    /// A server on cell 0 (the clients' default broker), its own transport.
    Zero,
    /// A server on cell 1 with a transport of its own, as a process of
    /// that cell would have.
    One,
    /// A server on cell 1 through the client transport's broker cache
    /// (`Transport::for_broker`).
    OneShared,
}

struct CellsFixture<'b> {
    backend: &'b dyn Backend,
    exchange: String,
    topic: String,
    client_transport: Transport,
    records: mpsc::UnboundedReceiver<Record>,
    records_tx: mpsc::UnboundedSender<Record>,
    servers: Vec<RpcServer>,
    /// Transports the fixture made for servers (cleaned up at the end).
    server_transports: Vec<Transport>,
    cell0_hosts: Vec<String>,
    // Last: dropping it removes the cells' brokers.
    cells: Cells,
}

impl<'b> CellsFixture<'b> {
    async fn new(backend: &'b dyn Backend) -> Result<Option<Self>> {
        let Some(cells) = backend.cells().await? else {
            eprintln!(
                "skipped: the {} test backend offers no second broker (Backend::cells)",
                backend.name()
            );
            return Ok(None);
        };
        let client_transport = novarpc::connect(&cells.cell0)
            .await
            .context("connecting to cell 0")?;
        let (records_tx, records) = mpsc::unbounded_channel();
        Ok(Some(CellsFixture {
            backend,
            exchange: unique("ex"),
            topic: unique("topic"),
            client_transport,
            records,
            records_tx,
            servers: Vec::new(),
            server_transports: Vec::new(),
            cell0_hosts: Vec::new(),
            cells,
        }))
    }

    fn cell1(&self) -> Broker {
        Broker::named(&self.cells.cell1_name)
    }

    fn target(&self) -> Target {
        Target::new(&self.topic).exchange(&self.exchange)
    }

    fn client(&self) -> RpcClient {
        RpcClient::new(self.client_transport.clone(), self.target()).timeout(WAIT)
    }

    /// Starts a server for `host` on `cell`; it records as `cellN/host`.
    async fn serve(&mut self, cell: Cell, host: &str) -> Result<()> {
        let (transport, name) = match cell {
            Cell::Zero => {
                self.cell0_hosts.push(host.to_owned());
                let transport = novarpc::connect(&self.cells.cell0).await?;
                self.server_transports.push(transport.clone());
                (transport, format!("cell0/{host}"))
            }
            Cell::One => {
                let transport = novarpc::connect(&self.cells.cell1)
                    .await
                    .context("connecting to cell 1")?;
                self.server_transports.push(transport.clone());
                (transport, format!("cell1/{host}"))
            }
            Cell::OneShared => (
                self.client_transport.for_broker(&self.cell1()).await?,
                format!("cell1/{host}"),
            ),
        };
        let endpoint = standard_endpoint(&name, self.records_tx.clone());
        let server = RpcServer::builder(transport, self.target().server(host))
            .endpoint(endpoint)
            .start()
            .await?;
        self.servers.push(server);
        Ok(())
    }

    async fn next_record(&mut self) -> Result<Record> {
        tokio::time::timeout(WAIT, self.records.recv())
            .await
            .context("timed out waiting for a cast to arrive")?
            .context("record channel closed")
    }

    async fn drain_records(&mut self, window: Duration) -> Vec<Record> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(record)) = tokio::time::timeout_at(deadline, self.records.recv()).await {
            out.push(record);
        }
        out
    }

    async fn stop(self) -> Result<()> {
        for server in self.servers {
            server.stop().await?;
        }
        for transport in &self.server_transports {
            transport.cleanup().await?;
        }
        // Closes cell 1's cached transport too.
        self.client_transport.cleanup().await?;
        let mut queues = vec![self.topic.clone()];
        queues.extend(
            self.cell0_hosts
                .iter()
                .map(|h| format!("{}.{h}", self.topic)),
        );
        // Cell 1's queues go with its broker (`cells` is dropped last).
        self.backend
            .remove_topology(&queues, std::slice::from_ref(&self.exchange))
            .await
    }
}

/// `cast_to_server` (by `[brokers]` name and by URL) reaches a server of
/// cell 1 from a client whose default broker is cell 0, and nothing of cell
/// 0; `.broker(b).server(host)` reaches a host there; plain casts stay home.
pub async fn cells_cast_to_server_reaches_only_that_broker(backend: &dyn Backend) -> Result<()> {
    let Some(mut f) = CellsFixture::new(backend).await? else {
        return Ok(());
    };
    f.serve(Cell::Zero, "h0").await?;
    f.serve(Cell::One, "h1").await?;
    let client = f.client();
    let cell1 = f.cell1();
    for i in 0..4 {
        client
            .cast_to_server(&ctx(), &cell1, "record", &json!({"value": i}))
            .await?;
    }
    for _ in 0..4 {
        let (who, value) = f.next_record().await?;
        ensure!(
            who == "cell1/h1",
            "cast_to_server(cell1) reached {who} ({value})"
        );
    }
    client
        .prepare()
        .broker(cell1.clone())
        .server("h1")
        .cast(&ctx(), "record", &json!({"value": "to-host"}))
        .await?;
    let (who, _) = f.next_record().await?;
    ensure!(
        who == "cell1/h1",
        "a cast to host h1 of cell 1 reached {who}"
    );
    let by_url = Broker::url(&f.cells.cell1_url)?;
    client
        .cast_to_server(&ctx(), by_url, "record", &json!({"value": "by-url"}))
        .await?;
    let (who, _) = f.next_record().await?;
    ensure!(
        who == "cell1/h1",
        "cast_to_server(cell 1's URL) reached {who}"
    );
    client
        .cast(&ctx(), "record", &json!({"value": "home"}))
        .await?;
    let (who, _) = f.next_record().await?;
    ensure!(who == "cell0/h0", "a plain cast reached {who}");
    let extra = f.drain_records(backend.settle_time()).await;
    ensure!(extra.is_empty(), "unexpected deliveries: {extra:?}");
    f.stop().await
}

/// `fanout_cast_to_server` reaches every server of the topic on cell 1 (its
/// own transports and the shared one) and none of cell 0's; a fanout cast
/// stays on the default broker.
pub async fn cells_fanout_cast_to_server_reaches_every_server_of_that_broker(
    backend: &dyn Backend,
) -> Result<()> {
    let Some(mut f) = CellsFixture::new(backend).await? else {
        return Ok(());
    };
    f.serve(Cell::Zero, "h0").await?;
    f.serve(Cell::One, "h1a").await?;
    f.serve(Cell::OneShared, "h1b").await?;
    let client = f.client();
    let cell1 = f.cell1();
    let fanout = f
        .client_transport
        .for_broker(&cell1)
        .await?
        .capabilities()
        .fanout;
    let result = client
        .fanout_cast_to_server(&ctx(), &cell1, "record", &json!({"value": "f1"}))
        .await;
    if !fanout {
        ensure!(
            matches!(&result, Err(e) if e.kind() == ErrorKind::Unsupported),
            "a broker without fanout must say Unsupported, got {result:?}"
        );
        let reached = f.drain_records(backend.settle_time()).await;
        ensure!(reached.is_empty(), "a refused fanout reached {reached:?}");
        return f.stop().await;
    }
    result?;
    let mut hosts = vec![f.next_record().await?.0, f.next_record().await?.0];
    hosts.sort();
    ensure!(
        hosts == ["cell1/h1a", "cell1/h1b"],
        "fanout_cast_to_server(cell1) reached {hosts:?}"
    );
    let extra = f.drain_records(backend.settle_time()).await;
    ensure!(
        extra.is_empty(),
        "fanout_cast_to_server(cell1) also reached {extra:?}"
    );
    if f.client_transport.capabilities().fanout {
        client
            .fanout_cast(&ctx(), "record", &json!({"value": "f0"}))
            .await?;
        let (who, _) = f.next_record().await?;
        ensure!(who == "cell0/h0", "a fanout cast on cell 0 reached {who}");
        let extra = f.drain_records(backend.settle_time()).await;
        ensure!(
            extra.is_empty(),
            "a fanout cast on cell 0 also reached {extra:?}"
        );
    }
    f.stop().await
}

/// Calls and multicalls cross to cell 1 (`.broker(b)`, `.via(b)`, by name
/// and by URL); remote errors keep their kind; an unknown broker name is a
/// `Config` error; calls without a broker stay on cell 0.
pub async fn cells_call_and_multicall_reach_the_other_broker(backend: &dyn Backend) -> Result<()> {
    let Some(mut f) = CellsFixture::new(backend).await? else {
        return Ok(());
    };
    f.serve(Cell::Zero, "h0").await?;
    f.serve(Cell::One, "h1").await?;
    let client = f.client();
    let cell1 = f.cell1();
    let caps = f.client_transport.for_broker(&cell1).await?.capabilities();
    let in_cell1 = client.prepare().broker(cell1.clone());
    if !caps.call {
        let result = in_cell1
            .call::<Value, _>(&ctx(), "whoami", &json!({}))
            .await;
        ensure!(
            matches!(&result, Err(e) if e.kind() == ErrorKind::Unsupported),
            "a broker without calls must say Unsupported, got {result:?}"
        );
        return f.stop().await;
    }
    let who: String = in_cell1.call(&ctx(), "whoami", &json!({})).await?;
    ensure!(who == "cell1/h1", "a call to cell 1 was answered by {who}");
    let who: String = in_cell1
        .prepare()
        .server("h1")
        .call(&ctx(), "whoami", &json!({}))
        .await?;
    ensure!(
        who == "cell1/h1",
        "a call to host h1 of cell 1 was answered by {who}"
    );
    let via_url = client.via(&Broker::url(&f.cells.cell1_url)?).await?;
    let who: String = via_url.call(&ctx(), "whoami", &json!({})).await?;
    ensure!(
        who == "cell1/h1",
        "a call via cell 1's URL was answered by {who}"
    );
    let who: String = client.call(&ctx(), "whoami", &json!({})).await?;
    ensure!(
        who == "cell0/h0",
        "a call without a broker was answered by {who}"
    );
    if caps.multicall {
        let items: Vec<u64> = in_cell1
            .multicall::<u64, _>(&ctx(), "count", &json!({"n": 3}))
            .await?
            .map(|item| item.map_err(anyhow::Error::from))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        ensure!(items == [0, 1, 2], "a multicall to cell 1 gave {items:?}");
    }
    let failed = in_cell1
        .call::<Value, _>(&ctx(), "fail", &json!({"message": "boom"}))
        .await;
    ensure!(
        matches!(&failed, Err(e) if e.kind() == ErrorKind::Remote),
        "a failing method on cell 1 gave {failed:?}"
    );
    let unknown = client
        .cast_to_server(&ctx(), Broker::named("no_such_cell"), "record", &json!({}))
        .await;
    ensure!(
        matches!(&unknown, Err(e) if e.kind() == ErrorKind::Config),
        "an unknown broker name gave {unknown:?}"
    );
    f.stop().await
}

/// A cell whose broker is down fails the sends to it with a classified error
/// within their timeout (a closed port: `Unreachable`, or `Timeout`; a peer
/// that never answers: `Timeout`), while sends to the live cell go on at
/// once, even as a connection to the dead one hangs.
pub async fn cells_dead_broker_fails_only_its_sends(backend: &dyn Backend) -> Result<()> {
    let Some(mut f) = CellsFixture::new(backend).await? else {
        return Ok(());
    };
    f.serve(Cell::One, "h1").await?;
    let client = f.client();
    let cell1 = f.cell1();
    // Cell 1 connected first, so what follows measures only the dead cells.
    client
        .cast_to_server(&ctx(), &cell1, "record", &json!({"value": "warm"}))
        .await?;
    f.next_record().await?;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    // Accepts connections and never answers.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let dead = Broker::url(&(f.cells.url_at)(closed))?;
    let hung = Broker::url(&(f.cells.url_at)(silent_addr))?;
    let send_timeout = f.client_transport.options().send_timeout;
    let call_timeout = Duration::from_secs(3);
    let slack = Duration::from_secs(2);

    let started = Instant::now();
    let hung_call = tokio::spawn({
        let client = client.prepare().broker(hung.clone()).timeout(call_timeout);
        async move {
            let result = client.call::<Value, _>(&ctx(), "whoami", &json!({})).await;
            (result.map(|_| ()), started.elapsed())
        }
    });
    let hung_cast = tokio::spawn({
        let client = client.clone();
        let hung = hung.clone();
        async move {
            let result = client
                .cast_to_server(&ctx(), &hung, "record", &json!({"value": "lost"}))
                .await;
            (result, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The live cell, while both sends above are stuck connecting.
    let live_started = Instant::now();
    for i in 0..3 {
        client
            .cast_to_server(&ctx(), &cell1, "record", &json!({"value": i}))
            .await?;
    }
    for _ in 0..3 {
        let (who, _) = f.next_record().await?;
        ensure!(who == "cell1/h1", "a cast to cell 1 reached {who}");
    }
    let who: String = client
        .prepare()
        .broker(cell1.clone())
        .call(&ctx(), "whoami", &json!({}))
        .await?;
    ensure!(who == "cell1/h1");
    let live = live_started.elapsed();
    ensure!(
        live < call_timeout - Duration::from_millis(500) && !hung_call.is_finished(),
        "sends to the live cell took {live:?}: they waited for the hung broker"
    );

    let (result, took) = hung_call.await?;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Timeout),
        "a call to a broker that never answers gave {result:?}"
    );
    ensure!(took < call_timeout + slack, "it took {took:?}");
    let (result, took) = hung_cast.await?;
    ensure!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::Timeout),
        "a cast to a broker that never answers gave {result:?}"
    );
    ensure!(took < send_timeout + slack, "it took {took:?}");

    let down = |e: &Error| matches!(e.kind(), ErrorKind::Unreachable | ErrorKind::Timeout);
    let started = Instant::now();
    let result = client
        .cast_to_server(&ctx(), &dead, "record", &json!({"value": "lost"}))
        .await;
    ensure!(
        matches!(&result, Err(e) if down(e)),
        "a cast to a closed port gave {result:?}"
    );
    ensure!(
        started.elapsed() < send_timeout + slack,
        "it took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let result = client
        .prepare()
        .broker(dead.clone())
        .timeout(call_timeout)
        .call::<Value, _>(&ctx(), "whoami", &json!({}))
        .await;
    ensure!(
        matches!(&result, Err(e) if down(e)),
        "a call to a closed port gave {result:?}"
    );
    ensure!(
        started.elapsed() < call_timeout + slack,
        "it took {:?}",
        started.elapsed()
    );
    // Calls made together before a transport knows its reply address wait
    // on one request for it; when that fails, each still gets its own
    // classified error within its timeout.
    let started = Instant::now();
    let calls = (0..20).map(|_| {
        let client = client.prepare().broker(dead.clone()).timeout(call_timeout);
        async move { client.call::<Value, _>(&ctx(), "whoami", &json!({})).await }
    });
    for result in futures::future::join_all(calls).await {
        ensure!(
            matches!(&result, Err(e) if down(e)),
            "one of 20 calls to a closed port gave {result:?}"
        );
    }
    ensure!(
        started.elapsed() < call_timeout + slack,
        "20 calls to a closed port took {:?}",
        started.elapsed()
    );

    client
        .cast_to_server(&ctx(), &cell1, "record", &json!({"value": "after"}))
        .await?;
    let (who, _) = f.next_record().await?;
    ensure!(
        who == "cell1/h1",
        "after the dead cells, a cast reached {who}"
    );
    holder.abort();
    let extra = f.drain_records(backend.settle_time()).await;
    ensure!(extra.is_empty(), "unexpected deliveries: {extra:?}");
    f.stop().await
}
