//! `abacus serve --store …` as a user meets it: bad values and unreachable
//! or misconfigured servers end the process at once with a message naming
//! what to fix (never the password), and a good URL serves.

use std::{
    path::Path,
    process::{Command, Output},
};

use crate::{
    listening::Served,
    support::{closed_port::ClosedPort, pg},
};

const BIN: &str = env!("CARGO_BIN_EXE_abacus");

/// Runs `abacus serve` with `args` (and `env`) to its exit; bounded by the
/// connect timeout the ledger applies (5 s) — a serve that starts instead
/// would hang the test, so only failing invocations come here.
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(["--addr", "127.0.0.1:0"]).args(args);
    cmd.env_remove("ABACUS_STORE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output { status, stderr, .. } = cmd.output().expect("run abacus");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A fresh database (`None`: PostgreSQL tests skipped, loudly).
fn database(test: &str) -> Option<pg::TestDb> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(pg::fresh_database(test))
}

#[test]
fn bad_store_values_and_contradictions_are_refused_with_exit_2() {
    let (code, err) = serve_fails(&["--store", "mysql://u:pw@h/db"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("takes `memory` or a PostgreSQL URL"), "{err}");
    let (code, err) = serve_fails(&[], &[("ABACUS_STORE", "postgres://u:hunter2@h:nope/db")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid PostgreSQL URL") && !err.contains("hunter2"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("abacus-cli-store-{}", std::process::id()));
    let (code, err) = serve_fails(
        &["--store", "memory", "--data-dir", dir.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("two different stores"), "{err}");
    assert!(!dir.exists(), "nothing was opened");
}

#[test]
fn unreachable_servers_and_wrong_passwords_name_what_to_fix() {
    let Some(db) = database("cli_errors") else {
        return;
    };
    let closed_port = ClosedPort::new();
    let closed = closed_port.addr();
    let (code, err) = serve_fails(&["--store", &db.url_via(closed)], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot connect") && err.contains("check the host and port"),
        "{err}"
    );

    let (head, tail) = db.url.rsplit_once('@').unwrap();
    let (user, password) = head.rsplit_once(':').unwrap();
    let wrong = format!("{user}:x{password}@{tail}");
    let (code, err) = serve_fails(&["--store", &wrong], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the login") && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains(password), "the password was printed: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_good_url_serves_from_the_shared_database() {
    let Some(db) = database("cli_serves") else {
        return;
    };
    let mut command = Served::command(Path::new(BIN), "info");
    command.env("ABACUS_STORE", &db.url);
    let served = Served::from_command(command);
    served.addr();
    let log = served.logs();
    assert!(log.contains("PostgreSQL ledger ready"), "{log}");
    let (head, _) = db.url.rsplit_once('@').unwrap();
    let password = head.rsplit_once(':').unwrap().1;
    assert!(!log.contains(password), "the password was logged:\n{log}");
}

#[test]
fn the_demo_shows_two_replicas_over_a_real_database() {
    let Some(db) = database("cli_demo_store") else {
        return;
    };
    let out = Command::new(BIN)
        .args(["demo", "--store", &db.url])
        .env_remove("ABACUS_STORE")
        .output()
        .expect("run abacus demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in [
        "store: PostgreSQL at ",
        "replayed: the record replica A committed to the shared store",
        "=> applied once across two replicas",
        "0 surprise(s)",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    let (head, _) = db.url.rsplit_once('@').unwrap();
    let password = head.rsplit_once(':').unwrap().1;
    assert!(!stdout.contains(password) && !stderr.contains(password));
}
