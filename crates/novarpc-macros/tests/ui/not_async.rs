#[novarpc::service]
trait Compute {
    fn ping(&self, ctx: &novarpc::Context) -> Result<String, novarpc::EndpointError>;
}

fn main() {}
