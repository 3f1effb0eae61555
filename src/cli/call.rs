//! `abacus call`: one RPC against a running server, printed for humans.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::{
    cli::client_args::ClientArgs,
    client::{CallError, Client},
};

/// Arguments of `abacus call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Server address, or several comma-separated replicas (A,B,C); a host
    /// name resolving to several addresses is one endpoint per address. A
    /// failed attempt is retried on another replica.
    #[arg(long, default_value = "127.0.0.1:50051", global = true)]
    pub addr: String,
    /// Client policy.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The RPC.
    #[command(subcommand)]
    pub rpc: Rpc,
}

/// One RPC and its arguments.
#[derive(Debug, Clone, Subcommand)]
pub enum Rpc {
    /// A + B
    Add(Operands),
    /// A - B
    #[command(alias = "sub")]
    Subtract(Operands),
    /// A * B
    #[command(alias = "mul")]
    Multiply(Operands),
    /// A / B
    #[command(alias = "div")]
    Divide(Operands),
    /// Add DELTA to a register (created at 0). Not idempotent.
    #[command(alias = "acc")]
    Accumulate {
        /// Register name (1..=64 bytes).
        #[arg(long, short)]
        register: String,
        /// Amount to add.
        #[arg(allow_negative_numbers = true)]
        delta: f64,
        /// Request ID to send (reuse it to see the server replay).
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Read a register.
    Get {
        /// Register name.
        register: String,
    },
    /// Remove a register (writers only). Idempotent: deleting a register
    /// that does not exist says so and succeeds. Dedup records of earlier
    /// accumulates into it are kept: a retry of one replays and does not
    /// re-create it. Gives the register's creator its quota back.
    #[command(alias = "del")]
    Delete {
        /// Register name.
        register: String,
    },
    /// Show the server's counters (applied updates, dedup store).
    Stats,
}

/// Two operands.
#[derive(Debug, Clone, Args)]
pub struct Operands {
    /// First operand.
    #[arg(allow_negative_numbers = true)]
    pub a: f64,
    /// Second operand.
    #[arg(allow_negative_numbers = true)]
    pub b: f64,
}

/// Makes the call and prints its result or error.
pub async fn run(args: CallArgs) -> ExitCode {
    super::init_logging("warn");
    let client = match args.client.connect(&args.addr).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match execute(&client, &args.rpc).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `rpc` and renders its result as one line.
pub async fn execute(client: &Client, rpc: &Rpc) -> Result<String, CallError> {
    Ok(match rpc {
        Rpc::Add(o) => format!("{} + {} = {}", o.a, o.b, client.add(o.a, o.b).await?),
        Rpc::Subtract(o) => format!("{} - {} = {}", o.a, o.b, client.subtract(o.a, o.b).await?),
        Rpc::Multiply(o) => format!("{} * {} = {}", o.a, o.b, client.multiply(o.a, o.b).await?),
        Rpc::Divide(o) => format!("{} / {} = {}", o.a, o.b, client.divide(o.a, o.b).await?),
        Rpc::Accumulate {
            register,
            delta,
            request_id,
        } => {
            let (value, replayed) = client
                .accumulate_with_id(register, *delta, request_id)
                .await?;
            format!(
                "{register} += {delta} -> {value}{}",
                if replayed {
                    " (replayed by the server: not applied again)"
                } else {
                    ""
                }
            )
        }
        Rpc::Get { register } => format!("{register} = {}", client.get(register).await?),
        Rpc::Delete { register } => match client.delete(register).await? {
            Some(value) => format!("{register} deleted (it held {value})"),
            None => format!("{register} does not exist: nothing to delete"),
        },
        Rpc::Stats => format!("{}", crate::client::Reply::Stats(client.stats().await?)),
    })
}

#[cfg(test)]
mod tests {
    use clap::Subcommand as _;

    use super::*;
    use crate::rpc::Method;

    /// `abacus call`'s subcommands are the RPCs under the short names of
    /// `rpc::Method`'s table, one each, none missing.
    #[test]
    fn subcommands_are_the_method_table() {
        let command = Rpc::augment_subcommands(clap::Command::new("call"));
        let mut names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
        let mut table: Vec<&str> = Method::ALL.iter().map(|m| m.short_name()).collect();
        names.sort_unstable();
        table.sort_unstable();
        assert_eq!(names, table);
    }
}
