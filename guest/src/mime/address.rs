//! Addresses and mailboxes: one parser for the envelope (RFC 5321 4.1.2), the
//! header fields (RFC 5322 3.4) and the host's policy, so all three see the
//! same value.
//!
//! The accepted grammar is deliberately narrower than RFC 5322: a dot-atom
//! local part (UTF-8 allowed, RFC 6531), `@`, and a domain of LDH labels or an
//! address literal. Quoted local parts, comments, source routes and group
//! syntax are refused: each is a known way to make a filter and a server read
//! one address two ways.

use std::fmt;

/// RFC 5321 4.5.3.1.1: the longest local part a server must accept.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2: the longest domain.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3: the longest path, including the angle brackets.
pub const MAX_PATH: usize = 256;
/// RFC 1035 2.3.4: the longest domain label.
pub const MAX_LABEL: usize = 63;
/// The longest display name we accept, in bytes.
pub const MAX_DISPLAY_NAME: usize = 512;

/// Why an address or mailbox was refused. `Display` says it in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// The input is empty.
    Empty,
    /// A control character (CR, LF, NUL, ...) or a Unicode line separator.
    ControlCharacter(char),
    /// No `@`, or more than one outside the local part.
    MissingAt,
    /// The local part is not a dot-atom (quoted strings are refused).
    BadLocalPart(String),
    /// The domain is not a host name or address literal.
    BadDomain(String),
    /// A length limit of RFC 5321 4.5.3.1 is exceeded.
    TooLong { what: &'static str, len: usize, max: usize },
    /// `Name <addr>` syntax is broken.
    BadMailbox(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty address"),
            Self::ControlCharacter(c) => {
                write!(f, "contains the control or line-break character U+{:04X}", *c as u32)
            }
            Self::MissingAt => write!(f, "not of the form local-part@domain"),
            Self::BadLocalPart(why) => write!(f, "bad local part: {why}"),
            Self::BadDomain(why) => write!(f, "bad domain: {why}"),
            Self::TooLong { what, len, max } => {
                write!(f, "{what} is {len} octets, the limit is {max} (RFC 5321 4.5.3.1)")
            }
            Self::BadMailbox(why) => write!(f, "bad mailbox: {why}"),
        }
    }
}

impl std::error::Error for AddressError {}

/// True for characters that can end or break a line somewhere on the way:
/// CR, LF, NUL, the other C0/C1 controls, DEL, U+2028 and U+2029.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Refuse any control character or Unicode line separator in `s`.
pub fn check_no_controls(s: &str) -> Result<(), AddressError> {
    match s.chars().find(|&c| is_forbidden_char(c)) {
        Some(c) => Err(AddressError::ControlCharacter(c)),
        None => Ok(()),
    }
}

/// Characters that relays read as a route inside the local part:
/// `user%other.example@relay` (the percent hack) and `host!user` (UUCP bang
/// paths). A recipient pattern `*@relay` would pass them, and the relay
/// would forward elsewhere, so they are refused.
pub const SOURCE_ROUTE_CHARS: &[char] = &['%', '!'];

/// A validated address, `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

fn is_atext(c: char) -> bool {
    // Non-ASCII is allowed (RFC 6532 UTF8-non-ascii), but not Unicode white
    // space (U+00A0, U+2000..U+200A, U+202F, U+3000, ...): a reader or filter
    // that splits on it would see two words where the server sees one address.
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (!c.is_ascii() && !c.is_whitespace())
}

