//! [`Limits`]: what one peer may make the server hold, on both fronts.
//!
//! Every resource a client can make the server allocate has a bound here,
//! because each one without a bound was an attack: streams pipelined on one
//! connection behind a zero flow-control window (memory grows per stream),
//! `Health/Watch` streams that never end, sockets that connect and send
//! nothing (every slot taken), a file-descriptor limit reached with the
//! accept loop spinning. The README's "Operations" section states the
//! defaults and the memory they bound; `docs/operations.md` has the
//! measurements.

use std::time::Duration;

/// Limits shared by the gRPC front and the REST twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, per front. A connection accepted beyond it
    /// is closed at once (the peer sees the connection end, not a hang) and
    /// counted in a rate-limited log line. `abacus serve` lowers it below
    /// the process's file-descriptor limit ([`connections_max_for_fds`]),
    /// so the cap is met before `accept` starts failing.
    pub connections_max: usize,
    /// Longest a new connection may stay silent: no byte from the peer
    /// within this time of accepting it, and it is closed. This is what
    /// frees the slots of sockets opened and left idle.
    pub first_byte_timeout: Duration,
    /// Longest a connection may go with no byte read or written; then it is
    /// closed. HTTP/2 keepalive pings (below) keep a live peer's connection
    /// busy, so this closes idle HTTP/1.1 keep-alive connections, stalled
    /// handshakes and peers that stopped reading. Must exceed the keepalive
    /// interval plus its timeout.
    pub idle_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: streams one connection may
    /// have open. Beyond it the peer's new streams are refused
    /// (`REFUSED_STREAM`, safe to retry). tonic leaves it unlimited by
    /// default, which let one connection hold 100,000 streams.
    pub h2_streams_max: u32,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`, in bytes: the largest
    /// request head (metadata included) a peer may send.
    pub h2_header_list_bytes_max: u32,
    /// HTTP/2 initial stream window: request bytes one stream may send
    /// before the server reads them. Four times the largest message.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 initial connection window: request bytes all streams of one
    /// connection may send before the server reads them.
    pub h2_connection_window_bytes: u32,
    /// HTTP/2 locally reset streams per connection before the connection is
    /// closed with GOAWAY (hyper's default, which tonic switches off; it
    /// bounds the work a peer causes with streams that each fail).
    pub h2_local_error_resets_max: usize,
    /// Interval of HTTP/2 keepalive pings on a connection the peer is
    /// silent on.
    pub h2_keepalive_interval: Duration,
    /// A ping not acknowledged within this closes the connection: a dead
    /// peer, or one that connected and stopped reading.
    pub h2_keepalive_timeout: Duration,
    /// Long-lived gRPC streams (`grpc.health.v1.Health/Watch`, reflection)
    /// open at once on the whole server; beyond it a new one is refused
    /// with RESOURCE_EXHAUSTED. Neither is shed by the in-flight limit,
    /// which counts calls, and each open stream holds memory until the peer
    /// closes it.
    pub long_streams_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_max: 1024,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_streams_max: 100,
            h2_header_list_bytes_max: 16 * 1024,
            h2_stream_window_bytes: 64 * 1024,
            h2_connection_window_bytes: 256 * 1024,
            h2_local_error_resets_max: 1024,
            h2_keepalive_interval: Duration::from_secs(20),
            h2_keepalive_timeout: Duration::from_secs(10),
            long_streams_max: 1024,
        }
    }
}

/// A [`Limits`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A count is zero: nothing could be served.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// The idle timeout would close live HTTP/2 connections between pings.
    #[error(
        "the idle timeout ({idle:?}) must exceed the HTTP/2 keepalive interval plus its timeout ({keepalive:?})"
    )]
    IdleBeforeKeepalive {
        /// The idle timeout.
        idle: Duration,
        /// Keepalive interval + timeout.
        keepalive: Duration,
    },
}

impl Limits {
    /// Checks that the limits can serve anyone at all.
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (value, name) in [
            (self.connections_max, "connections_max"),
            (self.h2_streams_max as usize, "h2_streams_max"),
            (self.long_streams_max, "long_streams_max"),
        ] {
            if value == 0 {
                return Err(LimitsError::Zero(name));
            }
        }
        let keepalive = self.h2_keepalive_interval + self.h2_keepalive_timeout;
        if self.idle_timeout <= keepalive {
            return Err(LimitsError::IdleBeforeKeepalive {
                idle: self.idle_timeout,
                keepalive,
            });
        }
        Ok(())
    }
}

/// File descriptors kept back from the connection cap: standard streams,
/// listeners, the epoll and event descriptors, the durable store's files,
/// and some slack for whatever the process opens later.
pub const FDS_RESERVED: u64 = 64;

/// The connection cap per front that keeps both fronts within a
/// file-descriptor limit of `fds`: each front gets half of what is left
/// after [`FDS_RESERVED`], and never more than `wanted`. At least 1.
pub fn connections_max_for_fds(wanted: usize, fds: u64) -> usize {
    let per_front = fds.saturating_sub(FDS_RESERVED) / 2;
    usize::try_from(per_front)
        .unwrap_or(usize::MAX)
        .clamp(1, wanted.max(1))
}

/// The process's soft limit on open files, read from `/proc/self/limits`
/// (Linux; `None` elsewhere or if unreadable). Read rather than asked of
/// `getrlimit`: the crate forbids `unsafe`, and this is read once at
/// start-up.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&limits)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    // "unlimited" has no number: no bound to respect.
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_broken_limits_are_refused() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero = Limits {
            h2_streams_max: 0,
            ..Limits::default()
        };
        assert_eq!(zero.validate(), Err(LimitsError::Zero("h2_streams_max")));
        let idle = Limits {
            idle_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        assert!(matches!(
            idle.validate(),
            Err(LimitsError::IdleBeforeKeepalive { .. })
        ));
    }

    #[test]
    fn the_cap_leaves_room_for_other_descriptors() {
        assert_eq!(connections_max_for_fds(4096, 20_000), 4096);
        assert_eq!(connections_max_for_fds(1024, 20_000), 1024);
        assert_eq!(connections_max_for_fds(4096, 256), 96);
        assert_eq!(connections_max_for_fds(4096, 10), 1);
        let proc_limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                           Max open files            256                  524288               files     \n";
        assert_eq!(parse_open_files(proc_limits), Some(256));
        assert_eq!(
            parse_open_files(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
    }
}
