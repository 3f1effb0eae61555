//! A throwaway PostgreSQL for the tests, started by the tests themselves.
//!
//! One cluster per test binary, started on first use: `initdb` and
//! `pg_ctl start` in a private temporary directory, listening on a free
//! loopback port and a private socket directory, with password (SCRAM)
//! authentication over TCP. PostgreSQL refuses to run as root, so as root
//! it runs as the `postgres` system user (`runuser`). A small shell wrapper
//! owns it: the wrapper's standard input is a pipe from this process, and
//! when the pipe closes — this process exiting in any way, SIGKILL included
//! — it stops the cluster and deletes its directory. The cluster therefore
//! never outlives the tests.
//!
//! Each test gets its own database ([`fresh_database`]), so tests run in
//! parallel on one cluster. A test that stops PostgreSQL gets a cluster of
//! its own ([`Cluster::private`]), which it can stop and start again: the
//! wrapper takes `stop` and `start` lines on its standard input and answers
//! `stopped` and `started` once `pg_ctl` has waited for the server.
//!
//! Environment:
//! - `ABACUS_TEST_PG_URL=postgres://USER:PASSWORD@HOST:PORT/DB`: use that
//!   server instead (the user must be allowed to create databases).
//! - `ABACUS_PG_BIN=DIR`: where `initdb` and `pg_ctl` are (default: the
//!   newest `/usr/lib/postgresql/*/bin`).
//! - `ABACUS_SKIP_PG=1`: skip the PostgreSQL tests, saying so. Without it a
//!   test that cannot get a server **fails**, naming what is missing. CI
//!   never sets it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::PathBuf,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

/// The wrapper: `$1` bin dir, `$2` port, `$3` `fast` (no fsync: tests) or
/// `durable` (PostgreSQL's defaults: benchmarks); the password arrives as
/// the first line of stdin; prints `ready` once the server accepts
/// connections, then serves `stop` and `start` lines until stdin closes.
const WRAPPER: &str = r#"
set -u
bin="$1"; port="$2"; mode="$3"
fast="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
[ "$mode" = durable ] && fast=""
dir=$(mktemp -d /tmp/abacus-test-pg.XXXXXX) || exit 1
cleanup() {
  "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM HUP
IFS= read -r pw || exit 1
umask 077
printf '%s\n' "$pw" > "$dir/pw"
"$bin/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pw" \
  --auth-local=trust --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C \
  >"$dir/initdb.log" 2>&1 || { echo "initdb failed:" >&2; cat "$dir/initdb.log" >&2; exit 1; }
rm -f "$dir/pw"
start() {
  "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 $fast" \
    start >/dev/null 2>&1
}
start || { echo "postgres did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
echo ready
while IFS= read -r cmd; do
  case "$cmd" in
    stop) "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 && echo stopped || echo failed ;;
    start) start && echo started || echo failed ;;
  esac
done
"#;

/// The server the tests use.
struct Server {
    /// `postgres://…/` without a database name.
    base: String,
    /// A database the admin connection may use to create others.
    admin_db: String,
    /// The wrapper's stdin and stdout, held for the life of the process
    /// (closing them stops the cluster); `None` for `ABACUS_TEST_PG_URL`.
    pipes: Option<Mutex<(ChildStdin, BufReader<ChildStdout>)>>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// True when the PostgreSQL tests are switched off by `ABACUS_SKIP_PG=1`
/// (printed, so the skip is never silent).
pub(crate) fn skipped(test: &str) -> bool {
    let skip = std::env::var("ABACUS_SKIP_PG").is_ok_and(|v| v == "1");
    if skip {
        // Straight to stderr, not eprintln!: the test harness captures the
        // latter for passing tests, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: ABACUS_SKIP_PG=1 switches the PostgreSQL tests off"
        );
    }
    skip
}

