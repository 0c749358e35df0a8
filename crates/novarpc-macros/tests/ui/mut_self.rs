#[novarpc::service]
trait Compute {
    async fn ping(&mut self, ctx: &novarpc::Context) -> Result<String, novarpc::EndpointError>;
}

fn main() {}
