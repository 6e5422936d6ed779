//! Admin search over `users`: a page of matches in email order, and how many there are.
//!
//! Built for a tenant of millions, where every keystroke in the admin page's search box is a
//! query (`examples/search_bench.rs` measures it at 1,000,000 rows):
//!
//! - **What matches.** Three or more characters: a case-insensitive substring of the email or
//!   the name. One or two characters (with a letter or digit): the start of a word of either
//!   (words are separated by spaces and punctuation), so `jo` finds "John" and "Smith, Jo" but
//!   not "Bjorn". A substring that short is in most rows and no trigram index can find it (a
//!   trigram needs three characters), while a word start is what a person typing a name means
//!   and `pg_trgm` indexes it (its trigrams pad every word with blanks: " jo").
//! - **Pages by keyset.** Rows are ordered by lowercased email (rows without one last), then
//!   `user_id`; a page starts after (or before) the sort key of a row, carried in an opaque
//!   [`Cursor`], so the ten-thousandth page costs what the first does and rows that change
//!   between two pages are neither lost nor shown twice. (`page=N` still works: an `OFFSET`,
//!   as slow as it always was on deep pages.)
//! - **Two ways to find a page, chosen by what is found, not by a guess.** First the rows are
//!   walked in sort order from the cursor through the covering index of `user_search` (a narrow
//!   copy of every user's lowercased email and name, kept by triggers; [`WALK_ROWS`] rows at
//!   most, read from the index alone): a query that matches often fills its page within a few
//!   hundred rows. If the walk runs out before the page is full, matches are rare there, and the
//!   trigram indexes find all of them (counting them on the way), which are then sorted.
//!   Postgres' own choice between the two relies on how many rows it expects to match and
//!   assumes they are spread evenly in email order; both fail for search as you type ("john."
//!   is rare but all under "j", so walking from "a" reads half the table).
//! - **Totals.** Exact when the trigram indexes found the page. Otherwise a sample of about
//!   [`SAMPLE_PAGES`] pages of `user_search` (`TABLESAMPLE SYSTEM`, the same pages every time, so the total
//!   does not jump while paging) estimates the matches; when the estimate is small (under
//!   [`EXACT_BELOW`]) they are counted exactly through the indexes, and a table that fits in the
//!   sample is always counted exactly. Estimates are rounded to two significant digits and
//!   flagged as such ("about 1.2 million").
//!
//! What it cannot do fast: a one- or two-character search in a database whose locale is `C`
//! (the development cluster's) for a letter beyond ASCII, which `pg_trgm` then treats as a word
//! separator; and a text with no letter or digit at all (`@`, `'`), which no trigram holds.
//! Both are answered correctly by walking, however long that takes.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::store::{USER_COLUMNS, UserRow};

/// At most this many rows are walked in email order before the trigram indexes take over.
pub const WALK_ROWS: i64 = 20_000;
/// Pages (8 KiB each) of `user_search` the total's sample reads: about 30,000 rows. Pages, not
/// rows, are sampled, and rows written together share pages, so the sample is larger than a
/// row sample would need to be.
pub const SAMPLE_PAGES: i64 = 300;
/// Estimated totals under this are counted exactly.
pub const EXACT_BELOW: i64 = 1000;
/// Most rows per page.
pub const MAX_PER_PAGE: u32 = 100;

/// ASCII spaces and punctuation: what separates the words of an email or a name, as a regular
/// expression bracket. `pg_trgm` takes a bracket of such characters for a word boundary and so
/// indexes `(^|[...])jo` by its trigram " jo"; `[^[:alnum:]]` would be too large a set for it.
const WORD_SEPARATORS: &str = r##"[][ !"#$%&'()*+,./:;<=>?@\\^_`{|}~-]"##;

/// What the admin typed, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every user.
    All,
    /// A substring of the email or name (`LIKE` pattern, escaped, not yet lowercased).
    /// `email_index` is what the email's trigram index is asked for: the pattern up to the `@`
    /// when the text has one after a few characters (a whole email is its local part's
    /// business; the domain's trigrams, `com`, `mai`, ..., are in most rows and reading them
    /// costs more than everything else), else the pattern itself.
    Substring { like: String, email_index: String },
    /// A word of the email or name starts with the text (1-2 characters).
    WordStart { like: String, regex: String },
    /// Nothing can match: the text holds a NUL, which Postgres text cannot store.
    Nothing,
}

