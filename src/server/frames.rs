//! [`Frames`]: the gRPC message framing of a body, read as it streams by.
//! gRPC frames each message as a 1-byte flag, a 4-byte big-endian length
//! and the payload, so a reader that sees every byte knows where each
//! message begins and how long it is, whatever the chunking. The strict
//! layer uses it to refuse a second request message, the metrics layer to
//! count message bytes.

/// Where a byte stream stands in gRPC's framing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Frames {
    header: [u8; 5],
    header_seen: usize,
    payload_left: u64,
    payload_bytes: u64,
    messages: u64,
}

impl Frames {
    /// Reads `chunk`, the next bytes of the stream.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.payload_left > 0 {
                let n = chunk
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                self.payload_bytes += n as u64;
                chunk = &chunk[n..];
                continue;
            }
            if self.header_seen == 0 {
                self.messages += 1;
            }
            let n = (5 - self.header_seen).min(chunk.len());
            self.header[self.header_seen..self.header_seen + n].copy_from_slice(&chunk[..n]);
            self.header_seen += n;
            chunk = &chunk[n..];
            if self.header_seen == 5 {
                let [_, a, b, c, d] = self.header;
                self.payload_left = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.header_seen = 0;
            }
        }
    }

    /// Payload bytes seen so far (framing excluded).
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Messages begun so far: a message begins with the first byte of its
    /// header, so a byte past the end of the first one makes this 2.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload_len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(payload_len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, payload_len as usize));
        bytes
    }

    #[test]
    fn payload_bytes_and_messages_in_any_chunking() {
        let stream = [framed(300), framed(0), framed(17)].concat();
        for chunk in [1, 2, 3, 5, 6, 64, 1000] {
            let mut frames = Frames::default();
            for piece in stream.chunks(chunk) {
                frames.feed(piece);
            }
            assert_eq!(frames.payload_bytes(), 317, "chunk {chunk}");
            assert_eq!(frames.messages(), 3, "chunk {chunk}");
        }
        let mut frames = Frames::default();
        frames.feed(&[]);
        assert_eq!(frames.messages(), 0);
        frames.feed(&[0]);
        assert_eq!(
            frames.messages(),
            1,
            "a message begins with its first header byte"
        );
    }
}
