//! The scenarios' tests, grouped by what they prove. Each names its
//! scenario from [`abacus_sims::catalogue`] (or builds a variant inline)
//! and states what it must show, on top of the invariants every run is
//! checked against.

mod aware;
mod basic;
mod breaker;
mod controls;
mod dedup;
mod delivery;
mod determinism;
mod disk;
mod explore;
mod model;
mod probes;
mod recovery;
mod replay;
mod replicated;
mod skew;
mod store_cascade;
mod swarm;
