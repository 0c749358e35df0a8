#[novarpc::service]
trait Compute {
    async fn get_console_output(&self, ctx: &novarpc::Context, instance: String) -> Result<String, novarpc::EndpointError>;
}

async fn caller(client: ComputeClient) {
    let _ = client.get_console_output(&novarpc::Context::new(), 42).await;
}

fn main() {}
