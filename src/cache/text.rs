//! Text from a cache or a bundle made safe for a terminal: control characters (C0, DEL, C1,
//! which include the escape sequences that move the cursor, retitle the window or hide text) and
//! bidirectional overrides are shown escaped, never sent raw. Pure.

use std::borrow::Cow;

fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character and bidirectional override written as `\u{..}`.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path for a message, made [`printable`].
pub fn path(p: &std::path::Path) -> String {
    printable(&p.to_string_lossy()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_reach_the_terminal_escaped() {
        assert_eq!(printable("plain name_1.0"), "plain name_1.0");
        assert_eq!(printable("a\x1b[31mred"), "a\\u{1b}[31mred");
        assert_eq!(printable("\u{9b}2J\u{7f}\n"), "\\u{9b}2J\\u{7f}\\u{a}");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert!(
            !printable("\x07\x1b]0;t\x07")
                .chars()
                .any(|c| c.is_control())
        );
    }
}
