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

/// A record is dead when `committed_ms <= now - ttl_ms` (expired) or when
/// its owner has committed `entries` newer records (beyond its newest
/// `entries_per_client_max`): the per-client rule the in-memory store
/// applies, so a lookup never sees a record the sweeper merely has not
/// deleted yet, and one client's records never push out another's. The
/// count walks the `(owner, seq)` index upward from the record and stops
/// at `entries`: cheap for the recent records retries look up.
macro_rules! dead {
    ($table:literal, $now:literal, $ttl:literal, $entries:literal) => {
        concat!(
            "(",
            $table,
            ".committed_ms <= ",
            now_ms!($now),
            " - $",
            $ttl,
            " OR EXISTS (SELECT 1 FROM abacus_requests o WHERE o.owner = ",
            $table,
            ".owner AND o.seq > ",
            $table,
            ".seq ORDER BY o.seq OFFSET (CAST($",
            $entries,
            " AS BIGINT) - 1) LIMIT 1))"
        )
    };
}

/// Claims `(scope, id)` for this transaction: inserts a claim row, or takes
/// over a dead record's row. Returns a row when claimed, none when a live
/// record exists (then read it with `RECORD`). While another transaction
/// holds the same key uncommitted, this waits for it (the cross-replica
/// join), up to `lock_timeout`.
///
/// `$1` scope, `$2` id, `$3` fingerprint, `$4` now (nullable), `$5` TTL in
/// ms, `$6` entries_per_client_max, `$7` owner (the caller's quota key).
pub const CLAIM: &str = concat!(
    "INSERT INTO abacus_requests AS r (scope, id, fingerprint, owner) VALUES ($1, $2, $3, $7) ",
    "ON CONFLICT (scope, id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, ",
    "owner = EXCLUDED.owner, ",
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

/// `$1` name, `$2` first value, `$3` owner (the creator's quota key).
pub(crate) const REGISTER_INSERT: &str =
    "INSERT INTO abacus_registers (name, value, owner) VALUES ($1, $2, $3)";

/// Registers `$1` (an owner) created that still exist; read under
/// [`COUNT_FOR_UPDATE`]'s lock, which every creation and removal takes, so
/// the per-client quota holds across replicas exactly.
pub(crate) const OWNER_COUNT: &str = "SELECT count(*) FROM abacus_registers WHERE owner = $1";

/// Removes register `$1`, answering its last value (no row: it did not
/// exist). Under [`COUNT_FOR_UPDATE`]'s lock.
pub(crate) const REGISTER_DELETE: &str =
    "DELETE FROM abacus_registers WHERE name = $1 RETURNING value";

/// One register fewer (under [`COUNT_FOR_UPDATE`]'s lock).
pub(crate) const COUNT_DROP: &str = "UPDATE abacus_counters SET n = n - 1 WHERE name = 'registers'";

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
/// `$3` TTL in ms, `$4` entries_per_client_max. One row per record
/// deleted: true when it was still inside its TTL (deleted to keep its
/// client within bounds).
pub(crate) const SWEEP: &str = concat!(
    "DELETE FROM abacus_requests WHERE seq IN ",
    "(SELECT seq FROM abacus_requests WHERE seq IS NOT NULL ORDER BY seq LIMIT $1) AND ",
    dead!("abacus_requests", "2", "3", "4"),
    " RETURNING committed_ms > ",
    now_ms!("2"),
    " - $3"
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
    // Version 2: who created each register (the per-client quota; NULL for
    // registers created before, which count against no one).
    &[
        "ALTER TABLE abacus_registers ADD COLUMN IF NOT EXISTS owner TEXT",
        "CREATE INDEX IF NOT EXISTS abacus_registers_by_owner ON abacus_registers (owner)",
        // Whom each dedup record is charged to (retention per client).
        "ALTER TABLE abacus_requests ADD COLUMN IF NOT EXISTS owner TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX IF NOT EXISTS abacus_requests_by_owner ON abacus_requests (owner, seq)",
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

#[cfg(test)]
mod tests {
    //! The portability promise, checked: the issue's list of what the
    //! distributed engines that speak PostgreSQL's protocol lack, looked for
    //! in every statement above and in every string literal of the module's
    //! code (the inline `BEGIN`, `SET LOCAL`, `COMMIT`).

    use super::*;

    /// Column types every target engine has.
    const TYPES: &[&str] = &["TEXT", "BIGINT", "SMALLINT", "DOUBLE PRECISION", "INTEGER"];

    /// What is not portable in `sql`, one line per finding.
    fn problems(sql: &str) -> Vec<String> {
        let mut found = Vec::new();
        for word in sql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(str::to_ascii_uppercase)
        {
            // Advisory locks, pg_notify, pg_sleep, catalogs: PostgreSQL's own.
            if word.starts_with("PG_")
                || ["LISTEN", "UNLISTEN", "NOTIFY", "CTID", "XMIN", "OID"].contains(&word.as_str())
            {
                found.push(format!("{word} in {sql}"));
            }
        }
        if sql.contains("::") {
            found.push(format!("a `::` cast (use CAST) in {sql}"));
        }
        let upper = sql.to_ascii_uppercase();
        if upper.starts_with("CREATE TABLE") {
            for column in columns(&upper) {
                let ty = column.split_once(' ').map_or("", |(_, rest)| rest);
                if !column.starts_with("PRIMARY KEY") && !TYPES.iter().any(|t| ty.starts_with(t)) {
                    found.push(format!("column type not on the portable list: {column}"));
                }
            }
        }
        found
    }

    /// The top-level comma-separated items inside a `CREATE TABLE`'s
    /// parentheses.
    fn columns(create: &str) -> Vec<String> {
        let (Some(open), Some(close)) = (create.find('('), create.rfind(')')) else {
            return Vec::new();
        };
        let (mut items, mut item, mut depth) = (Vec::new(), String::new(), 0);
        for c in create[open + 1..close].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(item.trim().to_owned());
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item.trim().to_owned());
        items
    }

    /// The string literals on the code lines (not comments) of `source`.
    fn literals(source: &str) -> Vec<String> {
        source
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//"))
            .flat_map(|l| {
                l.split('"')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_statement_is_portable() {
        let mut statements = vec![
            CLAIM,
            RECORD,
            REGISTER_FOR_UPDATE,
            COUNT_FOR_UPDATE,
            REGISTER_UPDATE,
            REGISTER_INSERT,
            OWNER_COUNT,
            REGISTER_DELETE,
            COUNT_DROP,
            COUNT_BUMP,
            RECORD_COMMIT,
            GET,
            STATS,
            SWEEP,
            VERSION_TABLE,
            VERSION_READ,
            VERSION_MARK,
        ];
        statements.extend(MIGRATIONS.iter().flat_map(|v| v.iter().copied()));
        let mut found: Vec<String> = statements.iter().flat_map(|s| problems(s)).collect();
        for source in [
            include_str!("mod.rs"),
            include_str!("claim.rs"),
            include_str!("conn.rs"),
            include_str!("delete.rs"),
            include_str!("failure.rs"),
            include_str!("flights.rs"),
            include_str!("schema.rs"),
            include_str!("sweep.rs"),
        ] {
            found.extend(literals(source).iter().flat_map(|s| problems(s)));
        }
        assert!(found.is_empty(), "not portable:\n{}", found.join("\n"));
        // The check saw the tables it vouches for.
        let created = MIGRATIONS[0]
            .iter()
            .filter(|s| s.starts_with("CREATE TABLE"))
            .count();
        assert_eq!(created, 3);
    }

    #[test]
    fn the_check_finds_what_it_forbids() {
        for bad in [
            "SELECT pg_advisory_xact_lock(1)",
            "LISTEN abacus",
            "NOTIFY abacus, 'x'",
            "SELECT pg_notify('abacus', 'x')",
            "DELETE FROM t WHERE ctid IN (SELECT ctid FROM t LIMIT 10)",
            "SELECT $1::bigint",
            "CREATE TABLE t (a TEXT PRIMARY KEY, b JSONB)",
            "CREATE TABLE t (a SERIAL, b TEXT)",
            "CREATE TABLE t (a TIMESTAMPTZ NOT NULL)",
        ] {
            assert!(!problems(bad).is_empty(), "missed: {bad}");
        }
        assert!(
            problems("CREATE TABLE t (a TEXT NOT NULL, b DOUBLE PRECISION, PRIMARY KEY (a, b))")
                .is_empty()
        );
        assert_eq!(
            literals("// \"LISTEN\" in a comment\nlet s = \"BEGIN\"; f(\"COMMIT\");"),
            ["BEGIN", "COMMIT"]
        );
    }
}
