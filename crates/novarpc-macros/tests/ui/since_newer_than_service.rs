#[novarpc::service(version = "1.3")]
trait Compute {
    #[rpc(since = "1.4")]
    async fn ping(&self, ctx: &novarpc::Context) -> Result<String, novarpc::EndpointError>;
}

fn main() {}
