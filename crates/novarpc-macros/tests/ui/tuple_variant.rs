#[derive(Debug, novarpc::RemoteError)]
enum ComputeError {
    NotFound(String),
}

impl std::fmt::Display for ComputeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

fn main() {}