impl Address {
    /// Parse and validate `local@domain`.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        check_no_controls(s)?;
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::MissingAt)?;
        if local.is_empty() {
            return Err(AddressError::BadLocalPart("empty".into()));
        }
        if local.starts_with('"') {
            return Err(AddressError::BadLocalPart("quoted local parts are not accepted".into()));
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong { what: "local part", len: local.len(), max: MAX_LOCAL_PART });
        }
        if let Some(c) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
            return Err(AddressError::BadLocalPart(format!("character {c:?} is not allowed")));
        }
        if let Some(c) = local.chars().find(|c| SOURCE_ROUTE_CHARS.contains(c)) {
            return Err(AddressError::BadLocalPart(format!(
                "character {c:?} is a source route (RFC 5321 Appendix C), which relays may follow to another domain"
            )));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(AddressError::BadLocalPart("dots must separate non-empty atoms".into()));
        }
        check_domain(domain)?;
        // The path is `<local@domain>`.
        let path = s.len() + 2;
        if path > MAX_PATH {
            return Err(AddressError::TooLong { what: "path", len: path, max: MAX_PATH });
        }
        Ok(Self { local: local.to_owned(), domain: domain.to_owned() })
    }

    /// The local part.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain, as given (letters keep their case).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True when the address needs SMTPUTF8 (RFC 6531): a non-ASCII character.
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::BadDomain("empty".into()));
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong { what: "domain", len: domain.len(), max: MAX_DOMAIN });
    }
    if let Some(lit) = domain.strip_prefix('[') {
        let inner = lit
            .strip_suffix(']')
            .ok_or_else(|| AddressError::BadDomain("unterminated address literal".into()))?;
        let ok = if let Some(v6) = inner.strip_prefix("IPv6:") {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            inner.parse::<std::net::Ipv4Addr>().is_ok()
        };
        return if ok { Ok(()) } else { Err(AddressError::BadDomain(format!("bad address literal [{inner}]"))) };
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(AddressError::BadDomain("empty label".into()));
        }
        if label.len() > MAX_LABEL {
            return Err(AddressError::TooLong { what: "domain label", len: label.len(), max: MAX_LABEL });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::BadDomain(format!("label {label:?} starts or ends with '-'")));
        }
        if let Some(c) = label.chars().find(|&c| !(c.is_alphanumeric() || c == '-')) {
            return Err(AddressError::BadDomain(format!("character {c:?} is not allowed")));
        }
    }
    Ok(())
}

/// A display name and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name, if any (never empty).
    pub name: Option<String>,
    /// The address.
    pub address: Address,
}

impl Mailbox {
    /// Validate a name and address given separately (the WIT `mailbox`).
    pub fn new(name: Option<&str>, address: &str) -> Result<Self, AddressError> {
        let address = Address::parse(address)?;
        let name = match name {
            Some(n) if !n.trim().is_empty() => {
                check_no_controls(n)?;
                if n.len() > MAX_DISPLAY_NAME {
                    return Err(AddressError::TooLong { what: "display name", len: n.len(), max: MAX_DISPLAY_NAME });
                }
                Some(n.trim().to_owned())
            }
            _ => None,
        };
        Ok(Self { name, address })
    }

    /// Parse the command-line form: `addr`, `<addr>`, `Name <addr>` or
    /// `"Name" <addr>`. The name must be an RFC 5322 3.2.5 phrase: atoms
    /// and quoted strings, with no unquoted special (`( ) < > @ , ; : \ " .
    /// [ ]`). Anything else is refused rather than guessed at, so
    /// `alice@example.org(<bob@evil.example>` cannot pass for alice
    /// (the CVE-2023-27043 class).
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        check_no_controls(s)?;
        let s = s.trim();
        let Some((name, rest)) = s.rsplit_once('<') else {
            return Self::new(None, s);
        };
        let addr = rest
            .strip_suffix('>')
            .ok_or_else(|| AddressError::BadMailbox("text after the closing '>'".into()))?;
        if addr.contains(['<', '>']) {
            return Err(AddressError::BadMailbox("nested angle brackets".into()));
        }
        let name = phrase(name.trim())?;
        Self::new(Some(&name), addr)
    }
}

/// RFC 5322 3.2.3 specials: outside a quoted string they make a display
/// name mean something else to some reader.
pub const SPECIALS: &[char] = &['(', ')', '<', '>', '@', ',', ';', ':', '\\', '"', '.', '[', ']'];

