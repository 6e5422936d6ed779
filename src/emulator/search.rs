//! The subset of Auth0's user search v3 query syntax (Lucene) the emulator understands, and the
//! `sort` parameter. See https://auth0.com/docs/manage-users/user-search/user-search-query-syntax
//!
//! Supported: terms joined by whitespace or `AND`; `updated_at` / `created_at` / `last_login`
//! ranges (`[a TO b]` inclusive, `{a TO b}` exclusive, mixed brackets, `*` for open ends, dates
//! or ISO 8601 date-times); exact `email`, `user_id`, `name`, `nickname` (quoted or bare,
//! backslash escapes). Anything else is rejected with a message rather than silently ignored.

use std::ops::Bound;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// A time range over one date field.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub lower: Bound<DateTime<Utc>>,
    pub upper: Bound<DateTime<Utc>>,
}

impl Range {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let above = match self.lower {
            Bound::Included(t) => at >= t,
            Bound::Excluded(t) => at > t,
            Bound::Unbounded => true,
        };
        let below = match self.upper {
            Bound::Included(t) => at <= t,
            Bound::Excluded(t) => at < t,
            Bound::Unbounded => true,
        };
        above && below
    }
}

/// A parsed `q`: every present part must match (AND).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub updated_at: Option<Range>,
    pub created_at: Option<Range>,
    pub last_login: Option<Range>,
    /// Lower-cased: Auth0 compares emails case-insensitively.
    pub email: Option<String>,
    pub user_id: Option<String>,
    pub name: Option<String>,
    pub nickname: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    UpdatedAt,
    CreatedAt,
    LastLogin,
    LoginsCount,
    Email,
    Name,
    UserId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub field: SortField,
    pub descending: bool,
}

impl Sort {
    /// Without `sort`, results come in creation order: stable while users change, like the
    /// deterministic order Auth0 gives with `primary_order=true`.
    pub const DEFAULT: Sort = Sort {
        field: SortField::CreatedAt,
        descending: false,
    };

    /// `field:1` (ascending) or `field:-1` (descending), as Auth0's `sort` parameter.
    pub fn parse(raw: &str) -> Result<Sort, String> {
        let (field, direction) = raw.split_once(':').ok_or_else(|| {
            format!("sort must look like `updated_at:1` or `updated_at:-1`, got {raw:?}")
        })?;
        let field = match field {
            "updated_at" => SortField::UpdatedAt,
            "created_at" => SortField::CreatedAt,
            "last_login" => SortField::LastLogin,
            "logins_count" => SortField::LoginsCount,
            "email" => SortField::Email,
            "name" => SortField::Name,
            "user_id" => SortField::UserId,
            other => return Err(format!("sorting by {other:?} is not supported")),
        };
        let descending = match direction {
            "1" => false,
            "-1" => true,
            other => return Err(format!("sort direction must be 1 or -1, got {other:?}")),
        };
        Ok(Sort { field, descending })
    }
}

/// Parses a v3 query string into a [`Filter`].
pub fn parse_query(q: &str) -> Result<Filter, String> {
    let mut filter = Filter::default();
    let mut rest = q.trim();
    let mut expect_term = true;
    while !rest.is_empty() {
        if let Some(after) = rest
            .strip_prefix("AND")
            .filter(|a| a.starts_with(char::is_whitespace))
        {
            if expect_term {
                return Err("`AND` must sit between two terms".into());
            }
            rest = after.trim_start();
            expect_term = true;
            continue;
        }
        for op in ["OR", "NOT"] {
            if rest.starts_with(op) && rest[op.len()..].starts_with(char::is_whitespace) {
                return Err(format!("the emulator does not support `{op}` in queries"));
            }
        }
        let (field, after_field) = rest
            .split_once(':')
            .ok_or_else(|| format!("expected `field:value`, got {rest:?}"))?;
        if field.is_empty() || field.contains(char::is_whitespace) {
            return Err(format!("expected `field:value`, got {rest:?}"));
        }
        let (value, after_value) = take_value(after_field)?;
        apply(&mut filter, field, value)?;
        rest = after_value.trim_start();
        expect_term = false;
    }
    if expect_term && !q.trim().is_empty() {
        return Err("the query ends with `AND`".into());
    }
    Ok(filter)
}

enum Value {
    Text(String),
    Range(Range),
}

fn take_value(input: &str) -> Result<(Value, &str), String> {
    if let Some(quoted) = input.strip_prefix('"') {
        let mut text = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped)) => text.push(escaped),
                    None => break,
                },
                '"' => return Ok((Value::Text(text), &quoted[i + 1..])),
                c => text.push(c),
            }
        }
        return Err("a quoted value is missing its closing `\"`".into());
    }
    if let Some(open) = input.chars().next().filter(|c| *c == '[' || *c == '{') {
        let end = input
            .find([']', '}'])
            .ok_or_else(|| "a range is missing its closing `]` or `}`".to_owned())?;
        let close = &input[end..=end];
        let inner = &input[1..end];
        let (low, high) = inner
            .split_once(" TO ")
            .ok_or_else(|| format!("a range looks like `[a TO b]`, got {:?}", &input[..=end]))?;
        let lower = bound(low.trim(), open == '[', false)?;
        let upper = bound(high.trim(), close == "]", true)?;
        return Ok((Value::Range(Range { lower, upper }), &input[end + 1..]));
    }
    let mut text = String::new();
    let mut chars = input.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => text.push(escaped),
                None => break,
            },
            c if c.is_whitespace() => return Ok((Value::Text(text), &input[i..])),
            c => text.push(c),
        }
    }
    if text.is_empty() {
        return Err("a term has no value".into());
    }
    Ok((Value::Text(text), ""))
}

