//! The stores against real engines: the PostgreSQL ledger on a throwaway
//! cluster the tests start themselves (see `support/pg.rs`; fails loudly
//! when none can be had, unless `ABACUS_SKIP_PG=1`), and the conformance
//! test that runs one generated operation sequence against every backend.
//!
//! One test binary, so one cluster serves every test; each test has its own
//! database.

mod support {
    #[path = "../../support/closed_port.rs"]
    pub(crate) mod closed_port;
    pub(crate) mod pg;
    pub(crate) mod proxy;
    #[path = "../../support/temp_dir.rs"]
    pub(crate) mod temp_dir;
}

#[path = "../support/listening.rs"]
mod listening;

mod cli;
mod conformance;
mod guard;
mod identity;
mod isolation;
mod postgres;
mod replicas;
