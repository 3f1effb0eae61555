//! The `abacus` binary: everything is in the library's `cli` module.

fn main() -> std::process::ExitCode {
    abacus::cli::main()
}
