//! The circuit breaker's decisions: [`config`] (settings, validation,
//! defaults) and [`policy`] (the state machine, no I/O). The client wraps
//! them in a tower layer per endpoint
//! ([`crate::client::breaker`]); see there for where the breaker sits and
//! why.

pub mod config;
pub mod policy;

pub use config::{BreakerConfig, BreakerConfigError, CodeSet};
pub use policy::{
    Admitted, BreakerPolicy, BreakerSnapshot, Counters, Rejected, State, Ticket, Transition,
    Transitions,
};