fn bound(raw: &str, inclusive: bool, upper: bool) -> Result<Bound<DateTime<Utc>>, String> {
    let raw = raw.trim_matches('"');
    if raw == "*" {
        return Ok(Bound::Unbounded);
    }
    let at = parse_time(raw, upper)?;
    Ok(if inclusive {
        Bound::Included(at)
    } else {
        Bound::Excluded(at)
    })
}

/// Dates and date-times as Auth0 accepts them. A bare date as an upper bound means the end of
/// that day, so `[2024-01-01 TO 2024-01-31]` covers all of January 31.
fn parse_time(raw: &str, upper: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(at) = NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(at.and_utc());
    }
    if let Ok(day) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        let at = if upper {
            day.and_hms_milli_opt(23, 59, 59, 999)
        } else {
            day.and_hms_opt(0, 0, 0)
        };
        if let Some(at) = at {
            return Ok(at.and_utc());
        }
    }
    Err(format!(
        "{raw:?} is not a date (2024-01-31) or an ISO 8601 date-time (2024-01-31T12:00:00.000Z)"
    ))
}

fn apply(filter: &mut Filter, field: &str, value: Value) -> Result<(), String> {
    let duplicate = || format!("the emulator accepts each field once per query; `{field}` repeats");
    match (field, value) {
        ("updated_at" | "created_at" | "last_login", Value::Range(range)) => {
            let slot = match field {
                "updated_at" => &mut filter.updated_at,
                "created_at" => &mut filter.created_at,
                _ => &mut filter.last_login,
            };
            if slot.replace(range).is_some() {
                return Err(duplicate());
            }
        }
        ("updated_at" | "created_at" | "last_login", Value::Text(_)) => {
            return Err(format!(
                "`{field}` takes a range such as `{field}:[2024-01-01 TO *]`"
            ));
        }
        ("email" | "user_id" | "name" | "nickname", Value::Text(text)) => {
            let (slot, text) = match field {
                "email" => (&mut filter.email, text.to_lowercase()),
                "user_id" => (&mut filter.user_id, text),
                "name" => (&mut filter.name, text),
                _ => (&mut filter.nickname, text),
            };
            if text.contains('*') {
                return Err("the emulator does not support wildcards".into());
            }
            if slot.replace(text).is_some() {
                return Err(duplicate());
            }
        }
        ("email" | "user_id" | "name" | "nickname", Value::Range(_)) => {
            return Err(format!("`{field}` takes a value, not a range"));
        }
        (other, _) => {
            return Err(format!(
                "searching by `{other}` is not supported by the emulator"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn inclusive_and_exclusive_ranges() {
        let f = parse_query("updated_at:[2024-01-15T10:00:00.000Z TO *]").unwrap();
        let r = f.updated_at.unwrap();
        assert_eq!(r.lower, Bound::Included(at("2024-01-15T10:00:00Z")));
        assert_eq!(r.upper, Bound::Unbounded);

        let f = parse_query("updated_at:{2024-01-15T10:00:00.123Z TO *]").unwrap();
        let r = f.updated_at.unwrap();
        assert_eq!(r.lower, Bound::Excluded(at("2024-01-15T10:00:00.123Z")));
        assert!(!r.contains(at("2024-01-15T10:00:00.123Z")));
        assert!(r.contains(at("2024-01-15T10:00:00.124Z")));
    }

    #[test]
    fn bare_dates_cover_whole_days() {
        let r = parse_query("created_at:[2024-01-01 TO 2024-01-31]")
            .unwrap()
            .created_at
            .unwrap();
        assert!(r.contains(at("2024-01-31T23:00:00Z")));
        assert!(!r.contains(at("2024-02-01T00:00:00Z")));
        assert!(!r.contains(at("2023-12-31T23:59:59Z")));
    }

    #[test]
    fn terms_combine_with_and() {
        let f = parse_query(r#"email:"Ada@Example.com" AND updated_at:[2024-01-01 TO *]"#).unwrap();
        assert_eq!(f.email.as_deref(), Some("ada@example.com"));
        assert!(f.updated_at.is_some());
        let f = parse_query(r"name:Ada\ Admin user_id:auth0|1").unwrap();
        assert_eq!(f.name.as_deref(), Some("Ada Admin"));
        assert_eq!(f.user_id.as_deref(), Some("auth0|1"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for q in [
            "updated_at:[2024-01-01 TO",
            "updated_at:[yesterday TO *]",
            "updated_at:2024",
            "email:\"open",
            "a OR b",
            "logins_count:[1 TO 2]",
            "justtext",
            "email:x AND",
            "AND email:x",
            ":x",
            "email:x email:y",
            "updated_at:[2024-01-01 2024]",
            "email:ä*",
        ] {
            assert!(parse_query(q).is_err(), "{q} should be rejected");
        }
        assert_eq!(parse_query("  ").unwrap(), Filter::default());
    }

    #[test]
    fn sort_parameter() {
        assert_eq!(
            Sort::parse("updated_at:-1").unwrap(),
            Sort {
                field: SortField::UpdatedAt,
                descending: true
            }
        );
        assert!(Sort::parse("updated_at").is_err());
        assert!(Sort::parse("updated_at:2").is_err());
        assert!(Sort::parse("password:1").is_err());
    }
}
