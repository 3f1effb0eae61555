//! Durable mode (`abacus serve --data-dir DIR`): registers and dedup records
//! in an embedded [redb](https://docs.rs/redb) database.

pub mod file;
