//! Just enough HTTP/2, written by hand, to misbehave as no library client
//! would: open more streams than the server allows, behind a zero
//! flow-control window. Frames out (SETTINGS, HEADERS with literal HPACK
//! fields, DATA) and frame headers in; response header blocks are not
//! decoded (the tests count frames and read RST_STREAM codes).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const GOAWAY: u8 = 0x7;

pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(crate) const REFUSED_STREAM: u32 = 0x7;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// One frame as received.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM frame.
    pub(crate) fn rst_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().unwrap()))
    }

    /// The value of `id` in a (non-ACK) SETTINGS frame.
    pub(crate) fn setting(&self, id: u16) -> Option<u32> {
        if self.kind != SETTINGS || self.flags & ACK != 0 {
            return None;
        }
        self.payload.chunks_exact(6).find_map(|p| {
            (u16::from_be_bytes([p[0], p[1]]) == id)
                .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
        })
    }
}

/// A raw HTTP/2 connection.
pub(crate) struct RawH2 {
    stream: TcpStream,
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2),
/// no Huffman coding; names and values here are under 127 bytes.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    for s in [name, value] {
        block.push(u8::try_from(s.len()).expect("short header"));
        block.extend_from_slice(s.as_bytes());
    }
}

/// Appends one frame to `out`.
fn encode_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The header block of a gRPC POST to `path`.
fn request_block(path: &str, content_type: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "abacus"),
        ("content-type", content_type),
        ("te", "trailers"),
    ] {
        literal(&mut block, name, value);
    }
    block
}

/// A gRPC message frame around `message`.
pub(crate) fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    out
}

impl RawH2 {
    /// Connects, sends the preface and a SETTINGS frame with `settings`.
    pub(crate) async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut conn = Self { stream };
        conn.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
            .collect();
        conn.frame(SETTINGS, 0, 0, &payload).await;
        conn
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends one frame.
    pub(crate) async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.try_frame(kind, flags, stream, payload)
            .await
            .expect("write");
    }

    /// Sends one frame; an error if the server closed the connection.
    pub(crate) async fn try_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(9 + payload.len());
        encode_frame(&mut out, kind, flags, stream, payload);
        self.stream.write_all(&out).await
    }

    /// The request headers of a POST to `path`, ending the stream (no
    /// body); an error if the server closed the connection.
    #[allow(dead_code)] // by the flood of benches/edge.rs
    pub(crate) async fn try_headers_only(
        &mut self,
        id: u32,
        path: &str,
        content_type: &str,
    ) -> std::io::Result<()> {
        let block = request_block(path, content_type);
        self.try_frame(HEADERS, END_HEADERS | END_STREAM, id, &block)
            .await
    }

    /// A POST to `path` on stream `id` with `content_type`, and `body` as
    /// its only DATA frame (ending the stream).
    pub(crate) async fn post(&mut self, id: u32, path: &str, content_type: &str, body: &[u8]) {
        self.try_post(id, path, content_type, body)
            .await
            .expect("write");
    }

    /// [`RawH2::post`]; an error if the server closed the connection.
    pub(crate) async fn try_post(
        &mut self,
        id: u32,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<()> {
        // One write, as clients do: a server that answers the headers at
        // once (shedding) must not see the data arrive on a stream it has
        // already closed.
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            HEADERS,
            END_HEADERS,
            id,
            &request_block(path, content_type),
        );
        encode_frame(&mut out, DATA, END_STREAM, id, body);
        self.stream.write_all(&out).await
    }

    /// The next frame, or `None` when the server closed the connection
    /// (or `wait` passed: an upper bound, not a synchronisation).
    pub(crate) async fn next_frame(&mut self, wait: Duration) -> Option<Frame> {
        let read = async {
            let mut header = [0u8; 9];
            self.stream.read_exact(&mut header).await.ok()?;
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some(Frame {
                kind: header[3],
                flags: header[4],
                stream: u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload,
            })
        };
        tokio::time::timeout(wait, read).await.ok().flatten()
    }
}
