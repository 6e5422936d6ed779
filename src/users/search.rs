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
//!   walked in sort order from the cursor through a covering index ([`WALK_ROWS`] of them at
//!   most, never touching the table): a query that matches often fills its page within a few
//!   hundred rows. If the walk runs out before the page is full, matches are rare there, and the
//!   trigram indexes find all of them after the cursor, which are then sorted. Postgres' own
//!   choice between the two relies on how many rows it expects to match and assumes they are
//!   spread evenly in email order; both fail for search as you type ("john." is rare but all
//!   under "j", so walking from "a" reads half the table).
//! - **Totals.** A sample of about [`SAMPLE_PAGES`] table pages (`TABLESAMPLE SYSTEM`, the same
//!   pages every time, so the total does not jump while paging) estimates the matches; when the
//!   estimate is small (under [`EXACT_BELOW`]) they are counted exactly through the indexes, and
//!   a table that fits in the sample is always counted exactly. Estimates are rounded to two
//!   significant digits and flagged as such ("about 1.2 million").

use base64::Engine;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::store::{USER_COLUMNS, UserRow};

/// At most this many rows are walked in email order before the trigram indexes take over.
pub const WALK_ROWS: i64 = 5000;
/// Table pages (8 KiB each) the total's sample reads: about 10,000 rows of `users`.
pub const SAMPLE_PAGES: i64 = 800;
/// Estimated totals under this are counted exactly.
pub const EXACT_BELOW: i64 = 1000;
/// Most rows per page.
pub const MAX_PER_PAGE: u32 = 100;

/// The sort key, as the covering index `users_search_order_idx` (migration
/// `20261201004000_users_search.sql`) holds it.
const SORT_KEY: &str = "(lower(email) IS NULL), coalesce(lower(email), ''), user_id";
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
    Substring { like: String },
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
        if q.chars().count() < 3 && q.chars().any(|c| c.is_ascii_alphanumeric()) {
            let regex = format!("(^|{WORD_SEPARATORS}){}", escape_regex(q));
            return Self::WordStart { like, regex };
        }
        Self::Substring { like }
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

