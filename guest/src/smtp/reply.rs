//! Incremental SMTP reply parser (RFC 5321 4.2, RFC 3463 / RFC 2034 enhanced
//! status codes), with caps on everything a server controls.
//!
//! Feed it bytes as they arrive; it yields each complete [`Reply`]. Bytes
//! after a reply stay buffered (pipelined replies), and [`ReplyParser::buffered`]
//! tells the STARTTLS code whether anything is pending.

use std::fmt;

/// The longest reply line we accept, CRLF included. RFC 5321 4.5.3.1.5 sets
/// 512; real servers exceed it a little, so we allow 2 KiB.
pub const MAX_REPLY_LINE: usize = 2048;
/// The most lines in one reply (EHLO replies are the longest, ~20 lines).
pub const MAX_REPLY_LINES: usize = 128;
/// The most bytes in one reply, all lines together.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// The most octets of text kept of a reply to RCPT TO ([`Reply::clipped`]).
/// A message keeps one for each refused recipient, and may have a thousand:
/// at [`MAX_REPLY_BYTES`] each, a server's refusals alone could fill the
/// mailer's memory with a few messages.
pub const MAX_KEPT_RCPT_REPLY_BYTES: usize = 1024;

/// A complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code (`class.subject.detail`), when the first line
    /// carries one whose class matches the code.
    pub enhanced: Option<String>,
    /// The text of each line, after the code, separator and enhanced code.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
    /// The lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The reply with at most `max` octets of [`Self::text`]: the lines
    /// that fit, the last of them cut at a character boundary.
    pub fn clipped(mut self, max: usize) -> Self {
        let mut left = max;
        let mut kept = 0;
        for line in &mut self.lines {
            if kept > 0 {
                // The `\n` before it.
                if left == 0 {
                    break;
                }
                left -= 1;
            }
            if line.len() > left {
                let end = line.char_indices().map(|(i, c)| i + c.len_utf8()).take_while(|&end| end <= left).last().unwrap_or(0);
                line.truncate(end);
                kept += 1;
                break;
            }
            left -= line.len();
            kept += 1;
        }
        self.lines.truncate(kept);
        self
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        if let Some(first) = self.lines.first() {
            write!(f, " {first}")?;
        }
        Ok(())
    }
}

/// A reply that breaks the protocol or a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line longer than [`MAX_REPLY_LINE`].
    LineTooLong,
    /// More than [`MAX_REPLY_LINES`] lines.
    TooManyLines,
    /// More than [`MAX_REPLY_BYTES`] bytes.
    TooLarge,
    /// A line that is not `ddd`, `ddd-text` or `ddd text`.
    Malformed(String),
    /// The code changed between lines of one reply.
    CodeChanged { first: u16, then: u16 },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong => write!(f, "reply line longer than {MAX_REPLY_LINE} octets"),
            Self::TooManyLines => write!(f, "reply longer than {MAX_REPLY_LINES} lines"),
            Self::TooLarge => write!(f, "reply larger than {MAX_REPLY_BYTES} octets"),
            Self::Malformed(l) => write!(f, "malformed reply line {l:?}"),
            Self::CodeChanged { first, then } => write!(f, "reply code changed from {first} to {then} mid-reply"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Parses replies from a byte stream.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// Start of unparsed data in `buf`.
    pos: usize,
    code: Option<u16>,
    lines: Vec<String>,
    bytes: usize,
}

fn parse_enhanced(code: u16, text: &str) -> Option<(String, &str)> {
    let (token, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = token.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let digits = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
    let class_ok = matches!(class, "2" | "4" | "5") && class.as_bytes()[0] - b'0' == (code / 100) as u8;
    (class_ok && digits(subject, 3) && digits(detail, 3)).then(|| (token.to_owned(), rest))
}

impl ReplyParser {
    /// A parser with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes read from the server. What earlier replies used is dropped
    /// first, so the buffer holds only what is not yet a reply, however the
    /// server cuts its writes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet part of a returned reply.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Return the next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let pending = &self.buf[self.pos..];
            let Some(nl) = pending.iter().position(|&b| b == b'\n') else {
                if pending.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if nl + 1 > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let raw = &pending[..nl];
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let mut line = text_of(raw);
            self.pos += nl + 1;
            self.bytes += nl + 1;
            if self.bytes > MAX_REPLY_BYTES {
                return Err(ReplyError::TooLarge);
            }
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
                return Err(ReplyError::Malformed(truncate(&line)));
            }
            let code = u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
            let last = match b.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(ReplyError::Malformed(truncate(&line))),
            };
            if let Some(first) = self.code
                && first != code {
                    return Err(ReplyError::CodeChanged { first, then: code });
                }
            self.code = Some(code);
            if self.lines.len() >= MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
            // The text after the code and separator (ASCII, checked above),
            // kept in place.
            line.drain(..line.len().min(4));
            self.lines.push(line);
            if last {
                let mut lines = std::mem::take(&mut self.lines);
                self.code = None;
                self.bytes = 0;
                let enhanced = match lines.first_mut() {
                    Some(first) => match parse_enhanced(code, first) {
                        Some((e, rest)) => {
                            let cut = first.len() - rest.len();
                            first.drain(..cut);
                            Some(e)
                        }
                        None => None,
                    },
                    None => None,
                };
                return Ok(Some(Reply { code, enhanced, lines }));
            }
        }
    }
}

