#[novarpc::service]
trait Compute {
    #[rpc(fanout)]
    async fn ping(&self, ctx: &novarpc::Context) -> Result<String, novarpc::EndpointError>;
}

fn main() {}
