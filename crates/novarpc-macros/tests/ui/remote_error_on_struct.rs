#[derive(Debug, novarpc::RemoteError)]
struct ComputeError {
    instance: String,
}

fn main() {}
