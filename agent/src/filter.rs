//! The subset of AIP-160 filters the list methods accept: comparisons
//! `field = value` joined by `AND`, where a value is a double-quoted string
//! (with `\"` and `\\` escapes), an unsigned integer, or a bare word such as
//! `ACTIVE`. Anything else is a clear InvalidArgument, never a guess.

use crate::core::CoreError;

/// One `field = value` comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub field: String,
    pub value: String,
}

/// A parsed filter: every comparison must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub comparisons: Vec<Comparison>,
}

/// Fields whose values must be unsigned integers, checked when parsing.
const NUMERIC_FIELDS: [&str; 4] = ["owner_pid", "owner_uid", "pid", "uid"];

/// Longest filter accepted, in bytes.
const MAX_FILTER_LEN: usize = 4096;

impl Filter {
    /// Parses `text`, accepting only the fields in `allowed`.
    ///
    /// # Errors
    /// InvalidArgument naming what is wrong and where.
    pub fn parse(text: &str, allowed: &[&str]) -> Result<Filter, CoreError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(invalid(format!(
                "filter is longer than {MAX_FILTER_LEN} bytes"
            )));
        }
        let tokens = tokenize(text)?;
        let mut comparisons = Vec::new();
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            if !comparisons.is_empty() {
                match rest {
                    [Token::Word(and), tail @ ..] if and == "AND" => rest = tail,
                    _ => return Err(invalid("expected AND between comparisons".into())),
                }
            }
            match rest {
                [Token::Word(field), Token::Equals, value, tail @ ..] => {
                    if !allowed.contains(&field.as_str()) {
                        return Err(invalid(format!(
                            "unknown filter field {field:?}; allowed: {}",
                            allowed.join(", ")
                        )));
                    }
                    let value = match value {
                        Token::Word(word) | Token::Quoted(word)
                            if NUMERIC_FIELDS.contains(&field.as_str())
                                && word.parse::<u64>().is_err() =>
                        {
                            return Err(invalid(format!(
                                "{field} must be compared with an unsigned integer, got {word:?}"
                            )));
                        }
                        Token::Word(word) | Token::Quoted(word) => word.clone(),
                        Token::Equals => {
                            return Err(invalid(format!("expected a value after {field} =")));
                        }
                    };
                    comparisons.push(Comparison {
                        field: field.clone(),
                        value,
                    });
                    rest = tail;
                }
                _ => {
                    return Err(invalid(
                        "expected a comparison `field = value` (e.g. tenant = \"uid-1000\")".into(),
                    ));
                }
            }
        }
        Ok(Filter { comparisons })
    }

    /// Values required for `field`, in order of appearance.
    pub fn values<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.comparisons
            .iter()
            .filter(move |c| c.field == field)
            .map(|c| c.value.as_str())
    }

    /// True if every comparison on `field` equals `actual`.
    pub fn matches(&self, field: &str, actual: &str) -> bool {
        self.values(field).all(|v| v == actual)
    }

    /// Like [`Filter::matches`] for numeric fields (validated by `parse`).
    pub fn matches_number(&self, field: &str, actual: u64) -> bool {
        self.values(field).all(|v| v.parse() == Ok(actual))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Equals,
}

fn tokenize(text: &str) -> Result<Vec<Token>, CoreError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '=' => {
                chars.next();
                tokens.push(Token::Equals);
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                            _ => return Err(invalid(format!("bad escape in string at byte {at}"))),
                        },
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(invalid(format!(
                                "unterminated string starting at byte {at}"
                            )));
                        }
                    }
                }
                tokens.push(Token::Quoted(value));
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
            other => {
                return Err(invalid(format!(
                    "unexpected {other:?} at byte {at}; filters are `field = value` joined by AND"
                )));
            }
        }
    }
    Ok(tokens)
}

fn invalid(message: String) -> CoreError {
    CoreError::InvalidArgument(format!("invalid filter: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &["tenant", "name", "owner_pid", "state"];

    #[test]
    fn empty_filter_matches_everything() {
        let sut = Filter::parse("  ", FIELDS).unwrap();
        assert!(sut.matches("tenant", "anything"));
        assert!(sut.matches_number("owner_pid", 7));
    }

    #[test]
    fn parses_quoted_bare_and_numeric_values_joined_by_and() {
        let sut = Filter::parse(
            r#"tenant = "uid-1000" AND owner_pid=42 AND state = ACTIVE AND name = "a \"q\" \\""#,
            FIELDS,
        )
        .unwrap();
        assert!(sut.matches("tenant", "uid-1000"));
        assert!(!sut.matches("tenant", "uid-1001"));
        assert!(sut.matches_number("owner_pid", 42));
        assert!(!sut.matches_number("owner_pid", 43));
        assert!(sut.matches("state", "ACTIVE"));
        assert!(sut.matches("name", r#"a "q" \"#));
    }

    #[test]
    fn rejects_malformed_filters_with_a_reason() {
        for bad in [
            "tenant",
            "tenant =",
            "= 3",
            "tenant = \"open",
            "tenant = \"bad \\n escape\"",
            "tenant = a tenant = b",
            "tenant = a OR name = b",
            "color = red",
            "tenant > 3",
            "tenant = a AND",
        ] {
            match Filter::parse(bad, FIELDS) {
                Err(CoreError::InvalidArgument(message)) => {
                    assert!(message.starts_with("invalid filter: "), "{message}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(Filter::parse(&"a".repeat(MAX_FILTER_LEN + 1), FIELDS).is_err());
    }

    #[test]
    fn non_numeric_value_for_a_numeric_field_is_an_error() {
        for bad in ["owner_pid = abc", "owner_pid = \"-1\""] {
            assert!(
                matches!(
                    Filter::parse(bad, FIELDS),
                    Err(CoreError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