impl Filter {
    /// Trims `q`; empty means everyone.
    pub fn parse(q: Option<&str>) -> Self {
        let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) else {
            return Self::All;
        };
        if q.contains('\0') {
            return Self::Nothing;
        }
        let like = format!("%{}%", escape_like(q));
        if q.chars().count() < 3 && q.chars().any(char::is_alphanumeric) {
            let regex = format!("(^|{WORD_SEPARATORS}){}", escape_regex(q));
            return Self::WordStart { like, regex };
        }
        let email_index = match q.split_once('@') {
            Some((local, _)) if local.chars().count() >= 3 => format!("%{}@%", escape_like(local)),
            _ => like.clone(),
        };
        Self::Substring { like, email_index }
    }

    /// Whether the trigram indexes can find matches: a trigram is made of letters and digits.
    fn indexable(&self) -> bool {
        match self {
            Self::Substring { like, .. } => like.chars().any(char::is_alphanumeric),
            Self::WordStart { .. } => true,
            Self::All | Self::Nothing => false,
        }
    }

    /// The values of `$1` (`LIKE` pattern) and `$2` (word-start regex, or the email index's
    /// pattern) in the statements below.
    fn params(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Self::Substring { like, email_index } => (Some(like), Some(email_index)),
            Self::WordStart { like, regex } => (Some(like), Some(regex)),
            Self::All | Self::Nothing => (None, None),
        }
    }
}

/// Which way a page runs from its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "a")]
    After,
    #[serde(rename = "b")]
    Before,
}

/// Where a page starts: the rows after (or before) one row's sort key. Opaque to clients: they
/// get it as `next_cursor` / `prev_cursor` and send it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "d")]
    direction: Direction,
    /// The number of the page this cursor leads to (0 is the first): counted, for display.
    #[serde(rename = "p")]
    page: u32,
    /// The row's lowercased email (`None`: it has none).
    #[serde(rename = "e")]
    email: Option<String>,
    #[serde(rename = "i")]
    user_id: String,
}

/// A cursor that does not decode: not one this server handed out.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the cursor is not valid: send back a next_cursor or prev_cursor exactly as received")]
pub struct BadCursor;

impl Cursor {
    /// URL-safe base64 of a small JSON object.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(raw: &str) -> Result<Self, BadCursor> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw.trim())
            .map_err(|_| BadCursor)?;
        let cursor: Self = serde_json::from_slice(&json).map_err(|_| BadCursor)?;
        // Postgres text cannot hold NUL; such a key was never handed out.
        let nul = cursor.user_id.contains('\0')
            || cursor.email.as_deref().is_some_and(|e| e.contains('\0'));
        if nul { Err(BadCursor) } else { Ok(cursor) }
    }

    pub fn page(&self) -> u32 {
        self.page
    }
}

/// Which page to read.
#[derive(Debug, Clone)]
pub enum Position {
    First,
    Cursor(Cursor),
    /// The old `page=N` (an `OFFSET`): kept for existing clients.
    Offset(u32),
}

/// A page of users and the cursors around it.
#[derive(Debug, Clone)]
pub struct Page {
    pub users: Vec<UserRow>,
    /// The number of this page (0 is the first), counted along the cursors.
    pub number: u32,
    pub next: Option<Cursor>,
    pub prev: Option<Cursor>,
}

/// How many users match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    /// Exact, or an estimate rounded to two significant digits.
    pub count: i64,
    pub exact: bool,
}

/// A page of the users matching `filter`, and their total.
pub async fn search(
    db: &PgPool,
    filter: &Filter,
    position: Position,
    per_page: u32,
) -> Result<(Page, Total), sqlx::Error> {
    let per_page = per_page.clamp(1, MAX_PER_PAGE);
    let (page, counted) = page(db, filter, position, per_page).await?;
    // A page found through the trigram indexes gathered every match: their count is the total.
    let total = match counted {
        Some(count) => Total { count, exact: true },
        None => total(db, filter).await?,
    };
    Ok((page, total))
}

