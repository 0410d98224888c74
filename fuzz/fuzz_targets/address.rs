//! address: `Address::parse` and `Mailbox::parse` never panic on arbitrary strings, and every address they accept has no control characters, no white space, none of `<>"()`, displays as exactly its local@domain, and re-parses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmail_mailer::mime::address::{Address, Mailbox, is_forbidden_char};

fn check_address(a: &Address, ctx: &str) {
    let shown = a.to_string();
    assert_eq!(shown, format!("{}@{}", a.local(), a.domain()), "{ctx}");
    assert!(!a.local().is_empty() && !a.domain().is_empty(), "{ctx}: {shown:?}");
    for c in shown.chars() {
        assert!(!c.is_control() && !is_forbidden_char(c), "{ctx}: control character {c:?} in {shown:?}");
        assert!(!c.is_whitespace(), "{ctx}: white space {c:?} (U+{:04X}) in {shown:?}", c as u32);
        assert!(!"<>\"()".contains(c), "{ctx}: {c:?} in {shown:?}");
    }
    assert_eq!(Address::parse(&shown).as_ref(), Ok(a), "{ctx}: {shown:?} does not re-parse to itself");
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(a) = Address::parse(&s) {
        // Address::parse neither trims nor rewrites: what it accepts is what it shows.
        assert_eq!(a.to_string(), s, "Address::parse changed the text");
        check_address(&a, "Address::parse");
    }
    if let Ok(m) = Mailbox::parse(&s) {
        check_address(&m.address, "Mailbox::parse");
        if let Some(n) = &m.name {
            assert!(!n.is_empty() && n.trim() == n, "display name {n:?} not trimmed");
            assert!(!n.chars().any(is_forbidden_char), "control character in display name {n:?}");
            assert!(!n.contains(['<', '>']), "angle bracket in display name {n:?}");
        }
        // The mailbox re-parses from its parts.
        let again = Mailbox::new(m.name.as_deref(), &m.address.to_string()).expect("re-validate");
        assert_eq!(again, m);
    }
});
