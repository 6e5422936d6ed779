//! What Postgres can store, and the one rule that makes a profile's values storable.
//!
//! Postgres `text` cannot hold U+0000 (SQLSTATE 22021, "invalid byte sequence for encoding") and
//! `jsonb` cannot hold a `\u0000` escape (22P05, "unsupported Unicode escape sequence") nor a
//! lone UTF-16 surrogate such as `"\ud800"` (22P02). Auth0 keeps all three: metadata is whatever
//! an application wrote, and JavaScript's `JSON.stringify` writes a lone surrogate as a `\udXXX`
//! escape. serde_json refuses lone surrogates outright, which would make a whole page of users
//! unreadable. The rule, the same in every column and every path that writes `users` (the sync's
//! pages and exports, single-user reads, sign-in):
//!
//! - U+0000 is removed from every string and every object key;
//! - a lone surrogate escape becomes U+FFFD (the replacement character), as
//!   `String::from_utf16_lossy` does;
//! - everything else is kept exactly.
//!
//! Identifiers are not repaired: a `user_id` holding U+0000 would name another user once
//! cleaned, so such a profile is refused instead (see `Auth0User`).
//! <https://www.postgresql.org/docs/current/datatype-json.html> (`\u0000` and surrogates),
//! <https://www.postgresql.org/docs/current/multibyte.html> (NUL in text).

use std::borrow::Cow;

use serde_json::Value;

/// `text` without U+0000.
pub fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', ""))
    } else {
        Cow::Borrowed(value)
    }
}

/// Owned flavour of [`text`] for optional columns.
pub fn text_owned(value: Option<String>) -> Option<String> {
    value.map(|v| match text(&v) {
        Cow::Borrowed(_) => v,
        Cow::Owned(clean) => clean,
    })
}

/// Removes U+0000 from every string and key in `value`, in place. Returns whether anything
/// changed. Keys that become equal once cleaned keep the value seen last.
pub fn json(value: &mut Value) -> bool {
    match value {
        Value::String(s) => {
            if s.contains('\0') {
                s.retain(|c| c != '\0');
                true
            } else {
                false
            }
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, v| json(v) | changed),
        Value::Object(map) => {
            let mut changed = false;
            if map.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(map);
                for (key, v) in entries {
                    map.insert(text(&key).into_owned(), v);
                }
                changed = true;
            }
            map.values_mut()
                .fold(changed, |changed, v| json(v) | changed)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether JSON text may hold what this rule changes: a `\u0000` escape, or a `\uD800`-`\uDFFF`
/// one (a lone surrogate, or half of a pair, which is fine but rare). A JSON string cannot hold a
/// raw control character, so text without such an escape is storable exactly as it is. May
/// answer `true` for text that needs nothing (`\\u0000`, an escaped backslash, is text).
pub fn may_need_repair(text: &str) -> bool {
    text.match_indices("\\u")
        .any(|(at, _)| match text.as_bytes().get(at + 2..at + 6) {
            Some(b"0000") => true,
            Some([d, second, ..]) => {
                d.eq_ignore_ascii_case(&b'd')
                    && matches!(second.to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f')
            }
            _ => false,
        })
}

/// Parses JSON text as serde_json does, except that lone surrogate escapes become U+FFFD
/// instead of failing the document. Returns the value and whether the text had to be repaired.
pub fn parse_json(text: &str) -> serde_json::Result<(Value, bool)> {
    match serde_json::from_str(text) {
        Ok(value) => Ok((value, false)),
        Err(err) => match replace_lone_surrogates(text) {
            Some(repaired) => serde_json::from_str(&repaired).map(|value| (value, true)),
            None => Err(err),
        },
    }
}

/// The JSON text with every `\uD800`-`\uDFFF` escape that is not half of a high-low pair
/// replaced by `\uFFFD`; `None` when there is none. Escapes are only recognised inside strings,
/// and `\\u...` (an escaped backslash) is left alone.
fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = bytes.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let high = |u: u16| (0xD800..0xDC00).contains(&u);
    let low = |u: u16| (0xDC00..0xE000).contains(&u);

    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => match unit(i) {
                Some(u) if high(u) && unit(i + 6).is_some_and(low) => i += 12,
                Some(u) if high(u) || low(u) => {
                    let repaired = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    repaired.push_str(&text[copied..i]);
                    repaired.push_str("\\uFFFD");
                    i += 6;
                    copied = i;
                }
                Some(_) => i += 6,
                // Any other escape is two bytes (`\"`, `\\`, `\n`, ...).
                None => i += 2,
            },
            _ => i += 1,
        }
    }
    out.map(|mut repaired| {
        repaired.push_str(&text[copied..]);
        repaired
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_goes_from_strings_and_keys_at_any_depth() {
        let mut value = json!({"a\u{0}b": ["x\u{0}", {"n": "\u{0}"}], "ok": 1, "t": true});
        assert!(json(&mut value));
        assert_eq!(value, json!({"ab": ["x", {"n": ""}], "ok": 1, "t": true}));
        assert!(!json(&mut value), "clean values are left alone");
        assert_eq!(text("a\0b\0"), "ab");
        assert!(matches!(text("clean"), Cow::Borrowed("clean")));
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let (value, repaired) =
            parse_json(r#"{"a":"x\ud800y","b":"\udc00","c":"\ud83d\ude00","d":"\\ud800"}"#)
                .unwrap();
        assert!(repaired);
        assert_eq!(value["a"], "x\u{fffd}y");
        assert_eq!(value["b"], "\u{fffd}");
        assert_eq!(value["c"], "😀", "a pair is one character");
        assert_eq!(value["d"], "\\ud800", "an escaped backslash is text");
        // A high surrogate followed by another high one: both are lone.
        let (value, _) = parse_json(r#"["\ud800\ud800"]"#).unwrap();
        assert_eq!(value[0], "\u{fffd}\u{fffd}");
    }

    #[test]
    fn only_nul_and_surrogate_escapes_may_need_repair() {
        assert!(!may_need_repair(r#"{"a":"plain \u00e9 text","b":"\n"}"#));
        assert!(may_need_repair(r#"{"a":"x\u0000"}"#));
        assert!(may_need_repair(r#"{"a":"x\uD83D"}"#));
        assert!(may_need_repair(r#"{"a":"x\udfff"}"#));
        assert!(!may_need_repair(r#"{"a":"x\ue000\u00d8"}"#));
        assert!(
            !may_need_repair(r#"{"a":"\u00"}"#),
            "a cut escape is not JSON anyway"
        );
    }

    #[test]
    fn valid_and_hopeless_documents_are_left_to_serde_json() {
        assert_eq!(parse_json(r#"{"a":1}"#).unwrap(), (json!({"a": 1}), false));
        assert!(parse_json(r#"{"a":1e400}"#).is_err());
        assert!(parse_json("not json").is_err());
    }
}