/// A row found, with its sort key as Postgres computed it (its `lower()` is the one that
/// orders the index, which Rust's lowercasing is not).
#[derive(Debug, sqlx::FromRow)]
struct Found {
    #[sqlx(flatten)]
    row: UserRow,
    sort_email: Option<String>,
    /// Whether the row matches (the walk also returns the last row it looked at).
    hit: bool,
    /// The walk's last row: it stopped at its limit, not at the end of the table.
    at_limit: bool,
    /// Every match, when they were all gathered (through the trigram indexes).
    matched: Option<i64>,
}

impl Found {
    fn cursor(&self, direction: Direction, page: u32) -> Cursor {
        Cursor {
            direction,
            page,
            email: self.sort_email.clone(),
            user_id: self.row.user_id.clone(),
        }
    }
}

/// The page, and the number of matches when finding it counted them.
async fn page(
    db: &PgPool,
    filter: &Filter,
    position: Position,
    per_page: u32,
) -> Result<(Page, Option<i64>), sqlx::Error> {
    let (cursor, number) = match position {
        Position::First | Position::Offset(0) => (None, 0),
        Position::Offset(page) => {
            return Ok((offset_page(db, filter, page, per_page).await?, None));
        }
        Position::Cursor(cursor) => {
            let number = cursor.page;
            (Some(cursor), number)
        }
    };
    if *filter == Filter::Nothing {
        let empty = Page {
            users: Vec::new(),
            number: 0,
            next: None,
            prev: None,
        };
        return Ok((empty, Some(0)));
    }
    let direction = cursor.as_ref().map_or(Direction::After, |c| c.direction);
    // One more than a page tells whether there is another beyond it.
    let wanted = per_page as usize + 1;
    // What no index can find is walked for as long as it takes.
    let walk_rows = if filter.indexable() {
        WALK_ROWS
    } else {
        i64::MAX
    };
    let walked = walk(db, filter, cursor.as_ref(), direction, wanted, walk_rows).await?;
    let stopped_at_limit = walked.iter().any(|r| r.at_limit);
    let mut rows: Vec<Found> = walked.into_iter().filter(|r| r.hit).collect();
    if rows.len() < wanted && stopped_at_limit {
        rows = from_indexes(db, filter, cursor.as_ref(), direction, wanted).await?;
    }
    rows.truncate(wanted);
    let counted = rows.first().and_then(|r| r.matched);
    let more = rows.len() > per_page as usize;
    rows.truncate(per_page as usize);
    let page = match direction {
        Direction::After => {
            let next = more
                .then(|| rows.last().map(|r| r.cursor(Direction::After, number + 1)))
                .flatten();
            let prev = cursor
                .is_some()
                .then(|| {
                    rows.first()
                        .map(|r| r.cursor(Direction::Before, number.saturating_sub(1)))
                })
                .flatten();
            Page {
                users: rows.into_iter().map(|f| f.row).collect(),
                number,
                next,
                prev,
            }
        }
        // Back at the start (rows may have gone meanwhile): the first page, full.
        Direction::Before if !more => {
            return Box::pin(page(db, filter, Position::First, per_page)).await;
        }
        Direction::Before => {
            rows.reverse();
            let next = rows.last().map(|r| r.cursor(Direction::After, number + 1));
            let prev = rows
                .first()
                .map(|r| r.cursor(Direction::Before, number.saturating_sub(1)));
            Page {
                users: rows.into_iter().map(|f| f.row).collect(),
                // There are rows before these, whatever the cursor counted.
                number: number.max(1),
                next,
                prev,
            }
        }
    };
    Ok((page, counted))
}

/// The sort key of `user_search` (the columns of `user_search_order_idx`, migration
/// `20261201004003`) on columns named `{prefix}no_email` and so on, in a direction.
fn order_by(prefix: &str, direction: Direction) -> String {
    let way = match direction {
        Direction::After => "",
        Direction::Before => " DESC",
    };
    format!("{prefix}no_email{way}, {prefix}email{way}, {prefix}user_id{way}")
}

