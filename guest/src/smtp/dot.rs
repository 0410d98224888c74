//! DATA transparency (RFC 5321 4.5.2) and the end-of-data marker, made
//! immune to SMTP smuggling (CVE-2023-51764/5/6).
//!
//! The encoder is streaming: every CR, LF or CRLF in the input becomes one
//! CRLF, every line starting with `.` gets a second `.`, and [`DotStuffer::finish`]
//! ends the data with exactly one `CRLF.CRLF`. So `\n.\n`, `\r.\r` and the
//! like can only reach the wire as stuffed, CRLF-only text.

/// Streaming dot-stuffer.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of the data (the first line counts as a line).
    pub fn new() -> Self {
        Self { at_line_start: true, after_cr: false }
    }

    /// Append the stuffed, CRLF-normalised form of `input` to `out`. One
    /// pass: runs without CR or LF are copied whole (found with SIMD memchr).
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 2);
        let mut i = 0;
        while i < input.len() {
            if self.after_cr {
                self.after_cr = false;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            if self.at_line_start && input[i] == b'.' {
                out.push(b'.');
            }
            let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
            out.extend_from_slice(&input[i..i + run]);
            i += run;
            if i == input.len() {
                self.at_line_start = run == 0 && self.at_line_start;
                break;
            }
            // Every CR, LF or CRLF becomes exactly one CRLF.
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            if input[i] == b'\r' {
                self.after_cr = true;
            }
            i += 1;
        }
    }

    /// Append base64 lines as produced by
    /// [`crate::mime::encode::base64_lines`] without scanning them: they are
    /// CRLF-only and no line can start with `.` (the base64 alphabet has no
    /// dot). Falls back to [`DotStuffer::encode`] unless the stuffer is at a
    /// line start and the input ends a line.
    pub fn encode_base64_lines(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.at_line_start && !self.after_cr && input.ends_with(b"\r\n") && input.first() != Some(&b'.') {
            out.extend_from_slice(input);
        } else {
            self.encode(input, out);
        }
    }

    /// End the data: a CRLF if the last line is open, then `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = Self::new();
    }
}

/// Stuff a whole body and terminate it.
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut s = DotStuffer::new();
    s.encode(body, &mut out);
    s.finish(&mut out);
    out
}

/// The inverse, as a server does it: split CRLF lines, stop at the `.` line,
/// drop one leading dot. Returns `None` when there is no terminator.
pub fn unstuff(wire: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(wire.len());
    let mut rest = wire;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line == b"." {
            return Some(out);
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        assert_eq!(stuff(b"a\r\nb\r\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(stuff(b".first\r\n"), b"..first\r\n.\r\n", "the first line is stuffed too");
        assert_eq!(stuff(b"a\r\n.\r\nb"), b"a\r\n..\r\nb\r\n.\r\n", "a lone dot line is stuffed");
        assert_eq!(stuff(b"no final crlf"), b"no final crlf\r\n.\r\n");
        assert_eq!(stuff(b""), b".\r\n");
        assert_eq!(stuff(b"x.y\r\n"), b"x.y\r\n.\r\n", "only a leading dot is stuffed");
    }

    #[test]
    fn bare_line_ends_become_crlf() {
        assert_eq!(stuff(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd\r\n.\r\n");
        assert_eq!(stuff(b"a\r\r\nb"), b"a\r\n\r\nb\r\n.\r\n");
    }

    #[test]
    fn smuggling_sequences_never_terminate_early() {
        let seqs: [&[u8]; 12] = [
            b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
            b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n.\r\r\n", b"\r\r\n.\r\r\n",
        ];
        for seq in seqs {
            let mut body = b"hello".to_vec();
            body.extend_from_slice(seq);
            body.extend_from_slice(b"MAIL FROM:<x@evil.example>\r\n");
            let wire = stuff(&body);
            assert_eq!(wire.windows(5).filter(|w| w == b"\r\n.\r\n").count(), 1, "{seq:?}");
            assert!(wire.ends_with(b"\r\n.\r\n"), "{seq:?}");
            for (i, &b) in wire.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR in {seq:?}");
                }
                if b == b'\n' {
                    assert_eq!(wire[i - 1], b'\r', "bare LF in {seq:?}");
                }
            }
            let back = unstuff(&wire).unwrap();
            let lossy = String::from_utf8_lossy(&body);
            let normalised = crate::mime::encode::crlf_lines(&lossy);
            assert_eq!(back, normalised.as_bytes(), "{seq:?}");
        }
    }

    #[test]
    fn streaming_matches_one_shot() {
        let body = b".a\r\n.b\n.\r.c\r\n..d\rx";
        for split in 0..body.len() {
            let mut s = DotStuffer::new();
            let mut out = Vec::new();
            s.encode(&body[..split], &mut out);
            s.encode(&body[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, stuff(body), "split at {split}");
        }
    }
}
