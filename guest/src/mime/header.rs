//! Header field writer (RFC 5322 2.2, 3.3, 3.4): folding at 78 columns,
//! RFC 2047 encoded words for non-ASCII text, display names as atoms, quoted
//! strings or encoded words, and the `Date` format.

use super::address::Mailbox;
use super::encode::{ENCODED_WORD_LINE, HEADER_FOLD, MIN_ENCODED_WORD, encoded_words};
use super::lint::MAX_LINE;

/// Collects header fields as CRLF-terminated, folded lines.
#[derive(Default)]
pub struct HeaderWriter {
    out: String,
}

fn is_phrase_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~ ".contains(c)
}

/// The least room a display name is given on a line of an address list:
/// with less left, the mailbox starts on the next line.
pub const MIN_NAME_ROOM: usize = 30;

/// The display name as RFC 5322 phrase text: atoms, a quoted string, or
/// encoded words.
pub fn display_name(name: &str, room: usize) -> String {
    // Encoded words fold; atoms and quoted strings cannot, so a name too long
    // for one line goes as encoded words too.
    if !name.is_ascii() || name.contains("=?") || name.len() + 2 > room {
        encoded_words(name, room)
    } else if name.chars().all(is_phrase_atext) && !name.starts_with(' ') {
        name.to_owned()
    } else {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    }
}

impl HeaderWriter {
    /// Current column on the last line.
    fn column(&self) -> usize {
        self.out.len() - self.out.rfind('\n').map_or(0, |i| i + 1)
    }

    /// A field whose value the builder generated and knows to be short ASCII.
    pub fn field(&mut self, name: &str, value: &str) {
        self.out.push_str(name);
        self.out.push_str(": ");
        self.out.push_str(value);
        self.out.push_str("\r\n");
    }

    /// An unstructured field (Subject, custom headers): folded at white space,
    /// or sent as encoded words when it is not ASCII, contains `=?`, or has a
    /// word too long for a line even alone ([`MAX_LINE`]). A word that is
    /// only longer than [`HEADER_FOLD`] (a URL in `List-Unsubscribe`) goes
    /// as it is, on a line of its own: RFC 5322 2.1.1 asks 78 octets of a
    /// line only where it can, and encoded words are not allowed in the
    /// structured fields a custom header may be (RFC 2047 5).
    pub fn unstructured(&mut self, name: &str, value: &str) {
        self.out.push_str(name);
        self.out.push(':');
        let needs_encoding = !value.is_ascii()
            || value.contains("=?")
            || value.split(' ').any(|w| w.len() + name.len() + 2 > MAX_LINE)
            || value.contains('\t')
            // Spaces beyond a line's worth cannot all stay where they are
            // (see below): encoded words carry them.
            || value.split(' ').filter(|w| w.is_empty()).count() > HEADER_FOLD;
        if value.is_empty() {
            self.out.push_str("\r\n");
            return;
        }
        if needs_encoding {
            // A long name leaves no room for a word on its line: fold first.
            if self.column() + 1 + MIN_ENCODED_WORD > ENCODED_WORD_LINE {
                self.out.push_str("\r\n");
            }
            self.out.push(' ');
            let room = ENCODED_WORD_LINE.saturating_sub(self.column());
            self.out.push_str(&encoded_words(value, room));
        } else {
            let mut first = true;
            for word in value.split(' ') {
                // Fold only before a word: a fold before the empty "word"
                // of a doubled or trailing space would leave a line of
                // white space alone (obsolete syntax, RFC 5322 4.2).
                if !first && !word.is_empty() && self.column() + 1 + word.len() > HEADER_FOLD {
                    self.out.push_str("\r\n");
                }
                self.out.push(' ');
                self.out.push_str(word);
                first = false;
            }
        }
        self.out.push_str("\r\n");
    }

    /// An address-list field (From, To, Cc, Reply-To), folded between
    /// mailboxes.
    pub fn mailboxes(&mut self, name: &str, list: &[Mailbox]) {
        self.out.push_str(name);
        self.out.push(':');
        for (i, m) in list.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let addr = format!("<{}>", m.address);
            let Some(n) = &m.name else {
                // An address literal alone reads as group syntax to some
                // parsers; in angle brackets it is unambiguous.
                let item = if m.address.domain().starts_with('[') { addr } else { m.address.to_string() };
                self.fold_before(i > 0, item.len(), HEADER_FOLD);
                self.out.push(' ');
                self.out.push_str(&item);
                continue;
            };
            // Too little room left on this line for a name: the mailbox
            // starts on the next one.
            if i > 0 && self.column() + 1 + MIN_NAME_ROOM > ENCODED_WORD_LINE {
                self.out.push_str("\r\n");
            }
            let room = ENCODED_WORD_LINE.saturating_sub(self.column() + 1).max(MIN_ENCODED_WORD);
            let phrase = display_name(n, room);
            if phrase.starts_with("=?") {
                // Encoded words: every line of the field within 76 octets,
                // the address on the next line when it does not fit.
                self.out.push(' ');
                self.out.push_str(&phrase);
                self.fold_before(true, addr.len(), ENCODED_WORD_LINE);
                self.out.push(' ');
                self.out.push_str(&addr);
            } else {
                let item = format!("{phrase} {addr}");
                self.fold_before(i > 0, item.len(), HEADER_FOLD);
                self.out.push(' ');
                self.out.push_str(&item);
            }
        }
        self.out.push_str("\r\n");
    }

    /// Fold (if `may` and the line has more than its first octet) when an
    /// item of `len` octets after a space would pass `limit` on this line.
    fn fold_before(&mut self, may: bool, len: usize, limit: usize) {
        if may && self.column() > 1 && self.column() + 1 + len > limit {
            self.out.push_str("\r\n");
        }
    }

    /// The header section so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out.into_bytes()
    }
}

