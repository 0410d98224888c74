//! Address patterns for allow-lists, matched against an address parsed by
//! [`super::address`] (RFC 5321 4.1.2): `*`, `*@domain`, `*@*.domain` (any
//! subdomain, not the domain itself) or an exact address. Patterns come from
//! a config and addresses from a plugin, so both may hold any Unicode: the
//! comparison goes label by label and never slices by byte offset.

use super::address::Address;

/// Domain labels compare with ASCII letters folded, everything else exact.
fn labels_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// True when `addr` matches `pattern`. Local parts compare exactly.
pub fn matches(pattern: &str, addr: &Address) -> bool {
    let pattern = pattern.trim();
    if pattern == "*" {
        return true;
    }
    let Some((local, domain)) = pattern.rsplit_once('@') else {
        return false;
    };
    let local_ok = local == "*" || local == addr.local();
    let domain_ok = match domain.strip_prefix("*.") {
        Some(suffix) => {
            let mut have = addr.domain().rsplit('.');
            let mut want = suffix.rsplit('.');
            // Every label of the suffix matches, from the right, and at least
            // one label of the address is left over.
            want.all(|w| have.next().is_some_and(|h| labels_eq(h, w))) && have.next().is_some()
        }
        None => domain == "*" || labels_eq(addr.domain(), domain),
    };
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn golden() {
        let x = a("Jo@Sub.Example.COM");
        assert!(matches("*@*.example.com", &x));
        assert!(matches("*@sub.example.com", &x));
        assert!(!matches("*@example.com", &x));
        assert!(!matches("jo@sub.example.com", &x), "local parts are exact");
        assert!(matches("Jo@sub.example.com", &x));
        assert!(matches("*", &x));
        assert!(matches(" *@* ", &x));
        assert!(!matches("*@*.example.com", &a("x@badexample.com")));
        assert!(!matches("*@*.example.com", &a("x@example.com")), "*. means a subdomain");
        assert!(!matches("nonsense", &x));
    }

    #[test]
    fn non_ascii_never_panics_or_matches_by_accident() {
        // A byte-offset slice used to cut `б` in half here.
        let x = a("x@a.бxample.org");
        assert!(!matches("*@*.example.org", &x));
        assert!(!matches("*@*.xample.org", &x));
        assert!(matches("*@*.бxample.org", &x));
        assert!(matches("*@*.example.org", &a("x@ü.example.org")));
        assert!(!matches("*@*.ü", &a("x@ü.example.org")));
        assert!(!matches("*@*.éxample.org", &a("x@b.example.org")));
        assert!(!matches("*@*.", &a("x@b.example.org")));
        assert!(!matches("*@*.*", &a("x@b.example.org")));
    }
}
