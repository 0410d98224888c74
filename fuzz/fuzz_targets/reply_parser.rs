//! reply_parser: `ReplyParser` fed arbitrary bytes in arbitrary splits never panics, every reply it returns has a code in 200..=599, 1 to 128 lines and lines of at most 2048 bytes, and chunked feeding gives exactly what one-shot feeding gives.
//!
//! Input layout (so seeds stay readable): byte 0 says how many split bytes
//! follow (`byte0 % 16`); each split byte is the length of one `feed` call
//! (0 allowed: an empty read); whatever is left after those is fed last. A
//! seed `\0250 OK\r\n` is therefore the reply fed in one piece.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmail_mailer::smtp::reply::{MAX_REPLY_LINE, MAX_REPLY_LINES, Reply, ReplyError, ReplyParser};

/// Everything one parser yields: its replies, then how it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    replies: Vec<Reply>,
    /// `None`: waiting for more bytes. `Some`: the first error (the session
    /// drops the connection then, so nothing after it matters).
    error: Option<ReplyError>,
}

/// Pull replies until the parser wants more bytes or fails.
fn drain(p: &mut ReplyParser, out: &mut Outcome) -> bool {
    loop {
        match p.next_reply() {
            Ok(Some(r)) => {
                check(&r);
                out.replies.push(r);
            }
            Ok(None) => return true,
            Err(e) => {
                out.error = Some(e);
                return false;
            }
        }
    }
}

fn check(r: &Reply) {
    assert!((200..=599).contains(&r.code), "code {} out of range: {r:?}", r.code);
    assert!(!r.lines.is_empty(), "a reply has at least one line: {r:?}");
    assert!(r.lines.len() <= MAX_REPLY_LINES, "{} lines", r.lines.len());
    for (i, l) in r.lines.iter().enumerate() {
        assert!(l.len() <= MAX_REPLY_LINE, "line {i} is {} bytes (cap {MAX_REPLY_LINE}): {:?}", l.len(), truncate(l));
    }
    if let Some(e) = &r.enhanced {
        // class.subject.detail, class matching the code's first digit.
        let parts: Vec<&str> = e.split('.').collect();
        assert_eq!(parts.len(), 3, "enhanced code {e:?}");
        assert_eq!(parts[0].as_bytes()[0], b'0' + (r.code / 100) as u8, "enhanced class vs code: {r:?}");
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let n = usize::from(head % 16).min(rest.len());
    let (splits, stream) = rest.split_at(n);

    // Chunked.
    let mut chunked = Outcome { replies: Vec::new(), error: None };
    let mut p = ReplyParser::new();
    let mut pos = 0;
    let mut alive = true;
    for &len in splits {
        let end = (pos + usize::from(len)).min(stream.len());
        p.feed(&stream[pos..end]);
        pos = end;
        alive = drain(&mut p, &mut chunked);
        if !alive {
            break;
        }
    }
    if alive {
        p.feed(&stream[pos..]);
        drain(&mut p, &mut chunked);
    }

    // One shot: the same replies and the same stop.
    let mut whole = Outcome { replies: Vec::new(), error: None };
    let mut q = ReplyParser::new();
    q.feed(stream);
    drain(&mut q, &mut whole);
    assert_eq!(chunked, whole, "chunked feeding disagrees with one-shot feeding");
});
