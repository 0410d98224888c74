//! The mail policy of one plugin run: allowed From addresses, recipient
//! patterns, counts, rate and headers. Addresses are parsed with the very
//! parser the mailer uses for the envelope and the header fields (RFC 5321
//! 4.1.2 / RFC 5322 3.4), so the policy checks the value that goes on the wire.

use crate::bindings::types::{Mailbox, Message};
use crate::config::PluginConfig;
use std::time::Instant;
use wasmail_mailer::mime::address::{Address, Mailbox as ParsedMailbox};

/// Why a message was refused: the rule's name and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pattern: `*`, `*@domain`, `*@*.domain` (any subdomain) or an exact
/// address. Domains compare without case; local parts exactly.
pub fn matches(pattern: &str, addr: &Address) -> bool {
    let pattern = pattern.trim();
    if pattern == "*" {
        return true;
    }
    let Some((local, domain)) = pattern.rsplit_once('@') else {
        return false;
    };
    let local_ok = local == "*" || local == addr.local();
    let d = addr.domain();
    let domain_ok = if let Some(suffix) = domain.strip_prefix("*.") {
        d.len() > suffix.len() + 1
            && d[d.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            && d.as_bytes()[d.len() - suffix.len() - 1] == b'.'
    } else {
        domain == "*" || d.eq_ignore_ascii_case(domain)
    };
    local_ok && domain_ok
}

/// The policy state for one run.
#[derive(Debug)]
pub struct Policy {
    cfg: PluginConfig,
    sent: u32,
    tokens: f64,
    last: Instant,
}

/// A message that passed the policy, with what the audit log needs.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The From address.
    pub from: String,
    /// Every recipient (To, Cc, Bcc).
    pub recipients: Vec<String>,
}

fn parse(field: &str, m: &Mailbox) -> Result<Address, String> {
    ParsedMailbox::new(m.name.as_deref(), &m.address)
        .map(|p| p.address)
        .map_err(|e| format!("{field}.address: {e}"))
}

impl Policy {
    /// A fresh run under `cfg`.
    pub fn new(cfg: PluginConfig) -> Self {
        let tokens = f64::from(cfg.rate_per_minute.unwrap_or(0));
        Self { cfg, sent: 0, tokens, last: Instant::now() }
    }

    /// The configuration.
    pub fn config(&self) -> &PluginConfig {
        &self.cfg
    }

