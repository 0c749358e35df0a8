#[novarpc::service]
trait Compute {
    async fn reboot(&self, ctx: &novarpc::Context, instance: &str) -> Result<(), novarpc::EndpointError>;
}

fn main() {}