fn server() -> &'static Server {
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(why) => panic!(
            "this test needs PostgreSQL and could not get one: {why}\n\
             Fix: install PostgreSQL (Debian: apt-get install postgresql), or set \
             ABACUS_TEST_PG_URL=postgres://USER:PASSWORD@HOST:PORT/DB to use a running server \
             (the user must be allowed to create databases), or set ABACUS_SKIP_PG=1 to skip \
             the PostgreSQL tests."
        ),
    }
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var("ABACUS_TEST_PG_URL") {
        let (base, db) = url
            .rsplit_once('/')
            .filter(|(base, _)| base.contains("://"))
            .ok_or("ABACUS_TEST_PG_URL must end in /DATABASE")?;
        let db = db.split('?').next().unwrap_or(db);
        return Ok(Server {
            base: format!("{base}/"),
            admin_db: db.to_owned(),
            pipes: None,
        });
    }
    let bin = bin_dir()?;
    // A port is free when probed; another process could take it before
    // PostgreSQL binds it, so a failed start is tried again on another.
    let mut last = String::new();
    for _ in 0..3 {
        match start_cluster(&bin, Durability::Fast) {
            Ok(server) => return Ok(server),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Whether a cluster syncs its commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// No fsync: tests, which measure nothing.
    Fast,
    /// PostgreSQL's defaults: benchmarks, whose ceiling is a real commit.
    #[allow(dead_code)] // benches/postgres.rs, which includes this file
    Durable,
}

fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("ABACUS_PG_BIN") {
        return Ok(dir.into());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no PostgreSQL installation under /usr/lib/postgresql".to_owned())?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_owned())
}

fn is_root() -> bool {
    // Read from /proc rather than through libc: the crate forbids unsafe.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start_cluster(bin: &std::path::Path, durability: Durability) -> Result<Server, String> {
    let port = free_port()?;
    let mut cmd = if is_root() {
        // PostgreSQL will not run as root.
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new("env")
    };
    cmd.args(["sh", "-c", WRAPPER, "abacus-test-pg"])
        .arg(bin)
        .arg(port.to_string())
        .arg(match durability {
            Durability::Fast => "fast",
            Durability::Durable => "durable",
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run the cluster wrapper ({cmd:?}): {e}"))?;
    let password = format!("{:032x}", rand::random::<u128>());
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    writeln!(stdin, "{password}").map_err(|e| format!("wrapper gone: {e}"))?;
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    // The wrapper prints `ready` once pg_ctl saw the server accept
    // connections, or exits with the reason on stderr.
    let _ = stdout.read_line(&mut line);
    if line.trim() != "ready" {
        let mut why = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut why);
        }
        let _ = child.wait();
        if why.contains("runuser") || why.contains("user postgres does not exist") {
            why.push_str(" (as root, the cluster runs as the `postgres` user)");
        }
        return Err(format!(
            "the throwaway cluster did not start: {}",
            why.trim()
        ));
    }
    // The child handle itself is dropped (not killed): the wrapper lives
    // on, bound to this process by its stdin.
    Ok(Server {
        base: format!("postgres://postgres:{password}@127.0.0.1:{port}/"),
        admin_db: "postgres".into(),
        pipes: Some(Mutex::new((stdin, stdout))),
    })
}

/// A cluster of one test's own, which it may stop and start; stopped and
/// deleted when dropped (its wrapper's stdin closes).
pub(crate) struct Cluster(Server);

impl Cluster {
    /// Starts a private cluster; `None` only when the PostgreSQL tests are
    /// skipped. Needs the server binaries: `ABACUS_TEST_PG_URL` names a
    /// server the test could not stop, so it is not used here.
    pub(crate) fn private(test: &str) -> Option<Cluster> {
        if skipped(test) {
            return None;
        }
        Some(Self::new(test, Durability::Fast))
    }

    /// Starts a private cluster with `durability`, or panics saying why.
    pub(crate) fn new(test: &str, durability: Durability) -> Cluster {
        let started = bin_dir().and_then(|bin| {
            let mut last = String::new();
            for _ in 0..3 {
                match start_cluster(&bin, durability) {
                    Ok(server) => return Ok(server),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        match started {
            Ok(server) => Cluster(server),
            Err(why) => panic!(
                "{test} needs a PostgreSQL cluster of its own (it stops and starts it) and could not \
                 start one: {why}\nFix: install PostgreSQL (Debian: apt-get install postgresql), or \
                 set ABACUS_SKIP_PG=1 to skip the PostgreSQL tests."
            ),
        }
    }

    /// A fresh database on this cluster.
    pub(crate) async fn database(&self, test: &str) -> TestDb {
        database_on(&self.0, test).await
    }

    /// The directory of the server binaries (`pgbench` among them).
    #[allow(dead_code)] // benches/postgres.rs, which includes this file
    pub(crate) fn bin_dir() -> Result<PathBuf, String> {
        bin_dir()
    }

    /// Stops PostgreSQL (`pg_ctl stop -m fast`: sessions are ended, as in a
    /// restart); returns once it is down.
    pub(crate) async fn stop(&self) {
        self.command("stop", "stopped").await;
    }

    /// Starts it again; returns once it accepts connections.
    pub(crate) async fn start(&self) {
        self.command("start", "started").await;
    }

    async fn command(&self, command: &'static str, answer: &'static str) {
        let pipes = self.0.pipes.as_ref().expect("a private cluster has pipes");
        // Blocking pipe I/O (pg_ctl waits for the server): on a thread of
        // its own, so the test's runtime keeps serving its connections.
        let reply = tokio::task::block_in_place(|| {
            let mut pipes = pipes.lock().unwrap();
            writeln!(pipes.0, "{command}").expect("the cluster wrapper is alive");
            let mut line = String::new();
            let _ = pipes.1.read_line(&mut line);
            line
        });
        assert_eq!(reply.trim(), answer, "pg_ctl {command}");
    }
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub(crate) struct TestDb {
    /// Its URL, password included.
    pub(crate) url: String,
    /// Its name.
    pub(crate) name: String,
}

impl TestDb {
    /// The same database through another host and port (a proxy).
    pub(crate) fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let (scheme_user, rest) = self.url.rsplit_once('@').expect("URL with credentials");
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        format!("{scheme_user}@{addr}/{path}")
    }
}

/// A URL to a fresh, empty database; `None` only when the PostgreSQL tests
/// are skipped (`ABACUS_SKIP_PG=1`). Starts the cluster on first use.
pub(crate) async fn fresh_database(test: &str) -> Option<TestDb> {
    if skipped(test) {
        return None;
    }
    // Blocks this test's thread for the cluster's start-up (a few seconds,
    // once per binary); other tests wait on the same OnceLock.
    Some(database_on(server(), test).await)
}

async fn database_on(server: &Server, test: &str) -> TestDb {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let tag: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!(
        "t_{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin_url = format!("{}{}?sslmode=disable", server.base, server.admin_db);
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    drop(client);
    let _ = driver.await;
    TestDb {
        url: format!("{}{name}?sslmode=disable", server.base),
        name,
    }
}

/// A plain connection to `db`, for a test's own checks.
pub(crate) async fn connect(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", db.name));
    tokio::spawn(connection);
    client
}
