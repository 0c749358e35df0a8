#[novarpc::service]
trait Compute {
    async fn _reset(&self, ctx: &novarpc::Context) -> Result<(), novarpc::EndpointError>;
}

fn main() {}
