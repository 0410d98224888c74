//! The mail policy of one plugin run: allowed From and Reply-To addresses,
//! recipient patterns, display names, counts, attempts, rate and headers.
//! Addresses are parsed with the very parser the mailer uses for the envelope
//! and the header fields (RFC 5321 4.1.2 / RFC 5322 3.4), so the policy
//! checks the value that goes on the wire.
//!
//! Nothing here slices a string by byte offset: patterns and addresses come
//! from configs and plugins, and may hold any Unicode.

use crate::bindings::types::{Mailbox, Message};
use crate::config::PluginConfig;
use crate::text::clip;
use std::time::Instant;
use wasmail_mailer::mime::address::Mailbox as ParsedMailbox;

/// Most characters of plugin-supplied text (a header name, an address)
/// quoted in a denial. The rest is cut, and the cut is counted.
pub const MAX_QUOTED_CHARS: usize = 80;

/// The rule a denial names. Its [`Rule::key`] is the config key that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The message has no From and the policy sets no default.
    DefaultFrom,
    /// The From address is not allowed.
    AllowedFrom,
    /// The Reply-To address is not allowed.
    AllowedReplyTo,
    /// A display name holds an `@`.
    AddressInDisplayName,
    /// Too many recipients.
    MaxRecipients,
    /// A recipient is not allowed.
    AllowedRecipients,
    /// A header the policy does not allow.
    AllowedHeaders,
    /// Too many attachments.
    MaxAttachments,
    /// The message is certainly larger than the limit.
    MaxMessageBytes,
    /// The run already sent its messages.
    MaxMessages,
    /// Over the rate.
    RatePerMinute,
}

impl Rule {
    /// The config key of the rule, which every denial starts with.
    pub fn key(self) -> &'static str {
        match self {
            Self::DefaultFrom => "default_from",
            Self::AllowedFrom => "allowed_from",
            Self::AllowedReplyTo => "allowed_reply_to",
            Self::AddressInDisplayName => "allow_address_in_display_name",
            Self::MaxRecipients => "max_recipients",
            Self::AllowedRecipients => "allowed_recipients",
            Self::AllowedHeaders => "allowed_headers",
            Self::MaxAttachments => "max_attachments",
            Self::MaxMessageBytes => "max_message_bytes",
            Self::MaxMessages => "max_messages",
            Self::RatePerMinute => "rate_per_minute",
        }
    }
}

/// Why a message was refused: the rule and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The rule.
    pub rule: Rule,
    /// What broke it, with plugin text clipped.
    pub detail: String,
}

impl Denied {
    fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Self { rule, detail: detail.into() }
    }
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule.key(), self.detail)
    }
}

/// What `check` refuses: a denial, or a malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The policy refused it (`policy-denied`).
    Denied(Denied),
    /// It is malformed (`invalid-message`); the text names the field.
    Invalid(String),
}

/// A budget of the run that a plugin used up: the run is stopped (a trap),
/// not merely refused, because the plugin keeps calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The limit's config key.
    pub key: &'static str,
    /// Its value.
    pub limit: u64,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: the plugin called send more than {} times in this run", self.key, self.limit)
    }
}

impl std::error::Error for Exhausted {}

pub use wasmail_mailer::mime::pattern::matches;

/// The policy state for one run.
#[derive(Debug)]
pub struct Policy {
    cfg: PluginConfig,
    sent: u32,
    attempts: u64,
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

fn parse(field: &str, m: &Mailbox) -> Result<ParsedMailbox, Refusal> {
    ParsedMailbox::new(m.name.as_deref(), &m.address).map_err(|e| Refusal::Invalid(format!("{field}.address: {e}")))
}

/// The encoded size a message cannot be smaller than, computed from its
/// parts before anything is assembled: bodies at least as long as their
/// text, attachments held as bytes at their exact base64 length (RFC 2045
/// 6.8, 76-column lines). Files are measured by the mailer when it opens
/// them.
pub fn size_floor(msg: &Message) -> u64 {
    use crate::bindings::types::Content;
    let body = msg.text.as_ref().map_or(0, String::len) + msg.html.as_ref().map_or(0, String::len);
    let attachments: u64 = msg
        .attachments
        .iter()
        .map(|a| match &a.content {
            Content::Bytes(b) => base64_len(b.len() as u64),
            Content::File(_) => 0,
        })
        .sum();
    (body as u64).saturating_add(attachments)
}

/// Length of base64 in 76-column CRLF lines for `n` input bytes.
fn base64_len(n: u64) -> u64 {
    let chars = n.div_ceil(3) * 4;
    chars + chars.div_ceil(76) * 2
}

/// Characters that read as `@` to a person: a display name holding one can
/// pass for an address (`"ceo@bank.example" <bot@example.com>`).
const AT_SIGNS: &[char] = &['@', '\u{FF20}', '\u{FE6B}'];

impl Policy {
    /// A fresh run under `cfg`.
    pub fn new(cfg: PluginConfig) -> Self {
        let tokens = f64::from(cfg.rate_per_minute.unwrap_or(0));
        Self { cfg, sent: 0, attempts: 0, tokens, last: Instant::now() }
    }

