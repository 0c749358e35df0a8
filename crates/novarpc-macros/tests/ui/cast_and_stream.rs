#[novarpc::service]
trait Compute {
    #[rpc(cast, stream)]
    fn progress(&self, ctx: &novarpc::Context) -> novarpc::RpcStream<u32, novarpc::EndpointError>;
}

fn main() {}
