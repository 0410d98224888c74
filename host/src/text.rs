//! Text that came from outside (a plugin, a server, a config) made safe to
//! show and to keep: the one escaping function of the host, and clipping by
//! characters, never by byte offset. Bidi controls are escaped as Unicode
//! TR #9 and CVE-2021-42574 ("Trojan Source") advise.

use std::borrow::Cow;

/// True for characters that could rewrite or reorder what an operator sees:
/// C0 and C1 controls (ESC, BEL, CR, LF, ...) except tab, DEL, the Unicode
/// line and paragraph separators, and the bidi controls (U+061C, U+200E,
/// U+200F, U+202A..U+202E, U+2066..U+2069).
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` safe for one line of a terminal or log: every unsafe character
/// (see [`is_unsafe`]), newlines included, becomes a `\u{..}` escape, so
/// text can neither move the cursor nor start a line of its own.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| if is_unsafe(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect())
}

/// Where finished lines of text go: the operator's terminal, or a test's
/// buffer.
pub type LineSink = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// A sink that writes each line to standard error.
pub fn stderr_lines() -> LineSink {
    std::sync::Arc::new(|line: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    })
}

/// At most `max` characters of `s`; a cut is marked with how many
/// characters were left out.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((at, _)) => {
            let left_out = s[at..].chars().count();
            Cow::Owned(format!("{}…(+{left_out} chars)", &s[..at]))
        }
    }
}

/// Each line of `text` as the operator sees plugin text: escaped and
/// prefixed with `prefix` (`[name] `), so no line of it can pass for the
/// host's own output.
pub fn prefixed_lines<'a>(prefix: &'a str, text: &'a str) -> impl Iterator<Item = String> + 'a {
    text.split('\n').map(move |l| format!("{prefix}{}", printable(l.strip_suffix('\r').unwrap_or(l))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls_bidi_and_newlines() {
        assert_eq!(printable("250 ok\tfine"), "250 ok\tfine");
        assert_eq!(printable("bad \u{1b}]0;pwned\u{7}\u{9b}2J"), "bad \\u{1b}]0;pwned\\u{7}\\u{9b}2J");
        assert_eq!(printable("a\nwasmail: fake"), "a\\u{a}wasmail: fake");
        assert_eq!(printable("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(printable("\u{2066}x\u{2069}\u{200f}"), "\\u{2066}x\\u{2069}\\u{200f}");
        assert_eq!(printable("é ü б"), "é ü б");
    }

    #[test]
    fn clips_by_characters() {
        assert_eq!(clip("ééééé", 3), "ééé…(+2 chars)");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("", 0), "");
        assert_eq!(clip("б", 0), "…(+1 chars)");
    }

    #[test]
    fn every_line_gets_the_prefix() {
        let lines: Vec<String> = prefixed_lines("[p] ", "one\r\nwasmail: plugin admin stopped\n\u{1b}[2J").collect();
        assert_eq!(lines, ["[p] one", "[p] wasmail: plugin admin stopped", "[p] \\u{1b}[2J"]);
    }
}
