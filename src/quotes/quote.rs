//! `Quote`: a person's quote, parsed once at the edge. Internals only ever see valid quotes.

use std::fmt;

pub const MAX_CHARS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote(String);

/// Why a quote was refused, worded for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("Write a quote first.")]
    Empty,
    #[error("A quote can be at most {MAX_CHARS} characters; this one has {0}.")]
    TooLong(usize),
    #[error(
        "The quote contains a control character that cannot be saved. Remove it and try again."
    )]
    ControlCharacter,
}

impl Quote {
    /// Trims, normalises browser line endings (`\r\n`) to `\n`, and checks length (in
    /// characters, not bytes) and content. Text is otherwise kept exactly as typed.
    pub fn parse(raw: &str) -> Result<Self, QuoteError> {
        let text = raw.replace("\r\n", "\n").replace('\r', "\n");
        let text = text.trim();
        if text.is_empty() {
            return Err(QuoteError::Empty);
        }
        let count = text.chars().count();
        if count > MAX_CHARS {
            return Err(QuoteError::TooLong(count));
        }
        if text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(QuoteError::ControlCharacter);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_keeps_inner_text_exactly() {
        let q = Quote::parse("  Be yourself;\r\n everyone else is taken.\t ").unwrap();
        assert_eq!(q.as_str(), "Be yourself;\n everyone else is taken.");
    }

    #[test]
    fn empty_and_whitespace_are_refused() {
        assert_eq!(Quote::parse(""), Err(QuoteError::Empty));
        assert_eq!(Quote::parse(" \n\t "), Err(QuoteError::Empty));
    }

    #[test]
    fn length_counts_characters_and_reports_the_count() {
        assert!(Quote::parse(&"é".repeat(MAX_CHARS)).is_ok());
        let err = Quote::parse(&"é".repeat(MAX_CHARS + 1)).unwrap_err();
        assert_eq!(err, QuoteError::TooLong(MAX_CHARS + 1));
        assert!(err.to_string().contains("1000") && err.to_string().contains("1001"));
    }

    #[test]
    fn control_characters_are_refused_but_newlines_and_tabs_kept() {
        assert_eq!(Quote::parse("a\u{0}b"), Err(QuoteError::ControlCharacter));
        assert_eq!(Quote::parse("a\u{7}b"), Err(QuoteError::ControlCharacter));
        assert!(Quote::parse("a\n\tb").is_ok());
    }

    #[test]
    fn unicode_round_trips() {
        let text = "🦀 שלום עולם — e\u{301}";
        assert_eq!(Quote::parse(text).unwrap().as_str(), text);
    }
}
