//! The store protocol's messages and their bytes: a small, test-only
//! protocol between a replica's [`RemoteLedger`](super::RemoteLedger) and
//! the store host, over turmoil's TCP.
//!
//! Every message is one frame: a 4-byte big-endian length, then the body
//! (a tag byte and the fields). Values cross as bytes, not as shared Rust
//! objects, so everything a replica learns from the store really went
//! through the simulated network — and could be lost, delayed or cut off
//! on the way.
//!
//! Errors cross as typed values: every [`ServiceError`] and [`CalcError`]
//! variant has a tag, matched exhaustively, so a variant added to the
//! library fails to compile here instead of crossing as something else.
//! The few `&'static str` fields are decoded against the library's own
//! values (computed by calling it), never against a copy of its wording.

use std::{io, net::IpAddr};

use abacus::{
    core::{self, BinaryOp},
    error::{CalcError, ServiceError},
    store::dedup::{REQUEST_ID_BYTES_MAX, validate_request_id},
    store::guard::Refusal,
    store::{AccumulateArgs, Accumulated, Caller, StatsView, WriteFate},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side accepts: far above any message's size, so
/// only a broken peer reaches it.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;

/// What a replica asks the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Start an `Accumulate`: answer from its record, wait (at most
    /// `wait_ms`) for a duplicate in flight, or claim its request ID for
    /// this connection.
    Begin {
        /// The request.
        args: AccumulateArgs,
        /// How long a duplicate may wait for the execution in flight.
        wait_ms: u64,
    },
    /// Commit the claim this connection holds.
    Commit,
    /// Read a register.
    Get {
        /// Its name.
        register: String,
    },
    /// Read the counters.
    Stats,
}

/// What the store answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `Begin`: the request ID's recorded outcome.
    Replay(Result<Accumulated, ServiceError>),
    /// `Begin`: this connection holds the claim, until `Commit` or until it
    /// closes (a rollback).
    Claimed,
    /// `Commit`: the outcome, committed with its record.
    Committed(Result<Accumulated, ServiceError>),
    /// `Begin`, `Get` or `Stats` refused.
    Failed(ServiceError),
    /// `Get`: the register's value.
    Value(f64),
    /// `Stats`: the store's counters.
    Stats(StatsView),
}

/// A frame that is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed store message: {0}")]
pub struct Malformed(&'static str);

/// Writes one message's body.
#[derive(Debug, Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn str(&mut self, v: &str) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.str(v);
        }
    }
}

