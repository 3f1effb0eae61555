//! gRPC vs REST benchmark (written in the next commit).

fn main() {}
