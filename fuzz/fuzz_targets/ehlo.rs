//! ehlo: parsing arbitrary bytes as a reply and then as EHLO capabilities never panics, and every capability reported comes from an extension line of that reply.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmail_mailer::smtp::ehlo::{Capabilities, Extension};
use wasmail_mailer::smtp::reply::ReplyParser;

fuzz_target!(|data: &[u8]| {
    let mut p = ReplyParser::new();
    p.feed(data);
    while let Ok(Some(reply)) = p.next_reply() {
        let caps = Capabilities::from_ehlo(&reply);
        // What each extension line (not the greeting line) parses to.
        let exts: Vec<Extension> = reply.lines.iter().skip(1).filter_map(|l| Extension::parse(l)).collect();
        let has = |f: &dyn Fn(&Extension) -> bool| exts.iter().any(f);
        assert_eq!(caps.pipelining, has(&|e| *e == Extension::Pipelining));
        assert_eq!(caps.eight_bit_mime, has(&|e| *e == Extension::EightBitMime));
        assert_eq!(caps.smtputf8, has(&|e| *e == Extension::SmtpUtf8));
        assert_eq!(caps.starttls, has(&|e| *e == Extension::StartTls));
        assert_eq!(caps.enhanced_status_codes, has(&|e| *e == Extension::EnhancedStatusCodes));
        assert_eq!(caps.chunking, has(&|e| *e == Extension::Chunking));
        assert_eq!(caps.size.is_some(), has(&|e| matches!(e, Extension::Size(_))));
        // AUTH: each known mechanism once, in the server's order.
        for (i, m) in caps.auth.iter().enumerate() {
            assert!(!caps.auth[..i].contains(m), "duplicate mechanism {m:?}");
            assert!(has(&|e| matches!(e, Extension::Auth(ms) if ms.contains(m))));
        }
        // Every line parses on its own too (the greeting line included).
        for l in &reply.lines {
            let _ = Extension::parse(l);
        }
    }
    // And the raw input as one line.
    let _ = Extension::parse(&String::from_utf8_lossy(data));
});
