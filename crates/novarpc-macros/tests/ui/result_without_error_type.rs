type Result<T> = std::result::Result<T, novarpc::EndpointError>;

#[novarpc::service]
trait Compute {
    async fn ping(&self, ctx: &novarpc::Context) -> Result<String>;
}

fn main() {}
