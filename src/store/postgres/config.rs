//! How to reach PostgreSQL and the bounds the ledger keeps: parsed from a
//! `postgres://` URL, printable without its password.

use std::{
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

/// Default most connections one replica opens.
pub const POOL_MAX_DEFAULT: usize = 16;

/// Default longest any one store call may take, whatever the caller's
/// deadline (a caller without a deadline still gets an answer): the store
/// guard's (see [`crate::store::guard::config::TIMEOUT_MS_DEFAULT`]), so
/// `--store-timeout-ms` means one thing.
pub const OP_TIMEOUT_DEFAULT: Duration =
    Duration::from_millis(crate::store::guard::config::TIMEOUT_MS_DEFAULT);

/// How long TCP may stay silent on a connection before the kernel probes
/// the server, then the interval and count of probes: a server (or the
/// path to it) that vanished silently is noticed in about 25 s instead of
/// Linux's default two hours and more, so a pooled connection to it is
/// dropped rather than handed out.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_RETRIES: u32 = 3;

/// The server-side bound on a transaction left idle by its client, from
/// the per-call bound: see [`PgConfig::idle_in_transaction_timeout`].
pub fn idle_in_transaction_timeout_for(op_timeout: Duration) -> Duration {
    op_timeout.saturating_mul(2)
}

/// Default longest the start-up connection attempt may take.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Where the ledger's notion of "now" comes from, for dedup retention.
#[derive(Debug, Clone, Default)]
pub enum RetentionClock {
    /// The database server's clock (`clock_timestamp()`), the same for every
    /// replica: a record's age does not depend on which replica looks.
    #[default]
    Database,
    /// A clock the caller moves by hand, so tests can expire records without
    /// waiting (see [`ManualClock`]).
    Manual(ManualClock),
}

/// A hand-moved clock in milliseconds, shared by clones.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// The current reading.
    pub fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl RetentionClock {
    /// The reading to pass to SQL, or `None` to let the database use its own
    /// clock.
    pub(crate) fn now_ms(&self) -> Option<i64> {
        match self {
            Self::Database => None,
            Self::Manual(clock) => Some(clock.now_ms()),
        }
    }
}

/// A PostgreSQL store's configuration. Build it with
/// [`PgConfig::from_url`]; the bounds have sane defaults.
#[derive(Clone)]
pub struct PgConfig {
    pub(crate) pg: tokio_postgres::Config,
    /// Most connections this process opens. A claim holds one from `begin`
    /// to `commit` (the row lock that makes other replicas wait lives in
    /// its transaction), so this also bounds concurrent executions.
    pub pool_max: usize,
    /// Longest one store call may take when the caller's deadline is
    /// further away (or absent).
    pub op_timeout: Duration,
    /// PostgreSQL's `idle_in_transaction_session_timeout` for every
    /// connection of the ledger: a transaction whose client stays silent
    /// this long is ended by the server, its session closed and its locks
    /// released. This is what frees a claim orphaned by a replica that
    /// vanished without closing its connection (a partition, a dead host):
    /// without it, the claim's row lock — and every retry of its request
    /// ID, through any replica — waits until TCP gives up, hours later. A
    /// live claim is never idle that long: with the store guard, a claim
    /// must commit within one `op_timeout` of its begin. Default twice
    /// `op_timeout` ([`idle_in_transaction_timeout_for`]); zero sets none
    /// (the server's own setting applies, by default none).
    pub idle_in_transaction_timeout: Duration,
    /// Longest the start-up connection and schema migration may take.
    pub connect_timeout: Duration,
    /// How often expired and surplus dedup records are deleted.
    pub sweep_interval: Duration,
    /// Most records one delete statement removes, so a sweep never holds
    /// many row locks or runs long.
    pub sweep_batch: u32,
    /// Where "now" comes from for retention.
    pub clock: RetentionClock,
}

impl fmt::Debug for PgConfig {
    // Not derived: tokio_postgres::Config's Debug redacts the password, but
    // one line naming the target is all a log needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("target", &self.target())
            .field("pool_max", &self.pool_max)
            .field("op_timeout", &self.op_timeout)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .field("sweep_interval", &self.sweep_interval)
            .field("sweep_batch", &self.sweep_batch)
            .field("clock", &self.clock)
            .finish()
    }
}

/// A `--store` value that is not a usable PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgUrlError {
    /// Neither `postgres://` nor `postgresql://`.
    #[error("a PostgreSQL store is given as postgres://USER:PASSWORD@HOST:PORT/DATABASE")]
    NotAUrl,
    /// The driver refused it; its message names the part, never the
    /// password's value.
    #[error("invalid PostgreSQL URL: {0}")]
    Invalid(String),
    /// No database name: the ledger will not guess one.
    #[error("the PostgreSQL URL names no database: add /DATABASE after the host")]
    NoDatabase,
}

