#[novarpc::service(namespace = "compute", version = "one")]
trait Compute {
    async fn ping(&self, ctx: &novarpc::Context) -> Result<String, novarpc::EndpointError>;
}

fn main() {}