    /// Fill in the default From, then check `msg`. `Err(Ok(denied))` is a
    /// policy denial; `Err(Err(text))` a malformed address (invalid-message).
    pub fn check(&mut self, msg: &mut Message) -> Result<Approved, Result<Denied, String>> {
        let deny = |s: String| Err(Ok(Denied(s)));
        if msg.from.is_none() {
            let Some(default) = &self.cfg.default_from else {
                return deny("default_from: the message has no From and the policy sets no default".into());
            };
            let m = ParsedMailbox::parse(default).map_err(|e| Err(format!("default_from in the config: {e}")))?;
            msg.from = Some(Mailbox { name: m.name, address: m.address.to_string() });
        }
        let from_box = msg.from.as_ref().ok_or_else(|| Err("from: missing".to_owned()))?;
        let from = parse("from", from_box).map_err(Err)?;
        if !self.cfg.allowed_from.iter().any(|p| matches(p, &from)) {
            return deny(format!("allowed_from: {from} is not an allowed From address"));
        }
        let total = msg.to.len() + msg.cc.len() + msg.bcc.len();
        if total > self.cfg.max_recipients {
            return deny(format!("max_recipients: {total} recipients, the limit is {}", self.cfg.max_recipients));
        }
        let mut recipients = Vec::with_capacity(total);
        for (field, list) in [("to", &msg.to), ("cc", &msg.cc), ("bcc", &msg.bcc)] {
            for (i, m) in list.iter().enumerate() {
                let a = parse(&format!("{field}[{i}]"), m).map_err(Err)?;
                if !self.cfg.allowed_recipients.iter().any(|p| matches(p, &a)) {
                    return deny(format!("allowed_recipients: {field}[{i}] {a} is not an allowed recipient"));
                }
                recipients.push(a.to_string());
            }
        }
        for (name, _) in &msg.headers {
            if !self.cfg.allowed_headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                return deny(format!("allowed_headers: the header {name:?} is not allowed"));
            }
        }
        if self.sent >= self.cfg.max_messages {
            return deny(format!("max_messages: the limit of {} messages per run is reached", self.cfg.max_messages));
        }
        if let Some(rate) = self.cfg.rate_per_minute {
            let now = Instant::now();
            let per_sec = f64::from(rate) / 60.0;
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * per_sec).min(f64::from(rate));
            self.last = now;
            if self.tokens < 1.0 {
                return deny(format!("rate_per_minute: more than {rate} messages per minute"));
            }
            self.tokens -= 1.0;
        }
        self.sent += 1;
        Ok(Approved { from: from.to_string(), recipients })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::Priority;

    fn mb(a: &str) -> Mailbox {
        Mailbox { name: None, address: a.into() }
    }

    fn msg() -> Message {
        Message {
            from: None,
            reply_to: None,
            to: vec![mb("a@example.com")],
            cc: vec![],
            bcc: vec![],
            subject: "s".into(),
            text: Some("t".into()),
            html: None,
            attachments: vec![],
            priority: Priority::Normal,
            headers: vec![],
        }
    }

    fn policy() -> Policy {
        let mut c = PluginConfig::outbox_default();
        c.allowed_from = vec!["bot@example.com".into()];
        c.default_from = Some("Bot <bot@example.com>".into());
        c.allowed_recipients = vec!["*@example.com".into(), "boss@corp.example".into()];
        c.max_recipients = 3;
        c.max_messages = 2;
        Policy::new(c)
    }

    #[test]
    fn patterns() {
        let a = Address::parse("Jo@Sub.Example.COM").unwrap();
        assert!(matches("*@*.example.com", &a));
        assert!(matches("*@sub.example.com", &a));
        assert!(!matches("*@example.com", &a));
        assert!(!matches("jo@sub.example.com", &a), "local parts are exact");
        assert!(matches("*", &a));
        let b = Address::parse("x@badexample.com").unwrap();
        assert!(!matches("*@*.example.com", &b));
    }

    #[test]
    fn default_from_and_limits() {
        let mut p = policy();
        let mut m = msg();
        let ok = p.check(&mut m).unwrap();
        assert_eq!(ok.from, "bot@example.com");
        assert_eq!(m.from.as_ref().unwrap().name.as_deref(), Some("Bot"));
        assert!(p.check(&mut msg()).is_ok());
        let Err(Ok(d)) = p.check(&mut msg()) else { panic!() };
        assert!(d.0.starts_with("max_messages"));
    }

    #[test]
    fn denials_name_the_rule() {
        let cases: Vec<(Box<dyn Fn(&mut Message)>, &str)> = vec![
            (Box::new(|m| m.from = Some(mb("ceo@bank.example"))), "allowed_from"),
            (Box::new(|m| m.bcc.push(mb("victim@elsewhere.example"))), "allowed_recipients"),
            (Box::new(|m| m.cc.push(mb("x@example.com.evil.example"))), "allowed_recipients"),
            (Box::new(|m| m.to = (0..4).map(|i| mb(&format!("u{i}@example.com"))).collect()), "max_recipients"),
            (Box::new(|m| m.headers.push(("X-Evil".into(), "1".into()))), "allowed_headers"),
        ];
        for (mutate, rule) in cases {
            let mut m = msg();
            mutate(&mut m);
            let Err(Ok(d)) = policy().check(&mut m) else { panic!("{rule} not denied") };
            assert!(d.0.starts_with(rule), "{d}");
        }
    }

    #[test]
    fn quoting_and_comments_cannot_bypass_the_domain_list() {
        for sneaky in [
            "\"victim@elsewhere.example\"@example.com",
            "victim@elsewhere.example(@example.com)",
            "victim@elsewhere.example <x@example.com>",
            "victim%elsewhere.example@example.com@elsewhere.example",
            "victim@elsewhere.example\r\n@example.com",
        ] {
            let mut m = msg();
            m.to = vec![mb(sneaky)];
            match policy().check(&mut m) {
                Ok(a) => panic!("{sneaky:?} passed as {:?}", a.recipients),
                Err(Ok(_)) | Err(Err(_)) => {}
            }
        }
    }
}