/// The keyset condition on `user_search s` for a cursor.
fn keyset(cursor: Option<&Cursor>, direction: Direction) -> &'static str {
    match (cursor, direction) {
        (None, _) => "",
        (Some(_), Direction::After) => "AND (s.no_email, s.email, s.user_id) > ($3, $4, $5)",
        (Some(_), Direction::Before) => "AND (s.no_email, s.email, s.user_id) < ($3, $4, $5)",
    }
}

/// The match on the walk's index columns (and the total's sample) (see [`Filter::params`] for `$1` and `$2`; Postgres
/// lowercases them, as it does the columns).
fn walk_conditions(filter: &Filter) -> &'static str {
    match filter {
        Filter::All => "true",
        Filter::Nothing => "false",
        Filter::Substring { .. } => "(w.email LIKE lower($1) OR w.name LIKE lower($1))",
        // The substring test first: it is cheaper than the expression, and rarely passes.
        Filter::WordStart { .. } => {
            "((w.email LIKE lower($1) AND w.email ~ lower($2)) \
              OR (w.name LIKE lower($1) AND w.name ~ lower($2)))"
        }
    }
}

/// The match on the table's columns, in the form the trigram indexes serve.
fn index_conditions(filter: &Filter) -> &'static str {
    match filter {
        Filter::All => "true",
        Filter::Nothing => "false",
        // `|| ''` keeps the whole pattern out of the index condition: it only rechecks.
        Filter::Substring { .. } => {
            "((s.email LIKE lower($2) AND (s.email || '') LIKE lower($1)) \
              OR s.name LIKE lower($1))"
        }
        Filter::WordStart { .. } => "(s.email ~ lower($2) OR s.name ~ lower($2))",
    }
}

fn bind_all<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, Found, sqlx::postgres::PgArguments>,
    filter: &'q Filter,
    cursor: Option<&'q Cursor>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Found, sqlx::postgres::PgArguments> {
    let (like, second) = filter.params();
    query
        .bind(like)
        .bind(second)
        .bind(cursor.map(|c| c.email.is_none()))
        .bind(cursor.map(|c| c.email.clone().unwrap_or_default()))
        .bind(cursor.map(|c| c.user_id.as_str()))
}

/// Walks up to `walk_rows` rows in sort order from the cursor through the covering index and
/// returns the first `wanted` matches, or fewer and the row at the walk's limit (not a match)
/// when the walk stopped there.
async fn walk(
    db: &PgPool,
    filter: &Filter,
    cursor: Option<&Cursor>,
    direction: Direction,
    wanted: usize,
    walk_rows: i64,
) -> Result<Vec<Found>, sqlx::Error> {
    let after = keyset(cursor, direction);
    let order = order_by("", direction);
    let matches = walk_conditions(filter);
    // The walk stops as soon as the page is found (rows stream from the index). Only when it
    // is not found does the second branch run: the row at the walk's limit, which tells
    // whether the walk stopped there or at the end of the table.
    let sql = format!(
        "WITH walked AS MATERIALIZED (
             (SELECT user_id, no_email, email, true AS hit
              FROM (SELECT s.user_id, s.no_email, s.email, s.name FROM user_search s
                    WHERE true {after} ORDER BY {SORT_KEY_DIR} LIMIT {walk_rows}) w
              WHERE {matches} ORDER BY {order} LIMIT $6)
             UNION ALL
             (SELECT s.user_id, s.no_email, s.email, false FROM user_search s WHERE true {after}
              ORDER BY {SORT_KEY_DIR} OFFSET {walk_rows} - 1 LIMIT 1)
             LIMIT $6
         )
         {rows}",
        SORT_KEY_DIR = order_by("s.", direction),
        rows = found_rows(
            "walked",
            "walked.hit, NOT walked.hit",
            "NULL::bigint",
            direction
        ),
    );
    bind_all(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter, cursor)
        .bind(wanted as i64)
        .fetch_all(db)
        .await
}