/// A reply line as text, one char per invalid byte (`?`), so the stored
/// text is never longer than the bytes the caps counted.
fn text_of(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => s.to_owned(),
        Err(_) => raw.iter().map(|&b| if b.is_ascii() { b as char } else { '?' }).collect(),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        p.feed(input);
        let mut out = Vec::new();
        while let Some(r) = p.next_reply()? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn single_line() {
        let r = parse_all(b"250 2.1.0 Ok\r\n").unwrap();
        assert_eq!(r, vec![Reply { code: 250, enhanced: Some("2.1.0".into()), lines: vec!["Ok".into()] }]);
        let r = parse_all(b"220\r\n").unwrap();
        assert_eq!(r[0].code, 220);
        assert_eq!(r[0].lines, vec![String::new()]);
    }

    #[test]
    fn multi_line_and_pipelined() {
        let r = parse_all(b"250-mx.example Hello\r\n250-SIZE 1000\r\n250 PIPELINING\r\n354 go\r\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].lines, vec!["mx.example Hello", "SIZE 1000", "PIPELINING"]);
        assert_eq!(r[1].code, 354);
        assert_eq!(r[1].enhanced, None);
    }

    #[test]
    fn incremental_bytes() {
        let mut p = ReplyParser::new();
        let input = b"550-5.1.1 first\r\n550 5.1.1 second\r\n";
        for (i, b) in input.iter().enumerate() {
            p.feed(&[*b]);
            let r = p.next_reply().unwrap();
            if i + 1 < input.len() {
                assert!(r.is_none(), "early reply at byte {i}");
            } else {
                let r = r.unwrap();
                assert_eq!(r.code, 550);
                assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
                assert_eq!(r.lines, vec!["first", "5.1.1 second"]);
            }
        }
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn incomplete_reply_waits() {
        let mut p = ReplyParser::new();
        p.feed(b"250-first\r\n250 sec");
        assert_eq!(p.next_reply().unwrap(), None);
        p.feed(b"ond\r\n");
        assert_eq!(p.next_reply().unwrap().unwrap().lines, vec!["first", "second"]);
    }

    #[test]
    fn code_change_is_an_error() {
        assert_eq!(parse_all(b"250-a\r\n251 b\r\n"), Err(ReplyError::CodeChanged { first: 250, then: 251 }));
    }

    #[test]
    fn caps() {
        let long = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE));
        assert_eq!(parse_all(long.as_bytes()), Err(ReplyError::LineTooLong));
        let mut p = ReplyParser::new();
        p.feed(&vec![b'2'; MAX_REPLY_LINE + 1]);
        assert_eq!(p.next_reply(), Err(ReplyError::LineTooLong), "no newline yet, still capped");
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(parse_all(many.as_bytes()), Err(ReplyError::TooManyLines));
        let big = format!("250-{}\r\n", "y".repeat(1500)).repeat(50);
        assert_eq!(parse_all(big.as_bytes()), Err(ReplyError::TooLarge));
    }

    #[test]
    fn invalid_utf8_costs_no_more_than_its_bytes() {
        let mut input = b"250 ".to_vec();
        input.extend(std::iter::repeat_n(0xFF, 1000));
        input.extend_from_slice(b"\r\n");
        let r = &parse_all(&input).unwrap()[0];
        assert_eq!(r.lines[0].len(), 1000);
        assert!(r.lines[0].chars().all(|c| c == '?'));
    }

    #[test]
    fn malformed() {
        for bad in [&b"hello\r\n"[..], b"25\r\n", b"250x\r\n", b"650 no\r\n", b"SSH-2.0-OpenSSH\r\n"] {
            assert!(matches!(parse_all(bad), Err(ReplyError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn enhanced_codes() {
        let r = &parse_all(b"450 4.2.1 busy\r\n").unwrap()[0];
        assert_eq!(r.enhanced.as_deref(), Some("4.2.1"));
        let r = &parse_all(b"450 5.2.1 class mismatch\r\n").unwrap()[0];
        assert_eq!(r.enhanced, None);
        let r = &parse_all(b"250 1.2.3.4 is an address\r\n").unwrap()[0];
        assert_eq!(r.enhanced, None);
    }

    #[test]
    fn the_buffer_holds_only_what_is_not_yet_a_reply() {
        // A server that ends every write one octet into its next reply: the
        // buffer never emptied, and held every reply of the session.
        let mut p = ReplyParser::new();
        p.feed(b"2");
        for _ in 0..10_000 {
            p.feed(b"50 ok\r\n2");
            assert_eq!(p.next_reply().unwrap().map(|r| r.code), Some(250));
        }
        assert!(p.buf.len() <= MAX_REPLY_LINE && p.buffered() == 1, "{} octets held", p.buf.len());
    }

    #[test]
    fn a_clipped_reply_keeps_whole_characters_within_its_octets() {
        let r = Reply { code: 550, enhanced: None, lines: vec!["ab".into(), "cdé".into(), "fg".into()] };
        assert_eq!(r.clone().clipped(100).lines, ["ab", "cdé", "fg"]);
        assert_eq!(r.clone().clipped(6).lines, ["ab", "cd"], "é is two octets: not cut in half");
        assert_eq!(r.clone().clipped(7).lines, ["ab", "cdé"]);
        assert_eq!(r.clone().clipped(8).lines, ["ab", "cdé", ""]);
        assert_eq!(r.clipped(0).lines, [""]);
    }
}