/// RFC 5322 3.3 date-time in UTC, e.g. `Thu, 26 Nov 2026 15:27:44 +0000`.
pub fn format_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Days to civil date (H. Hinnant's algorithm), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(format_date(1_795_707_464), "Thu, 26 Nov 2026 15:37:44 +0000");
        assert_eq!(format_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn names() {
        assert_eq!(display_name("Jo Smith", 70), "Jo Smith");
        assert_eq!(display_name("Smith, Jo", 70), "\"Smith, Jo\"");
        assert_eq!(display_name("a \"b\" \\c", 70), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(display_name("Jürgen", 70), "=?utf-8?B?SsO8cmdlbg==?=");
        let long = display_name(&"\"".repeat(500), 60);
        assert!(long.starts_with("=?utf-8?B?"), "a name too long for a line is encoded");
        assert!(long.split("\r\n").all(|l| l.len() <= 76));
    }

    #[test]
    fn subject_folds_at_78() {
        let mut h = HeaderWriter::default();
        h.unstructured("Subject", &"word ".repeat(40));
        let text = String::from_utf8(h.into_bytes()).unwrap();
        for line in text.split_terminator("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
        assert!(text.contains("\r\n word"));
    }

    #[test]
    fn a_long_ascii_word_goes_as_it_is_on_a_line_of_its_own() {
        let url = "<https://news.example.com/u?t=0123456789abcdef0123456789abcdef>";
        let mut h = HeaderWriter::default();
        h.unstructured("List-Unsubscribe", url);
        assert_eq!(h.into_bytes(), format!("List-Unsubscribe: {url}\r\n").into_bytes());
        let mut h = HeaderWriter::default();
        h.unstructured("Subject", &format!("see {} now", "x".repeat(100)));
        assert_eq!(String::from_utf8(h.into_bytes()).unwrap(), format!("Subject: see\r\n {}\r\n now\r\n", "x".repeat(100)));
        // Too long for any line: encoded words, which fold.
        let mut h = HeaderWriter::default();
        h.unstructured("Subject", &"x".repeat(1000));
        let text = String::from_utf8(h.into_bytes()).unwrap();
        assert!(text.starts_with("Subject: =?utf-8?") && text.split("\r\n").all(|l| l.len() <= 78), "{text}");
    }

    #[test]
    fn a_line_with_an_encoded_word_is_at_most_76_octets() {
        for name in ["Subject", "X-Long-Custom-Header-Name", &format!("X-{}", "n".repeat(70))] {
            let mut h = HeaderWriter::default();
            h.unstructured(name, &"é".repeat(40));
            let text = String::from_utf8(h.into_bytes()).unwrap();
            assert!(text.split("\r\n").all(|l| l.len() <= ENCODED_WORD_LINE), "{text}");
        }
    }

    #[test]
    fn an_encoded_display_name_keeps_its_lines_to_76_octets() {
        let long = Mailbox::new(Some(&"Zoë ".repeat(20)), "someone.with.a.long.address@example.com").unwrap();
        let short = Mailbox::new(Some("Zoë"), "z@example.com").unwrap();
        for list in [vec![long.clone()], vec![short.clone(), long.clone(), short.clone()], vec![short.clone(); 8]] {
            let mut h = HeaderWriter::default();
            h.mailboxes("From", &list);
            let text = String::from_utf8(h.into_bytes()).unwrap();
            assert!(text.split("\r\n").all(|l| l.len() <= ENCODED_WORD_LINE), "{text}");
            let whole = format!("{text}\r\nx\r\n");
            let parsed = mail_parser::MessageParser::default().parse(whole.as_bytes()).unwrap();
            let from = parsed.from().unwrap();
            assert_eq!(from.iter().count(), list.len(), "{text}");
            assert_eq!(from.first().and_then(|a| a.name()).map(str::trim), list[0].name.as_deref().map(str::trim), "{text}");
        }
    }

    #[test]
    fn address_list_folds() {
        let list: Vec<Mailbox> =
            (0..6).map(|i| Mailbox::new(Some("Recipient Name"), &format!("user{i}@example.com")).unwrap()).collect();
        let mut h = HeaderWriter::default();
        h.mailboxes("To", &list);
        let text = String::from_utf8(h.into_bytes()).unwrap();
        assert!(text.starts_with("To: Recipient Name <user0@example.com>, Recipient Name <user1@example.com>,\r\n "));
        for line in text.split_terminator("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
    }
}