/// Reads one message's body.
#[derive(Debug)]
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        let bytes: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| Malformed("truncated"))?;
        Ok(u64::from_be_bytes(bytes))
    }
    fn usize(&mut self) -> Result<usize, Malformed> {
        usize::try_from(self.u64()?).map_err(|_| Malformed("count out of range"))
    }
    fn f64(&mut self) -> Result<f64, Malformed> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn bool(&mut self) -> Result<bool, Malformed> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("bad flag")),
        }
    }
    fn str(&mut self) -> Result<String, Malformed> {
        let len = self.usize()?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| Malformed("text is not UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<String>, Malformed> {
        if self.bool()? {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }
    fn end(self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }
}

/// The library's own value of a `&'static str` field with this text.
fn library_text(text: &str, known: &[&'static str]) -> Result<&'static str, Malformed> {
    known
        .iter()
        .copied()
        .find(|k| *k == text)
        .ok_or(Malformed("unknown static text"))
}

/// The operand names `CalcError::NonFiniteOperand` can carry, as the
/// library spells them.
fn operand_names() -> Vec<&'static str> {
    let name = |e| match e {
        Err(CalcError::NonFiniteOperand { operand, .. }) => Some(operand),
        _ => None,
    };
    [
        name(core::evaluate(BinaryOp::Add, f64::NAN, 0.0)),
        name(core::evaluate(BinaryOp::Add, 0.0, f64::NAN)),
        name(core::validate_accumulate("r", f64::NAN).map(|()| 0.0)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The reasons `ServiceError::InvalidRequestId` can carry, as the library
/// spells them.
fn request_id_reasons() -> Vec<&'static str> {
    let reason = |id: &str| match validate_request_id(id) {
        Err(ServiceError::InvalidRequestId(r)) => Some(r),
        _ => None,
    };
    [
        reason(&"x".repeat(REQUEST_ID_BYTES_MAX + 1)),
        reason("control\u{7}"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn put_calc(w: &mut Writer, e: &CalcError) {
    match e {
        CalcError::DivisionByZero => w.u8(0),
        CalcError::NonFiniteOperand { operand, value } => {
            w.u8(1);
            w.str(operand);
            w.f64(*value);
        }
        CalcError::Overflow { op, a, b } => {
            w.u8(2);
            let index = BinaryOp::ALL.iter().position(|o| o == op).unwrap_or(0);
            w.u8(index as u8);
            w.f64(*a);
            w.f64(*b);
        }
        CalcError::RegisterOverflow {
            register,
            current,
            delta,
        } => {
            w.u8(3);
            w.str(register);
            w.f64(*current);
            w.f64(*delta);
        }
        CalcError::EmptyRegisterName => w.u8(4),
        CalcError::RegisterNameTooLong { len } => {
            w.u8(5);
            w.u64(*len as u64);
        }
        CalcError::RegisterNameForbiddenChar { ch, position } => {
            w.u8(6);
            w.u64(u64::from(u32::from(*ch)));
            w.u64(*position as u64);
        }
        CalcError::RegisterNameNotNormalized => w.u8(9),
        CalcError::RegisterQuota { held, max } => {
            w.u8(10);
            w.u64(*held as u64);
            w.u64(*max as u64);
        }
        CalcError::UnknownRegister(name) => {
            w.u8(7);
            w.str(name);
        }
        CalcError::TooManyRegisters { max } => {
            w.u8(8);
            w.u64(*max as u64);
        }
    }
}

fn get_calc(r: &mut Reader<'_>) -> Result<CalcError, Malformed> {
    Ok(match r.u8()? {
        0 => CalcError::DivisionByZero,
        1 => CalcError::NonFiniteOperand {
            operand: library_text(&r.str()?, &operand_names())?,
            value: r.f64()?,
        },
        2 => CalcError::Overflow {
            op: *BinaryOp::ALL
                .get(usize::from(r.u8()?))
                .ok_or(Malformed("unknown operation"))?,
            a: r.f64()?,
            b: r.f64()?,
        },
        3 => CalcError::RegisterOverflow {
            register: r.str()?,
            current: r.f64()?,
            delta: r.f64()?,
        },
        4 => CalcError::EmptyRegisterName,
        5 => CalcError::RegisterNameTooLong { len: r.usize()? },
        6 => CalcError::RegisterNameForbiddenChar {
            ch: u32::try_from(r.u64()?)
                .ok()
                .and_then(char::from_u32)
                .ok_or(Malformed("not a character"))?,
            position: r.usize()?,
        },
        9 => CalcError::RegisterNameNotNormalized,
        10 => CalcError::RegisterQuota {
            held: r.usize()?,
            max: r.usize()?,
        },
        7 => CalcError::UnknownRegister(r.str()?),
        8 => CalcError::TooManyRegisters { max: r.usize()? },
        _ => return Err(Malformed("unknown calculator error")),
    })
}

fn put_error(w: &mut Writer, e: &ServiceError) {
    match e {
        ServiceError::Calc(c) => {
            w.u8(0);
            put_calc(w, c);
        }
        ServiceError::InjectedUnavailable => w.u8(1),
        ServiceError::ResponseDropped => w.u8(2),
        ServiceError::DeadlineExceeded => w.u8(3),
        ServiceError::Overloaded {
            in_flight,
            limit,
            pushback_ms,
        } => {
            w.u8(4);
            w.u64(*in_flight as u64);
            w.u64(*limit as u64);
            w.u64(*pushback_ms);
        }
        ServiceError::Saturated {
            target_ms,
            pushback_ms,
        } => {
            w.u8(5);
            w.u64(*target_ms);
            w.u64(*pushback_ms);
        }
        ServiceError::RequestIdRequired => w.u8(6),
        ServiceError::InvalidRequestId(reason) => {
            w.u8(7);
            w.str(reason);
        }
        ServiceError::RequestIdReused {
            request_id,
            first,
            this,
        } => {
            w.u8(8);
            w.str(request_id);
            w.str(first);
            w.str(this);
        }
        ServiceError::StillInFlight { request_id } => {
            w.u8(9);
            w.str(request_id);
        }
        ServiceError::StoreUnavailable { fate } => {
            w.u8(10);
            w.bool(*fate == WriteFate::Unknown);
        }
        ServiceError::StoreRefused(Refusal::CircuitOpen { probe_in_ms }) => {
            w.u8(11);
            w.u64(*probe_in_ms);
        }
        ServiceError::StoreRefused(Refusal::Busy { in_flight, limit }) => {
            w.u8(12);
            w.u64(*in_flight as u64);
            w.u64(*limit as u64);
        }
        ServiceError::DeleteUnsupported => w.u8(13),
    }
}

fn get_error(r: &mut Reader<'_>) -> Result<ServiceError, Malformed> {
    Ok(match r.u8()? {
        0 => ServiceError::Calc(get_calc(r)?),
        1 => ServiceError::InjectedUnavailable,
        2 => ServiceError::ResponseDropped,
        3 => ServiceError::DeadlineExceeded,
        4 => ServiceError::Overloaded {
            in_flight: r.usize()?,
            limit: r.usize()?,
            pushback_ms: r.u64()?,
        },
        5 => ServiceError::Saturated {
            target_ms: r.u64()?,
            pushback_ms: r.u64()?,
        },
        6 => ServiceError::RequestIdRequired,
        7 => ServiceError::InvalidRequestId(library_text(&r.str()?, &request_id_reasons())?),
        8 => ServiceError::RequestIdReused {
            request_id: r.str()?,
            first: r.str()?,
            this: r.str()?,
        },
        9 => ServiceError::StillInFlight {
            request_id: r.str()?,
        },
        10 => ServiceError::StoreUnavailable {
            fate: if r.bool()? {
                WriteFate::Unknown
            } else {
                WriteFate::NotApplied
            },
        },
        11 => ServiceError::StoreRefused(Refusal::CircuitOpen {
            probe_in_ms: r.u64()?,
        }),
        12 => ServiceError::StoreRefused(Refusal::Busy {
            in_flight: r.usize()?,
            limit: r.usize()?,
        }),
        13 => ServiceError::DeleteUnsupported,
        _ => return Err(Malformed("unknown service error")),
    })
}

fn put_outcome(w: &mut Writer, result: &Result<Accumulated, ServiceError>) {
    match result {
        Ok(a) => {
            w.u8(0);
            w.f64(a.value);
            w.bool(a.replayed);
        }
        Err(e) => {
            w.u8(1);
            put_error(w, e);
        }
    }
}

fn get_outcome(r: &mut Reader<'_>) -> Result<Result<Accumulated, ServiceError>, Malformed> {
    Ok(match r.u8()? {
        0 => Ok(Accumulated {
            value: r.f64()?,
            replayed: r.bool()?,
        }),
        1 => Err(get_error(r)?),
        _ => return Err(Malformed("unknown outcome")),
    })
}

impl Request {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Begin { args, wait_ms } => {
                w.u8(0);
                w.str(&args.register);
                w.f64(args.delta);
                w.str(&args.request_id);
                w.opt_str(args.caller.identity.as_deref());
                w.opt_str(args.caller.peer.map(|ip| ip.to_string()).as_deref());
                w.u64(*wait_ms);
            }
            Self::Commit => w.u8(1),
            Self::Get { register } => {
                w.u8(2);
                w.str(register);
            }
            Self::Stats => w.u8(3),
        }
        w.0
    }

    /// The message in a frame body.
    pub fn decode(body: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader(body);
        let request = match r.u8()? {
            0 => Self::Begin {
                args: AccumulateArgs {
                    register: r.str()?,
                    delta: r.f64()?,
                    request_id: r.str()?,
                    caller: Caller {
                        identity: r.opt_str()?.map(Into::into),
                        peer: r
                            .opt_str()?
                            .map(|ip| ip.parse::<IpAddr>())
                            .transpose()
                            .map_err(|_| Malformed("bad peer address"))?,
                    },
                },
                wait_ms: r.u64()?,
            },
            1 => Self::Commit,
            2 => Self::Get { register: r.str()? },
            3 => Self::Stats,
            _ => return Err(Malformed("unknown request")),
        };
        r.end()?;
        Ok(request)
    }
}

impl Reply {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Replay(result) => {
                w.u8(0);
                put_outcome(&mut w, result);
            }
            Self::Claimed => w.u8(1),
            Self::Committed(result) => {
                w.u8(2);
                put_outcome(&mut w, result);
            }
            Self::Failed(e) => {
                w.u8(3);
                put_error(&mut w, e);
            }
            Self::Value(v) => {
                w.u8(4);
                w.f64(*v);
            }
            Self::Stats(s) => {
                w.u8(5);
                for n in [
                    s.dedup_entries,
                    s.dedup_hits,
                    s.dedup_evictions,
                    s.dedup_evictions_early,
                    s.dedup_mismatches,
                    s.dedup_in_flight,
                    s.applied,
                    s.registers,
                ] {
                    w.u64(n);
                }
            }
        }
        w.0
    }

    /// The message in a frame body.
    pub fn decode(body: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader(body);
        let reply = match r.u8()? {
            0 => Self::Replay(get_outcome(&mut r)?),
            1 => Self::Claimed,
            2 => Self::Committed(get_outcome(&mut r)?),
            3 => Self::Failed(get_error(&mut r)?),
            4 => Self::Value(r.f64()?),
            5 => Self::Stats(StatsView {
                dedup_entries: r.u64()?,
                dedup_hits: r.u64()?,
                dedup_evictions: r.u64()?,
                dedup_evictions_early: r.u64()?,
                dedup_mismatches: r.u64()?,
                dedup_in_flight: r.u64()?,
                applied: r.u64()?,
                registers: r.u64()?,
            }),
            _ => return Err(Malformed("unknown reply")),
        };
        r.end()?;
        Ok(reply)
    }
}

/// Writes one frame.
pub async fn write_frame(w: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| (*n as usize) <= FRAME_BYTES_MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame's body; `None` when the peer closed the connection
/// between frames.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors() -> Vec<ServiceError> {
        let calc = [
            CalcError::DivisionByZero,
            CalcError::NonFiniteOperand {
                operand: operand_names()[2],
                value: f64::INFINITY,
            },
            CalcError::Overflow {
                op: BinaryOp::Multiply,
                a: f64::MAX,
                b: 2.0,
            },
            CalcError::RegisterOverflow {
                register: "r".into(),
                current: f64::MAX,
                delta: f64::MAX,
            },
            CalcError::EmptyRegisterName,
            CalcError::RegisterNameTooLong { len: 65 },
            CalcError::RegisterNameForbiddenChar {
                ch: '\u{202e}',
                position: 2,
            },
            CalcError::RegisterNameNotNormalized,
            CalcError::RegisterQuota { held: 3, max: 3 },
            CalcError::UnknownRegister("missing".into()),
            CalcError::TooManyRegisters { max: 10 },
        ];
        let mut all: Vec<ServiceError> = calc.into_iter().map(ServiceError::Calc).collect();
        all.extend([
            ServiceError::InjectedUnavailable,
            ServiceError::ResponseDropped,
            ServiceError::DeadlineExceeded,
            ServiceError::Overloaded {
                in_flight: 3,
                limit: 2,
                pushback_ms: 100,
            },
            ServiceError::Saturated {
                target_ms: 5,
                pushback_ms: 50,
            },
            ServiceError::RequestIdRequired,
            ServiceError::InvalidRequestId(request_id_reasons()[1]),
            ServiceError::RequestIdReused {
                request_id: "id".into(),
                first: "a".into(),
                this: "b".into(),
            },
            ServiceError::StillInFlight {
                request_id: "id".into(),
            },
            ServiceError::StoreUnavailable {
                fate: WriteFate::Unknown,
            },
            ServiceError::StoreUnavailable {
                fate: WriteFate::NotApplied,
            },
            ServiceError::StoreRefused(Refusal::CircuitOpen { probe_in_ms: 700 }),
            ServiceError::StoreRefused(Refusal::Busy {
                in_flight: 8,
                limit: 8,
            }),
            ServiceError::DeleteUnsupported,
        ]);
        all
    }

    #[test]
    fn every_message_round_trips() {
        assert_eq!(operand_names(), ["a", "b", "delta"]);
        assert_eq!(request_id_reasons().len(), 2);
        let mut requests = vec![
            Request::Commit,
            Request::Stats,
            Request::Get {
                register: "r".into(),
            },
        ];
        requests.push(Request::Begin {
            args: AccumulateArgs {
                register: "total".into(),
                delta: -2.5,
                request_id: "id-1".into(),
                caller: Caller {
                    identity: Some("alice".into()),
                    peer: Some("10.0.0.7".parse().expect("an address")),
                },
            },
            wait_ms: 250,
        });
        for r in requests {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        let mut replies = vec![
            Reply::Claimed,
            Reply::Value(-0.0),
            Reply::Stats(StatsView {
                dedup_entries: 1,
                dedup_hits: 2,
                dedup_evictions: 3,
                dedup_evictions_early: 8,
                dedup_mismatches: 4,
                dedup_in_flight: 5,
                applied: 6,
                registers: 7,
            }),
            Reply::Replay(Ok(Accumulated {
                value: 3.0,
                replayed: true,
            })),
            Reply::Committed(Ok(Accumulated {
                value: 4.0,
                replayed: false,
            })),
        ];
        for e in errors() {
            replies.push(Reply::Failed(e.clone()));
            replies.push(Reply::Committed(Err(e.clone())));
            replies.push(Reply::Replay(Err(e)));
        }
        for r in replies {
            let bytes = r.encode();
            let back = Reply::decode(&bytes).expect("decodes");
            // Bitwise for -0.0.
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }

    #[test]
    fn malformed_frames_are_refused_not_misread() {
        let body = Reply::Value(1.0).encode();
        assert_eq!(
            Reply::decode(&body[..body.len() - 1]),
            Err(Malformed("truncated"))
        );
        let mut long = body.clone();
        long.push(0);
        assert_eq!(Reply::decode(&long), Err(Malformed("trailing bytes")));
        assert_eq!(Reply::decode(&[99]), Err(Malformed("unknown reply")));
        assert_eq!(Request::decode(&[]), Err(Malformed("truncated")));
        // An InvalidRequestId reason the library does not have.
        let mut w = Writer::default();
        w.u8(3);
        w.u8(7);
        w.str("made up");
        assert_eq!(Reply::decode(&w.0), Err(Malformed("unknown static text")));
    }
}