/// A page of the users matching `filter` and their total (read at the same time, on two
/// connections).
pub async fn search(
    db: &PgPool,
    filter: &Filter,
    position: Position,
    per_page: u32,
) -> Result<(Page, Total), sqlx::Error> {
    let per_page = per_page.clamp(1, MAX_PER_PAGE);
    tokio::try_join!(page(db, filter, position, per_page), total(db, filter))
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

async fn page(
    db: &PgPool,
    filter: &Filter,
    position: Position,
    per_page: u32,
) -> Result<Page, sqlx::Error> {
    let (cursor, number) = match position {
        Position::First => (None, 0),
        Position::Offset(0) => (None, 0),
        Position::Offset(page) => return offset_page(db, filter, page, per_page).await,
        Position::Cursor(cursor) => {
            let number = cursor.page;
            (Some(cursor), number)
        }
    };
    if *filter == Filter::Nothing {
        return Ok(Page {
            users: Vec::new(),
            number: 0,
            next: None,
            prev: None,
        });
    }
    let direction = cursor.as_ref().map_or(Direction::After, |c| c.direction);
    // One more than a page tells whether there is another beyond it.
    let wanted = i64::from(per_page) + 1;
    let mut found = walk(db, filter, cursor.as_ref(), direction, wanted).await?;
    if found.len() < wanted as usize && found.walked_all_window {
        found.rows = from_indexes(db, filter, cursor.as_ref(), direction, wanted).await?;
    }
    let mut rows = found.rows;
    let more = rows.len() > per_page as usize;
    rows.truncate(per_page as usize);
    match direction {
        Direction::After => {
            let next = more
                .then(|| rows.last().map(|r| r.cursor(Direction::After, number + 1)))
                .flatten();
            let prev = (number > 0 || cursor.is_some())
                .then(|| {
                    rows.first()
                        .map(|r| r.cursor(Direction::Before, number.saturating_sub(1)))
                })
                .flatten();
            Ok(Page {
                users: rows.into_iter().map(|f| f.row).collect(),
                number,
                next,
                prev,
            })
        }
        Direction::Before if !more => {
            // Back at the start (rows may have gone meanwhile): the first page, full.
            Box::pin(page(db, filter, Position::First, per_page)).await
        }
        Direction::Before => {
            rows.reverse();
            let next = rows.last().map(|r| r.cursor(Direction::After, number + 1));
            let prev = rows
                .first()
                .map(|r| r.cursor(Direction::Before, number.saturating_sub(1)));
            Ok(Page {
                users: rows.into_iter().map(|f| f.row).collect(),
                number: number.max(1),
                next,
                prev,
            })
        }
    }
}

struct Walked {
    rows: Vec<Found>,
    /// The walk reached its row limit: matches beyond it may exist.
    walked_all_window: bool,
}

impl Walked {
    fn len(&self) -> usize {
        self.rows.len()
    }
}

/// The keyset condition and the order for a direction.
fn keyset(cursor: Option<&Cursor>, direction: Direction) -> (&'static str, &'static str) {
    let order = match direction {
        Direction::After => "k1, k2, user_id",
        Direction::Before => "k1 DESC, k2 DESC, user_id DESC",
    };
    let condition = match (cursor, direction) {
        (None, _) => "",
        (Some(_), Direction::After) => {
            "AND (lower(email) IS NULL, coalesce(lower(email), ''), user_id) > ($3, $4, $5)"
        }
        (Some(_), Direction::Before) => {
            "AND (lower(email) IS NULL, coalesce(lower(email), ''), user_id) < ($3, $4, $5)"
        }
    };
    (condition, order)
}

/// `$1` is the `LIKE` pattern, `$2` the word-start regex; both are lowercased by Postgres.
fn conditions(filter: &Filter, email: &str, name: &str) -> String {
    match filter {
        Filter::All => "true".into(),
        Filter::Nothing => "false".into(),
        Filter::Substring { .. } => {
            format!("({email} LIKE lower($1) OR {name} LIKE lower($1))")
        }
        Filter::WordStart { .. } => format!(
            "(({email} LIKE lower($1) AND {email} ~ lower($2)) \
              OR ({name} LIKE lower($1) AND {name} ~ lower($2)))"
        ),
    }
}

fn bind_all<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, Found, sqlx::postgres::PgArguments>,
    filter: &'q Filter,
    cursor: Option<&'q Cursor>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Found, sqlx::postgres::PgArguments> {
    let (like, regex) = match filter {
        Filter::Substring { like } => (Some(like.as_str()), None),
        Filter::WordStart { like, regex } => (Some(like.as_str()), Some(regex.as_str())),
        Filter::All | Filter::Nothing => (None, None),
    };
    query
        .bind(like)
        .bind(regex)
        .bind(cursor.map(|c| c.email.is_none()))
        .bind(cursor.map(|c| c.email.clone().unwrap_or_default()))
        .bind(cursor.map(|c| c.user_id.as_str()))
}

/// Walks up to [`WALK_ROWS`] rows in sort order from the cursor through the covering index and
/// returns the first `wanted` matches.
async fn walk(
    db: &PgPool,
    filter: &Filter,
    cursor: Option<&Cursor>,
    direction: Direction,
    wanted: i64,
) -> Result<Walked, sqlx::Error> {
    let (after, order) = keyset(cursor, direction);
    let matches = conditions(filter, "w.k2", "w.k4");
    // The walk's last row comes back even when it does not match (`rn = WALK_ROWS`): it says
    // the walk stopped at its limit rather than at the end of the table.
    let sql = format!(
        "WITH walked AS MATERIALIZED (
             SELECT user_id, k1, k2, hit, rn FROM (
                 SELECT w.user_id, w.k1, w.k2, {matches} AS hit,
                        row_number() OVER (ORDER BY {order}) AS rn
                 FROM (SELECT user_id, (lower(email) IS NULL) AS k1,
                              coalesce(lower(email), '') AS k2, coalesce(lower(name), '') AS k4
                       FROM users WHERE true {after}
                       ORDER BY {order} LIMIT {WALK_ROWS}) w
             ) x
             WHERE hit OR rn = {WALK_ROWS}
             ORDER BY {order}
             LIMIT $6
         )
         SELECT {USER_COLUMNS_U}, CASE WHEN walked.k1 THEN NULL ELSE walked.k2 END AS sort_email,
                walked.hit
         FROM walked JOIN users u USING (user_id)
         ORDER BY {order}",
        USER_COLUMNS_U = qualified_columns(),
    );
    let rows: Vec<Found> = bind_all(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter, cursor)
        .bind(wanted + 1)
        .fetch_all(db)
        .await?;
    let (hits, last): (Vec<Found>, Vec<Found>) = rows.into_iter().partition(|r| r.hit);
    let walked_all_window = !last.is_empty() || hits.len() as i64 > wanted;
    let mut hits = hits;
    hits.truncate(wanted as usize);
    Ok(Walked {
        rows: hits,
        walked_all_window,
    })
}

