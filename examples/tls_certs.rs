//! Writes a throwaway CA, server and client certificates into a directory,
//! for `tests/interop/run.sh` and for trying TLS by hand:
//!
//! ```sh
//! cargo run --example tls_certs -- /tmp/abacus-certs
//! abacus serve --tls-cert /tmp/abacus-certs/server.pem --tls-key /tmp/abacus-certs/server.key
//! abacus call --tls-ca /tmp/abacus-certs/ca.pem add 2 3
//! ```
//!
//! The certificates are for `localhost` and `127.0.0.1` only: for testing,
//! never for a deployment.

#[path = "../tests/support/certs.rs"]
mod certs;

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: tls_certs DIR");
        return std::process::ExitCode::from(2);
    };
    match certs::Pki::generate().write_to(std::path::Path::new(&dir)) {
        Ok(dir) => {
            println!("{}", dir.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: cannot write certificates into {}: {e}",
                dir.to_string_lossy()
            );
            std::process::ExitCode::FAILURE
        }
    }
}