/// The `users` rows of the ids in `from` (with `no_email` and `email`), as [`Found`]s in
/// `direction`; `hit_and_at_limit` and `matched` give those columns.
fn found_rows(from: &str, hit_and_at_limit: &str, matched: &str, direction: Direction) -> String {
    format!(
        "SELECT {columns}, CASE WHEN {from}.no_email THEN NULL ELSE {from}.email END AS sort_email,
                {hit_and_at_limit} AS at_limit, {matched} AS matched
         FROM {from} JOIN users u USING (user_id)
         ORDER BY {ordered}",
        columns = qualified_columns(),
        ordered = order_by(&format!("{from}."), direction),
    )
}

/// All matches after (or before) the cursor, found through the trigram indexes and sorted;
/// the first `wanted` of them.
async fn from_indexes(
    db: &PgPool,
    filter: &Filter,
    cursor: Option<&Cursor>,
    direction: Direction,
    wanted: usize,
) -> Result<Vec<Found>, sqlx::Error> {
    let after = keyset(cursor, direction);
    let matches = index_conditions(filter);
    // Every match, then the keyset: given the cursor's range as well, Postgres prefers to walk
    // that range through the order index (it expects matches to be spread evenly), which is
    // the walk that just failed. MATERIALIZED keeps the two steps apart.
    let sql = format!(
        "WITH matched AS MATERIALIZED (
             SELECT s.user_id, s.no_email, s.email FROM user_search s WHERE {matches}
         ),
         page AS MATERIALIZED (
             SELECT s.user_id, s.no_email, s.email FROM matched s WHERE true {after}
             ORDER BY {SORT_KEY_DIR} LIMIT $6
         )
         {rows}",
        SORT_KEY_DIR = order_by("s.", direction),
        rows = found_rows(
            "page",
            "true AS hit, false",
            "(SELECT count(*) FROM matched)",
            direction
        ),
    );
    bind_all(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter, cursor)
        .bind(wanted as i64)
        .fetch_all(db)
        .await
}

/// The old `page=N`: `OFFSET`, with cursors from there on.
async fn offset_page(
    db: &PgPool,
    filter: &Filter,
    number: u32,
    per_page: u32,
) -> Result<Page, sqlx::Error> {
    let matches = index_conditions(filter);
    let sql = format!(
        "SELECT {USER_COLUMNS_U}, CASE WHEN s.no_email THEN NULL ELSE s.email END AS sort_email,
                true AS hit, false AS at_limit, NULL::bigint AS matched
         FROM user_search s JOIN users u USING (user_id) WHERE {matches}
         ORDER BY {SORT_KEY} LIMIT $6 OFFSET $7",
        USER_COLUMNS_U = qualified_columns(),
        SORT_KEY = order_by("s.", Direction::After),
    );
    let mut rows: Vec<Found> = bind_all(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter, None)
        .bind(i64::from(per_page) + 1)
        .bind(i64::from(number) * i64::from(per_page))
        .fetch_all(db)
        .await?;
    let more = rows.len() > per_page as usize;
    rows.truncate(per_page as usize);
    Ok(Page {
        next: more
            .then(|| rows.last().map(|r| r.cursor(Direction::After, number + 1)))
            .flatten(),
        prev: rows
            .first()
            .map(|r| r.cursor(Direction::Before, number.saturating_sub(1))),
        users: rows.into_iter().map(|f| f.row).collect(),
        number,
    })
}

