#[novarpc::service(version = "1.0")]
trait Compute {
    async fn ping(&self) -> Result<String, novarpc::EndpointError>;
}

fn main() {}