impl PgConfig {
    /// Parses `postgres://user:password@host:port/database?options` (the
    /// libpq URL form, as `psql` takes it; `sslmode=disable` is the only TLS
    /// mode this build speaks).
    ///
    /// ```
    /// use abacus::store::postgres::PgConfig;
    /// let c = PgConfig::from_url("postgres://app:s3cret@db.local:6432/abacus").unwrap();
    /// assert_eq!(c.target(), "app@db.local:6432/abacus");
    /// assert!(!format!("{c:?}").contains("s3cret"));
    /// assert!(PgConfig::from_url("mysql://x@y/z").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, PgUrlError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(PgUrlError::NotAUrl);
        }
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            // The driver's parse errors name the option, not its value, but
            // scrub anyway: this text goes to a terminal.
            let text = e.to_string();
            PgUrlError::Invalid(redact(&text, url))
        })?;
        if pg.get_dbname().is_none() {
            return Err(PgUrlError::NoDatabase);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT_DEFAULT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("abacus");
        }
        Ok(Self {
            pg,
            pool_max: POOL_MAX_DEFAULT,
            op_timeout: OP_TIMEOUT_DEFAULT,
            idle_in_transaction_timeout: idle_in_transaction_timeout_for(OP_TIMEOUT_DEFAULT),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 1000,
            clock: RetentionClock::Database,
        })
    }

    /// The driver's configuration as the ledger connects with it: the URL's,
    /// plus TCP keepalives (unless the URL sets its own) and
    /// [`PgConfig::idle_in_transaction_timeout`] as a start-up option, so
    /// it holds from the session's first statement without a round trip.
    /// The URL's own `options` are kept; one that sets
    /// `idle_in_transaction_session_timeout` itself wins.
    pub(crate) fn session(&self) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        if pg.get_keepalives() && pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            // Still the driver's default (two hours): the URL set none.
            pg.keepalives_idle(KEEPALIVE_IDLE)
                .keepalives_interval(KEEPALIVE_INTERVAL)
                .keepalives_retries(KEEPALIVE_RETRIES);
        }
        let given = pg.get_options().unwrap_or("").to_owned();
        let ms = self.idle_in_transaction_timeout.as_millis();
        if ms > 0 && !given.contains("idle_in_transaction_session_timeout") {
            let ours = format!("-c idle_in_transaction_session_timeout={ms}");
            pg.options(if given.trim().is_empty() {
                ours
            } else {
                format!("{given} {ours}")
            });
        }
        pg
    }

    /// `user@host:port/database`: what to name in logs and errors (never
    /// the password).
    pub fn target(&self) -> String {
        use tokio_postgres::config::Host;
        let user = self.pg.get_user().unwrap_or("(default user)");
        let hosts = self.pg.get_hosts();
        let ports = self.pg.get_ports();
        let host = match hosts.first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = ports.first().copied().unwrap_or(5432);
        let db = self.pg.get_dbname().unwrap_or("");
        format!("{user}@{host}:{port}/{db}")
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.pg.get_dbname().unwrap_or("")
    }

    /// The user name, if the URL gives one.
    pub fn user(&self) -> Option<&str> {
        self.pg.get_user()
    }
}

/// `text` with the password of `url` (if any) replaced, in case a driver
/// message ever quotes it.
fn redact(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => text.replace(p, "***"),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_printed_with_their_password() {
        let c = PgConfig::from_url("postgresql://u:pw@127.0.0.1/db?sslmode=disable").unwrap();
        assert_eq!(c.target(), "u@127.0.0.1:5432/db");
        assert_eq!(c.dbname(), "db");
        assert!(!format!("{c:?}").contains("pw@"));
        assert!(matches!(
            PgConfig::from_url("memory"),
            Err(PgUrlError::NotAUrl)
        ));
        assert!(matches!(
            PgConfig::from_url("postgres://u:pw@h/"),
            Err(PgUrlError::NoDatabase)
        ));
        match PgConfig::from_url("postgres://u:hunter2@h:notaport/db") {
            Err(PgUrlError::Invalid(text)) => assert!(!text.contains("hunter2"), "{text}"),
            other => panic!("expected an invalid URL, got {other:?}"),
        }
        assert_eq!(
            redact("x hunter2 y", "postgres://u:hunter2@h/db"),
            "x *** y"
        );
    }

    #[test]
    fn sessions_bound_idle_transactions_and_probe_silent_peers() {
        let c = PgConfig::from_url("postgres://u:pw@h/db").unwrap();
        let s = c.session();
        assert_eq!(
            s.get_options(),
            Some("-c idle_in_transaction_session_timeout=4000")
        );
        assert_eq!(s.get_keepalives_idle(), KEEPALIVE_IDLE);
        // The URL's own options are kept; its own bound wins.
        let c = PgConfig::from_url(
            "postgres://u:pw@h/db?options=-c%20search_path%3Dapp&keepalives_idle=60",
        )
        .unwrap();
        let s = c.session();
        assert_eq!(
            s.get_options(),
            Some("-c search_path=app -c idle_in_transaction_session_timeout=4000")
        );
        assert_eq!(s.get_keepalives_idle(), Duration::from_secs(60));
        let c = PgConfig::from_url(
            "postgres://u:pw@h/db?options=-c%20idle_in_transaction_session_timeout%3D9",
        )
        .unwrap();
        assert_eq!(
            c.session().get_options(),
            Some("-c idle_in_transaction_session_timeout=9")
        );
    }
}
