//! Every statement the ledger sends, in one place, so their portability can
//! be read in one screen.
//!
//! Portability: standard SQL plus `INSERT … ON CONFLICT` (PostgreSQL,
//! CockroachDB and YugabyteDB all speak it), `nextval` on a sequence, and
//! `clock_timestamp()` when the database's clock is used. Types are `TEXT`,
//! `BIGINT`, `SMALLINT` and `DOUBLE PRECISION` only. No advisory locks, no
//! LISTEN/NOTIFY, no `ctid`: waiting for another replica's execution is the
//! unique key's row lock, bounded by `lock_timeout`.
//!
//! The statements of an `Accumulate` are public so that the benchmark
//! (`benches/postgres.rs`) runs exactly them through `pgbench`, the
//! ceiling the ledger is compared with.

/// "Now" in milliseconds since the epoch: the caller's reading if it passes
/// one (a test's hand-moved clock), else the database server's clock, which
/// every replica shares. `$N` is a nullable BIGINT.
macro_rules! now_ms {
    ($n:literal) => {
        concat!(
            "COALESCE(CAST($",
            $n,
            " AS BIGINT), CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))"
        )
    };
}

/// A record is dead (expired, or beyond the newest `entries_max`) when
/// `committed_ms <= now - ttl_ms` or `seq <= max(seq) - entries_max`: the
/// same rule the in-memory store applies, so a lookup never sees a record
/// the sweeper merely has not deleted yet.
macro_rules! dead {
    ($table:literal, $now:literal, $ttl:literal, $entries:literal) => {
        concat!(
            "(",
            $table,
            ".committed_ms <= ",
            now_ms!($now),
            " - $",
            $ttl,
            " OR ",
            $table,
            ".seq <= (SELECT max(seq) FROM abacus_requests) - $",
            $entries,
            ")"
        )
    };
}

/// Claims `(scope, id)` for this transaction: inserts a claim row, or takes
/// over a dead record's row. Returns a row when claimed, none when a live
/// record exists (then read it with [`RECORD`]). While another transaction
/// holds the same key uncommitted, this waits for it (the cross-replica
/// join), up to `lock_timeout`.
///
/// `$1` scope, `$2` id, `$3` fingerprint, `$4` now (nullable), `$5` TTL in
/// ms, `$6` entries_max.
pub const CLAIM: &str = concat!(
    "INSERT INTO abacus_requests AS r (scope, id, fingerprint) VALUES ($1, $2, $3) ",
    "ON CONFLICT (scope, id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, ",
    "seq = NULL, committed_ms = NULL, outcome = NULL, value = NULL WHERE ",
    dead!("r", "4", "5", "6"),
    " RETURNING 1"
);

/// A live record: `$1` scope, `$2` id.
pub(crate) const RECORD: &str =
    "SELECT fingerprint, outcome, value FROM abacus_requests WHERE scope = $1 AND id = $2";

/// Locks a register's row for the update: `$1` name.
pub const REGISTER_FOR_UPDATE: &str =
    "SELECT value FROM abacus_registers WHERE name = $1 FOR UPDATE";

/// Locks the register count: creating a register takes this lock, so the
/// `REGISTERS_MAX` bound holds across replicas exactly.
pub(crate) const COUNT_FOR_UPDATE: &str =
    "SELECT n FROM abacus_counters WHERE name = 'registers' FOR UPDATE";

/// `$1` name, `$2` new value.
pub const REGISTER_UPDATE: &str = "UPDATE abacus_registers SET value = $2 WHERE name = $1";

/// `$1` name, `$2` first value.
pub(crate) const REGISTER_INSERT: &str =
    "INSERT INTO abacus_registers (name, value) VALUES ($1, $2)";

/// One more register (under [`COUNT_FOR_UPDATE`]'s lock).
pub(crate) const COUNT_BUMP: &str = "UPDATE abacus_counters SET n = n + 1 WHERE name = 'registers'";

/// Turns the claim row into the record of its outcome, numbered in commit
/// order: `$1` scope, `$2` id, `$3` now (nullable), `$4` outcome, `$5`
/// value.
pub const RECORD_COMMIT: &str = concat!(
    "UPDATE abacus_requests SET seq = nextval('abacus_request_seq'), committed_ms = ",
    now_ms!("3"),
    ", outcome = $4, value = $5 WHERE scope = $1 AND id = $2"
);

/// `$1` name.
pub(crate) const GET: &str = "SELECT value FROM abacus_registers WHERE name = $1";

/// Register count and the span of record numbers (index-only reads).
pub(crate) const STATS: &str = "SELECT (SELECT n FROM abacus_counters WHERE name = 'registers'), \
     (SELECT min(seq) FROM abacus_requests), (SELECT max(seq) FROM abacus_requests)";

/// Deletes the dead among the `$1` oldest records: `$2` now (nullable),
/// `$3` TTL in ms, `$4` entries_max.
pub(crate) const SWEEP: &str = concat!(
    "DELETE FROM abacus_requests WHERE seq IN ",
    "(SELECT seq FROM abacus_requests WHERE seq IS NOT NULL ORDER BY seq LIMIT $1) AND ",
    dead!("abacus_requests", "2", "3", "4")
);

/// The schema, one list of idempotent statements per version. A version is
/// never edited once released: changes come as a new version.
pub(crate) const MIGRATIONS: &[&[&str]] = &[
    // Version 1.
    &[
        "CREATE TABLE IF NOT EXISTS abacus_registers (\
            name TEXT PRIMARY KEY, \
            value DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE IF NOT EXISTS abacus_counters (\
            name TEXT PRIMARY KEY, \
            n BIGINT NOT NULL)",
        "INSERT INTO abacus_counters (name, n) VALUES ('registers', 0) \
            ON CONFLICT (name) DO NOTHING",
        // seq, committed_ms, outcome and value are NULL only while the row
        // is a claim, which no other transaction can see.
        "CREATE TABLE IF NOT EXISTS abacus_requests (\
            scope TEXT NOT NULL, \
            id TEXT NOT NULL, \
            fingerprint BIGINT NOT NULL, \
            seq BIGINT, \
            committed_ms BIGINT, \
            outcome SMALLINT, \
            value DOUBLE PRECISION, \
            PRIMARY KEY (scope, id))",
        "CREATE SEQUENCE IF NOT EXISTS abacus_request_seq",
        "CREATE INDEX IF NOT EXISTS abacus_requests_by_seq ON abacus_requests (seq)",
    ],
];

/// Where the applied versions are listed.
pub(crate) const VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS abacus_schema_version (version INTEGER PRIMARY KEY)";

/// The newest version applied.
pub(crate) const VERSION_READ: &str = "SELECT max(version) FROM abacus_schema_version";

/// Marks `$1` applied (by whichever replica gets there first).
pub(crate) const VERSION_MARK: &str =
    "INSERT INTO abacus_schema_version (version) VALUES ($1) ON CONFLICT (version) DO NOTHING";
