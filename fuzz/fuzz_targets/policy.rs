//! policy: the allow-list matcher (`mime::pattern::matches`, what the host's
//! policy checks From, Reply-To and recipients with) never panics on any
//! pattern and any address, whatever their Unicode, and a subdomain pattern
//! `*@*.d` only matches an address whose domain ends in `.d`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmail_mailer::mime::address::Address;
use wasmail_mailer::mime::pattern::matches;

fuzz_target!(|data: (&str, &str)| {
    let (pattern, address) = data;
    let Ok(addr) = Address::parse(address) else { return };
    let hit = matches(pattern, &addr);
    if let Some(suffix) = pattern.trim().rsplit_once('@').and_then(|(_, d)| d.strip_prefix("*.")) {
        if hit {
            let domain = addr.domain().to_ascii_lowercase();
            assert!(domain.ends_with(&format!(".{}", suffix.to_ascii_lowercase())), "{pattern:?} matched {addr}");
        }
    }
    if pattern.trim() == "*" {
        assert!(hit);
    }
});
