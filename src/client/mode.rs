//! Delivery semantics: what the client promises about how many times a
//! request takes effect. The mode decides whether a failure whose outcome is
//! unknown may be retried, and whether mutating calls get request IDs.

use std::fmt;

/// How many times a mutating request may take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Delivery {
    /// Never re-send a request that may have reached the server. A failure
    /// whose outcome is unknown is reported as such, not retried. Effect: 0
    /// or 1 times.
    AtMostOnce,
    /// Retry until success, the deadline or the retry budget. Without server
    /// deduplication a mutating request may take effect more than once.
    AtLeastOnce,
    /// At-least-once delivery plus a request ID per logical call, reused on
    /// every retry, that the server deduplicates: the effect happens once.
    #[default]
    ExactlyOnce,
}

impl Delivery {
    /// True when the client retries failures whose outcome is unknown.
    pub fn retries_unknown_outcomes(self) -> bool {
        !matches!(self, Self::AtMostOnce)
    }

    /// True when the client attaches request IDs to mutating calls.
    pub fn attaches_request_ids(self) -> bool {
        matches!(self, Self::ExactlyOnce)
    }

    /// The flag spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::AtMostOnce => "at-most-once",
            Self::AtLeastOnce => "at-least-once",
            Self::ExactlyOnce => "exactly-once",
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