    /// Count one call to `send`, before anything else is looked at. Over
    /// `max_attempts` the run must stop (`Err`); over the rate, the call is
    /// denied (`Ok(Err)`). Denied and failed calls count like sent ones.
    pub fn attempt(&mut self) -> Result<Result<(), Denied>, Exhausted> {
        self.attempts += 1;
        if self.attempts > self.cfg.max_attempts() {
            return Err(Exhausted { key: "max_attempts", limit: self.cfg.max_attempts() });
        }
        if let Some(rate) = self.cfg.rate_per_minute {
            let now = Instant::now();
            let per_sec = f64::from(rate) / 60.0;
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * per_sec).min(f64::from(rate));
            self.last = now;
            if self.tokens < 1.0 {
                return Ok(Err(Denied::new(Rule::RatePerMinute, format!("more than {rate} attempts per minute"))));
            }
            self.tokens -= 1.0;
        }
        Ok(Ok(()))
    }

    /// The calls to `send` so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    fn display_name(&self, field: &str, m: &ParsedMailbox) -> Result<(), Refusal> {
        match &m.name {
            Some(name) if !self.cfg.allow_address_in_display_name && name.contains(AT_SIGNS) => {
                Err(Refusal::Denied(Denied::new(
                    Rule::AddressInDisplayName,
                    format!("{field}.name {:?} looks like an address", clip(name, MAX_QUOTED_CHARS)),
                )))
            }
            _ => Ok(()),
        }
    }

    /// Fill in the default From, then check `msg` against every rule.
    pub fn check(&mut self, msg: &mut Message) -> Result<Approved, Refusal> {
        let deny = |rule: Rule, detail: String| Err(Refusal::Denied(Denied::new(rule, detail)));
        if msg.from.is_none() {
            let Some(default) = &self.cfg.default_from else {
                return deny(Rule::DefaultFrom, "the message has no From and the policy sets no default".into());
            };
            let m = ParsedMailbox::parse(default).map_err(|e| Refusal::Invalid(format!("default_from in the config: {e}")))?;
            msg.from = Some(Mailbox { name: m.name, address: m.address.to_string() });
        }
        let from_box = msg.from.as_ref().ok_or_else(|| Refusal::Invalid("from: missing".to_owned()))?;
        let from = parse("from", from_box)?;
        if !self.cfg.allowed_from.iter().any(|p| matches(p, &from.address)) {
            return deny(Rule::AllowedFrom, format!("{} is not an allowed From address", from.address));
        }
        self.display_name("from", &from)?;
        if let Some(reply_to) = &msg.reply_to {
            let r = parse("reply_to", reply_to)?;
            if !self.cfg.allowed_reply_to().iter().any(|p| matches(p, &r.address)) {
                return deny(Rule::AllowedReplyTo, format!("{} is not an allowed Reply-To address", r.address));
            }
            self.display_name("reply_to", &r)?;
        }
        let total = msg.to.len() + msg.cc.len() + msg.bcc.len();
        if total > self.cfg.max_recipients {
            return deny(Rule::MaxRecipients, format!("{total} recipients, the limit is {}", self.cfg.max_recipients));
        }
        let mut recipients = Vec::with_capacity(total);
        for (field, list) in [("to", &msg.to), ("cc", &msg.cc), ("bcc", &msg.bcc)] {
            for (i, m) in list.iter().enumerate() {
                let field = format!("{field}[{i}]");
                let a = parse(&field, m)?;
                if !self.cfg.allowed_recipients.iter().any(|p| matches(p, &a.address)) {
                    return deny(Rule::AllowedRecipients, format!("{field} {} is not an allowed recipient", a.address));
                }
                self.display_name(&field, &a)?;
                recipients.push(a.address.to_string());
            }
        }
        for (name, _) in &msg.headers {
            if !self.cfg.allowed_headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                return deny(Rule::AllowedHeaders, format!("the header {:?} is not allowed", clip(name, MAX_QUOTED_CHARS)));
            }
        }
        if msg.attachments.len() > self.cfg.max_attachments {
            return deny(
                Rule::MaxAttachments,
                format!("{} attachments, the limit is {}", msg.attachments.len(), self.cfg.max_attachments),
            );
        }
        let floor = size_floor(msg);
        if floor > self.cfg.max_message_bytes {
            return deny(
                Rule::MaxMessageBytes,
                format!("the message is at least {floor} octets, the limit is {}", self.cfg.max_message_bytes),
            );
        }
        if self.sent >= self.cfg.max_messages {
            return deny(Rule::MaxMessages, format!("the limit of {} messages per run is reached", self.cfg.max_messages));
        }
        self.sent += 1;
        Ok(Approved { from: from.address.to_string(), recipients })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::{Attachment, Content};
    use wasmail_mailer::mime::address::Address;
    use proptest::prelude::*;

    fn mb(a: &str) -> Mailbox {
        Mailbox { name: None, address: a.into() }
    }

    fn named(n: &str, a: &str) -> Mailbox {
        Mailbox { name: Some(n.into()), address: a.into() }
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
            priority: None,
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
        c.max_attachments = 2;
        c.max_message_bytes = 1000;
        Policy::new(c)
    }

    fn denied_rule(r: Result<Approved, Refusal>) -> Rule {
        match r {
            Err(Refusal::Denied(d)) => d.rule,
            other => panic!("not denied: {other:?}"),
        }
    }

    #[test]
    fn default_from_and_limits() {
        let mut p = policy();
        let mut m = msg();
        let ok = p.check(&mut m).unwrap();
        assert_eq!(ok.from, "bot@example.com");
        assert_eq!(m.from.as_ref().unwrap().name.as_deref(), Some("Bot"));
        assert!(p.check(&mut msg()).is_ok());
        assert_eq!(denied_rule(p.check(&mut msg())), Rule::MaxMessages);
    }

    #[test]
    fn denials_name_the_rule() {
        let bytes = |n: usize| Attachment {
            filename: "a.bin".into(),
            content_type: None,
            content: Content::Bytes(vec![0; n]),
            content_id: None,
        };
        let cases: Vec<(Box<dyn Fn(&mut Message)>, Rule)> = vec![
            (Box::new(|m| m.from = Some(mb("ceo@bank.example"))), Rule::AllowedFrom),
            (Box::new(|m| m.bcc.push(mb("victim@elsewhere.example"))), Rule::AllowedRecipients),
            (Box::new(|m| m.cc.push(mb("x@example.com.evil.example"))), Rule::AllowedRecipients),
            (Box::new(|m| m.to = (0..4).map(|i| mb(&format!("u{i}@example.com"))).collect()), Rule::MaxRecipients),
            (Box::new(|m| m.headers.push(("X-Evil".into(), "1".into()))), Rule::AllowedHeaders),
            (Box::new(|m| m.reply_to = Some(mb("attacker@evil.example"))), Rule::AllowedReplyTo),
            (Box::new(|m| m.from = Some(named("ceo@bank.example", "bot@example.com"))), Rule::AddressInDisplayName),
            (Box::new(|m| m.reply_to = Some(named("help\u{FF20}bank.example", "bot@example.com"))), Rule::AddressInDisplayName),
            (Box::new(|m| m.to = vec![named("boss@corp.example", "a@example.com")]), Rule::AddressInDisplayName),
            (Box::new(|m| m.cc = vec![named("x\u{FE6B}y", "a@example.com")]), Rule::AddressInDisplayName),
            (Box::new(move |m| m.attachments = vec![bytes(1), bytes(1), bytes(1)]), Rule::MaxAttachments),
            (Box::new(move |m| m.attachments = vec![bytes(800)]), Rule::MaxMessageBytes),
            (Box::new(|m| m.text = Some("é".repeat(600))), Rule::MaxMessageBytes),
        ];
        for (mutate, rule) in cases {
            let mut m = msg();
            mutate(&mut m);
            let r = policy().check(&mut m);
            let Err(Refusal::Denied(d)) = r else { panic!("{rule:?} not denied: {r:?}") };
            assert_eq!(d.rule, rule, "{d}");
            assert!(d.to_string().starts_with(rule.key()), "{d}");
        }
    }

    #[test]
    fn reply_to_follows_from_unless_set_and_display_names_may_be_allowed() {
        let mut m = msg();
        m.reply_to = Some(named("Bot", "bot@example.com"));
        assert!(policy().check(&mut m).is_ok());
        let mut p = policy();
        p.cfg.allowed_reply_to = Some(vec!["*@help.example".into()]);
        let mut m = msg();
        m.reply_to = Some(mb("bot@example.com"));
        assert_eq!(denied_rule(p.check(&mut m)), Rule::AllowedReplyTo);
        let mut m = msg();
        m.reply_to = Some(mb("desk@help.example"));
        assert!(p.check(&mut m).is_ok());
        let mut p = policy();
        p.cfg.allow_address_in_display_name = true;
        let mut m = msg();
        m.to = vec![named("a@example.com", "a@example.com")];
        assert!(p.check(&mut m).is_ok());
    }

    #[test]
    fn a_huge_header_name_makes_a_short_denial() {
        let mut m = msg();
        m.headers.push(("X".repeat(1 << 20), "v".into()));
        let Err(Refusal::Denied(d)) = policy().check(&mut m) else { panic!() };
        assert!(d.to_string().len() < 400, "{} bytes", d.to_string().len());
    }

    #[test]
    fn every_attempt_counts_and_the_budget_stops_the_run() {
        let mut c = PluginConfig::outbox_default();
        c.max_messages = 2;
        let budget = c.max_attempts();
        assert!(budget >= 2);
        let mut p = Policy::new(c);
        for _ in 0..budget {
            assert_eq!(p.attempt(), Ok(Ok(())));
        }
        assert_eq!(p.attempt().unwrap_err().key, "max_attempts");
    }

    #[test]
    fn the_rate_applies_to_attempts() {
        let mut c = PluginConfig::outbox_default();
        c.rate_per_minute = Some(2);
        let mut p = Policy::new(c);
        assert_eq!(p.attempt(), Ok(Ok(())));
        assert_eq!(p.attempt(), Ok(Ok(())));
        let Ok(Err(d)) = p.attempt() else { panic!("third attempt passed the rate") };
        assert_eq!(d.rule, Rule::RatePerMinute);
    }

    #[test]
    fn quoting_and_comments_cannot_bypass_the_domain_list() {
        for sneaky in [
            "\"victim@elsewhere.example\"@example.com",
            "victim@elsewhere.example(@example.com)",
            "victim@elsewhere.example <x@example.com>",
            "victim%elsewhere.example@example.com@elsewhere.example",
            "victim%elsewhere.example@example.com",
            "victim!elsewhere.example@example.com",
            "elsewhere.example!victim@example.com",
            "victim@elsewhere.example\r\n@example.com",
        ] {
            let mut m = msg();
            m.to = vec![mb(sneaky)];
            if let Ok(a) = policy().check(&mut m) {
                panic!("{sneaky:?} passed as {:?}", a.recipients);
            }
        }
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9.*@бüé\u{FF20}-]{0,40}",
            "\\*@\\*\\.[a-zé.б]{0,20}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        /// No pattern and no address, whatever their Unicode, panics the
        /// matcher, and a subdomain pattern only ever matches a longer
        /// domain that ends with it.
        #[test]
        fn matcher_is_total(pattern in any_text(), local in "[a-zA-Z0-9é+._-]{1,20}", domain in any_text()) {
            let Ok(addr) = Address::parse(&format!("{local}@{domain}")) else { return Ok(()) };
            let hit = matches(&pattern, &addr);
            if let Some(suffix) = pattern.trim().rsplit_once('@').and_then(|(_, d)| d.strip_prefix("*.")) {
                if hit {
                    let d = addr.domain().to_ascii_lowercase();
                    let s = suffix.to_ascii_lowercase();
                    prop_assert!(d.ends_with(&format!(".{s}")), "{pattern} matched {addr}");
                }
            }
        }

        /// A whole message of arbitrary text gets a verdict, never a panic,
        /// and a denial's text stays short whatever the plugin sent.
        #[test]
        fn check_is_total(from in any_text(), name in any_text(), to in any_text(), header in any_text()) {
            let mut p = policy();
            p.cfg.allowed_recipients = vec!["*@*.example.org".into(), to.clone()];
            let mut m = msg();
            m.from = Some(Mailbox { name: Some(name.clone()), address: from });
            m.reply_to = Some(Mailbox { name: Some(name), address: to.clone() });
            m.to = vec![mb(&to)];
            m.headers = vec![(header, "v".into())];
            if let Err(Refusal::Denied(d)) = p.check(&mut m) {
                prop_assert!(d.to_string().chars().count() < 2 * MAX_QUOTED_CHARS + 200);
            }
        }
    }
}