/// Read an RFC 5322 phrase (RFC 6532: UTF-8 allowed) into its text: words
/// joined by one space, quoted strings unquoted. Angle brackets are refused
/// even quoted: a name must not look like an address.
fn phrase(s: &str) -> Result<String, AddressError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let mut pending_space = false;
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => pending_space = !out.is_empty(),
            '"' => {
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                loop {
                    match chars.next() {
                        None => return Err(AddressError::BadMailbox("unterminated quoted string in the display name".into())),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(q) => out.push(q),
                            None => return Err(AddressError::BadMailbox("a backslash ends the display name".into())),
                        },
                        Some('<' | '>') => {
                            return Err(AddressError::BadMailbox("angle bracket in the display name".into()));
                        }
                        Some(q) => out.push(q),
                    }
                }
            }
            c if SPECIALS.contains(&c) => {
                return Err(AddressError::BadMailbox(format!(
                    "the display name has {c:?} outside quotes; write it as \"...\" <address>"
                )));
            }
            c if c.is_whitespace() => {
                return Err(AddressError::BadMailbox(format!("the display name has the space character U+{:04X}", c as u32)));
            }
            c => {
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(c);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_parse() {
        let a = Address::parse("jo.smith+tag@Example.COM").unwrap();
        assert_eq!(a.local(), "jo.smith+tag");
        assert_eq!(a.domain(), "Example.COM");
        assert_eq!(a.to_string(), "jo.smith+tag@Example.COM");
        assert!(Address::parse("root@[127.0.0.1]").is_ok());
        assert!(Address::parse("root@[IPv6:::1]").is_ok());
        assert!(Address::parse("δοκιμή@παράδειγμα.δοκιμή").unwrap().needs_smtputf8());
    }

    #[test]
    fn injection_shapes_are_refused() {
        for bad in [
            "\"a@b.example> ORCPT=x@y\"@c.example",
            "x@y.example>\r\nDATA",
            "x@y.example> SIZE=1",
            "a b@example.com",
            "a@b@example.com",
            "(comment)a@example.com",
            "a@example.com(comment)",
            "a@exa mple.com",
            "<a@example.com>",
            "a@example.com\0",
            "a\u{2028}@example.com",
            "a\u{a0}b@example.com",
            "a\u{202f}b@example.com",
            "a\u{3000}@example.com",
            "a@example.com\u{85}",
            "@example.com",
            "a@",
            "a..b@example.com",
            ".a@example.com",
            "a@-x.example",
            "a@x..example",
            "a@[1.2.3]",
            "victim%elsewhere.example@example.com",
            "elsewhere.example!victim@example.com",
            "a!b@example.com",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn display_names_are_phrases_or_refused() {
        for confusing in [
            "alice@example.org(<bob@evil.example>",
            "alice@example.org <bob@evil.example>",
            "Alice (alice@example.org) <bob@evil.example>",
            "alice@example.org, <bob@evil.example>",
            "Alice; Bob <bob@evil.example>",
            "J. Smith <j@example.com>",
            "\"Alice\" <alice@example.org> <bob@evil.example>",
            "\"unterminated <bob@evil.example>",
            "\"a <b@c.example>\" <bob@evil.example>",
            "[alice] <bob@evil.example>",
            "alice\u{3000}x <bob@evil.example>",
        ] {
            let e = Mailbox::parse(confusing);
            assert!(matches!(e, Err(AddressError::BadMailbox(_))), "{confusing:?} gave {e:?}");
        }
        // Quoted, the specials are plain text.
        let m = Mailbox::parse("\"alice@example.org (via bob)\" <bob@example.org>").unwrap();
        assert_eq!(m.name.as_deref(), Some("alice@example.org (via bob)"));
    }

    #[test]
    fn length_limits() {
        let local = "a".repeat(64);
        assert!(Address::parse(&format!("{local}@example.com")).is_ok());
        let err = Address::parse(&format!("a{local}@example.com")).unwrap_err();
        assert!(matches!(err, AddressError::TooLong { what: "local part", len: 65, .. }));
        let label = "b".repeat(64);
        assert!(Address::parse(&format!("a@{label}.com")).is_err());
        let domain = vec!["c".repeat(50); 5].join(".");
        let err = Address::parse(&format!("{}@{domain}", "a".repeat(10))).unwrap_err();
        assert!(matches!(err, AddressError::TooLong { what: "path", .. }), "{err:?}");
    }

    #[test]
    fn mailbox_forms() {
        let m = Mailbox::parse("Jo Smith <jo@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Jo Smith"));
        assert_eq!(m.address.to_string(), "jo@example.com");
        let m = Mailbox::parse("\"Smith, Jo\" <jo@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Smith, Jo"));
        let m = Mailbox::parse("<jo@example.com>").unwrap();
        assert_eq!(m.name, None);
        let m = Mailbox::parse("jo@example.com").unwrap();
        assert_eq!(m.name, None);
        assert!(Mailbox::parse("Jo <jo@example.com> x").is_err());
        let m = Mailbox::parse("\"J. \\\"Jo\\\" Smith\" <jo@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("J. \"Jo\" Smith"));
        let m = Mailbox::parse("Zoë  Ångström <z@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Zoë Ångström"));
        assert!(Mailbox::parse("Jo <<jo@example.com>>").is_err());
        assert!(Mailbox::new(Some("Jo\r\nBcc: x@y.example"), "jo@example.com").is_err());
    }
}
