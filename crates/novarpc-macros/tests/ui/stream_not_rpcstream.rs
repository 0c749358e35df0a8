#[novarpc::service]
trait Compute {
    #[rpc(stream)]
    fn progress(&self, ctx: &novarpc::Context) -> Result<Vec<u32>, novarpc::EndpointError>;
}

fn main() {}