/// All matches after (or before) the cursor, found through the trigram indexes and sorted;
/// the first `wanted` of them.
async fn from_indexes(
    db: &PgPool,
    filter: &Filter,
    cursor: Option<&Cursor>,
    direction: Direction,
    wanted: i64,
) -> Result<Vec<Found>, sqlx::Error> {
    let (after, order) = keyset(cursor, direction);
    let matches = conditions(filter, "lower(email)", "lower(name)");
    // MATERIALIZED keeps the planner from walking the sort index instead (see the module doc).
    let sql = format!(
        "WITH matched AS MATERIALIZED (
             SELECT user_id, (lower(email) IS NULL) AS k1, coalesce(lower(email), '') AS k2
             FROM users WHERE {matches} {after}
         ),
         page AS MATERIALIZED (SELECT * FROM matched ORDER BY {order} LIMIT $6)
         SELECT {USER_COLUMNS_U}, CASE WHEN page.k1 THEN NULL ELSE page.k2 END AS sort_email,
                true AS hit
         FROM page JOIN users u USING (user_id)
         ORDER BY {order}",
        USER_COLUMNS_U = qualified_columns(),
    );
    bind_all(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter, cursor)
        .bind(wanted)
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
    let matches = conditions(filter, "lower(email)", "lower(name)");
    let sql = format!(
        "SELECT {USER_COLUMNS_U}, CASE WHEN (lower(email) IS NULL) THEN NULL
                ELSE coalesce(lower(email), '') END AS sort_email, true AS hit
         FROM users u WHERE {matches}
         ORDER BY {SORT_KEY} LIMIT $6 OFFSET $7",
        USER_COLUMNS_U = qualified_columns(),
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
    let matches = conditions(filter, "lower(email)", "lower(name)");
    // The sample's share of the table, in percent: all of it when the table is small.
    let sample = format!(
        "SELECT count(*) AS matches,
                (SELECT least(100, 100.0 * {SAMPLE_PAGES}
                        / greatest(1, pg_relation_size('users') / current_setting('block_size')::bigint)))::float8
                    AS percent
         FROM users TABLESAMPLE SYSTEM ((SELECT least(100, 100.0 * {SAMPLE_PAGES}
                 / greatest(1, pg_relation_size('users') / current_setting('block_size')::bigint))))
              REPEATABLE (18)
         WHERE {matches}"
    );
    let (like, regex) = patterns(filter);
    let (sampled, percent): (i64, f64) = sqlx::query_as(sqlx::AssertSqlSafe(sample))
        .bind(like)
        .bind(regex)
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
    let count = format!("SELECT count(*) FROM users WHERE {matches}");
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
        .bind(like)
        .bind(regex)
        .fetch_one(db)
        .await?;
    Ok(Total { count, exact: true })
}

fn patterns(filter: &Filter) -> (Option<&str>, Option<&str>) {
    match filter {
        Filter::Substring { like } => (Some(like), None),
        Filter::WordStart { like, regex } => (Some(like), Some(regex)),
        Filter::All | Filter::Nothing => (None, None),
    }
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
        if i > 0 && (digits.len() - i) % 3 == 0 {
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