fn qualified_columns() -> String {
    USER_COLUMNS
        .split(',')
        .map(|column| format!("u.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many users match `filter`: see the module doc.
async fn total(db: &PgPool, filter: &Filter) -> Result<Total, sqlx::Error> {
    if *filter == Filter::Nothing {
        return Ok(Total {
            count: 0,
            exact: true,
        });
    }
    // The sample's share of the table, in percent: all of it when the table is small. Its rows
    // are tested as the walk tests them (no index helps here).
    let share = format!(
        "(SELECT least(100, 100.0 * {SAMPLE_PAGES} / greatest(1,
             pg_relation_size('user_search') / current_setting('block_size')::bigint)))"
    );
    let sample = format!(
        "SELECT count(*) AS matches, {share}::float8 AS percent
         FROM user_search w TABLESAMPLE SYSTEM ({share}) REPEATABLE (18)
         WHERE {matches}",
        matches = walk_conditions(filter),
    );
    let (like, second) = filter.params();
    let (sampled, percent): (i64, f64) = sqlx::query_as(sqlx::AssertSqlSafe(sample))
        .bind(like)
        .bind(second)
        .fetch_one(db)
        .await?;
    if percent >= 100.0 {
        return Ok(Total {
            count: sampled,
            exact: true,
        });
    }
    let estimate = (sampled as f64 * 100.0 / percent).round() as i64;
    if estimate >= EXACT_BELOW {
        return Ok(Total {
            count: two_significant_digits(estimate),
            exact: false,
        });
    }
    let count = format!(
        "SELECT count(*) FROM user_search s WHERE {matches}",
        matches = index_conditions(filter)
    );
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
        .bind(like)
        .bind(second)
        .fetch_one(db)
        .await?;
    Ok(Total { count, exact: true })
}

/// 1,234,567 -> 1,200,000; 48,213 -> 48,000.
fn two_significant_digits(n: i64) -> i64 {
    let mut scale = 1;
    while n / scale >= 100 {
        scale *= 10;
    }
    (n + scale / 2) / scale * scale
}

/// `%`, `_` and `\` typed by an admin are literal characters, not patterns.
fn escape_like(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// ASCII punctuation is literal in the regular expression (a backslash before a letter or
/// digit would start an escape, and other characters mean nothing special).
fn escape_regex(q: &str) -> String {
    let mut out = String::with_capacity(q.len() * 2);
    for c in q.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// "about 1.2 million", "about 48,000", "1,234".
pub fn describe(total: Total) -> String {
    let n = total.count;
    let text = if n >= 1_000_000 {
        let millions = n as f64 / 1_000_000.0;
        if millions >= 10.0 {
            format!("{millions:.0} million")
        } else {
            format!("{millions:.1} million")
        }
    } else {
        with_thousands(n)
    };
    if total.exact {
        text
    } else {
        format!("about {text}")
    }
}

/// 48000 -> "48,000".
pub fn with_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(escape_like(r"50%_a\b"), r"50\%\_a\\b");
    }

    #[test]
    fn short_text_with_a_letter_matches_word_starts_and_longer_text_substrings() {
        assert!(matches!(
            Filter::parse(Some(" jo ")),
            Filter::WordStart { .. }
        ));
        assert!(matches!(
            Filter::parse(Some("jö")),
            Filter::WordStart { .. }
        ));
        assert!(matches!(
            Filter::parse(Some("joh")),
            Filter::Substring { .. }
        ));
        // Nothing to start a word with: a substring, as typed.
        assert!(matches!(Filter::parse(Some("@")), Filter::Substring { .. }));
        assert_eq!(Filter::parse(Some("   ")), Filter::All);
        assert_eq!(Filter::parse(None), Filter::All);
        assert_eq!(Filter::parse(Some("a\0b")), Filter::Nothing);
        let Filter::WordStart { regex, .. } = Filter::parse(Some(".j")) else {
            panic!("a word start");
        };
        assert!(regex.ends_with(r"\.j"), "{regex}");
    }

    #[test]
    fn estimates_keep_two_significant_digits_and_read_as_estimates() {
        assert_eq!(two_significant_digits(1_234_567), 1_200_000);
        assert_eq!(two_significant_digits(48_213), 48_000);
        assert_eq!(two_significant_digits(1_250), 1_300);
        assert_eq!(two_significant_digits(99), 99);
        let about = |count| Total {
            count,
            exact: false,
        };
        assert_eq!(describe(about(1_200_000)), "about 1.2 million");
        assert_eq!(describe(about(48_000)), "about 48,000");
        assert_eq!(describe(about(12_000_000)), "about 12 million");
        assert_eq!(
            describe(Total {
                count: 1234,
                exact: true
            }),
            "1,234"
        );
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let cursor = Cursor {
            direction: Direction::After,
            page: 3,
            email: Some("zoë@example.com".into()),
            user_id: "auth0|1".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in ["", "not base64!", "e30", "bnVsbA"] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
    }
}
