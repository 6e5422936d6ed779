//! Admin search at scale (issue 18): keyset pages (ties on the sort key, users without an email,
//! rows changing between pages, both directions, the trigram path past the walk's limit), the
//! estimated and exact totals, and what matches, all against a real Postgres.

use std::collections::{HashMap, HashSet};

use quotebook::users::search::{EXACT_BELOW, WALK_ROWS};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, client, spawn_app_with};

const TOKEN: &str = "test-admin-token-search-0123456789";

async fn admin_app() -> TestApp {
    spawn_app_with(&[("ADMIN_API_TOKEN", TOKEN)]).await
}

/// `GET /api/admin/users` with the admin token; the JSON body (asserting a 200).
async fn users(app: &TestApp, query: &[(&str, &str)]) -> Value {
    let response = client()
        .get(app.url("/api/admin/users"))
        .query(query)
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{query:?}");
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn insert(app: &TestApp, rows: &[(String, Option<String>, Option<String>)]) {
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let emails: Vec<Option<&str>> = rows.iter().map(|r| r.1.as_deref()).collect();
    let names: Vec<Option<&str>> = rows.iter().map(|r| r.2.as_deref()).collect();
    sqlx::query(
        "INSERT INTO users (user_id, email, name)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
    )
    .bind(&ids)
    .bind(&emails)
    .bind(&names)
    .execute(&app.db)
    .await
    .unwrap();
}

/// `count` users `filler{n}@example.com`, named "Filler {n}" but for two groups spread through
/// them: "Group Small" (n ending in 77) and "Group Large" (other n ending in 7, or in 3).
async fn fill(app: &TestApp, count: i64) {
    sqlx::query(
        "INSERT INTO users (user_id, email, name)
         SELECT 'auth0|filler' || n, 'filler' || n || '@example.com',
                CASE WHEN n % 100 = 77 THEN 'Group Small'
                     WHEN n % 10 IN (3, 7) THEN 'Group Large'
                     ELSE 'Filler ' || n END
         FROM generate_series(1, $1) AS n",
    )
    .bind(count)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE users").execute(&app.db).await.unwrap();
}

/// Every user id matching `q` in the order the admin list promises: lowercased email, users
/// without one last, then user id.
async fn expected(app: &TestApp, like: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT user_id FROM users
         WHERE $1 = '' OR lower(email) LIKE $1 OR lower(name) LIKE $1
         ORDER BY lower(email) NULLS LAST, user_id",
    )
    .bind(like)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// Follows `next_cursor` from the first page to the last; every page, in order.
async fn pages_forward(app: &TestApp, q: &str, per_page: &str) -> Vec<Value> {
    let mut pages = vec![users(app, &[("q", q), ("per_page", per_page)]).await];
    while let Some(next) = pages.last().unwrap()["next_cursor"]
        .as_str()
        .map(str::to_owned)
    {
        assert!(pages.len() < 1000, "the cursors never end");
        pages.push(users(app, &[("q", q), ("per_page", per_page), ("cursor", &next)]).await);
    }
    pages
}

#[tokio::test]
async fn keyset_pages_cover_every_user_once_in_order_both_ways() {
    let app = admin_app().await;
    let mut rows = Vec::new();
    // Ties on the sort key: one email (in two spellings) for many accounts, as Auth0 allows
    // across connections.
    for n in 0..23 {
        let email = if n % 2 == 0 {
            "Same@Example.com"
        } else {
            "same@example.com"
        };
        rows.push((format!("google-oauth2|tie{n:02}"), Some(email.into()), None));
    }
    // No email (phone and some social connections).
    for n in 0..17 {
        rows.push((format!("sms|{n:02}"), None, Some(format!("Phone {n}"))));
    }
    for n in 0..60 {
        rows.push((
            format!("auth0|p{n:02}"),
            Some(format!("person{:02}@example.org", (n * 37) % 60)),
            Some(format!("Person {n}")),
        ));
    }
    insert(&app, &rows).await;
    let all = expected(&app, "").await;
    assert_eq!(all.len(), 100);

    let pages = pages_forward(&app, "", "7").await;
    assert_eq!(pages.len(), 15);
    let forward: Vec<String> = pages.iter().flat_map(ids).collect();
    assert_eq!(
        forward, all,
        "every user once, in order, ties and no-email users included"
    );
    for (n, page) in pages.iter().enumerate() {
        assert_eq!(page["page"], n);
        assert_eq!(page["total"], 100);
        assert_eq!(page["total_exact"], true);
        assert_eq!(page["prev_cursor"].is_string(), n > 0, "page {n}");
    }

    // Back from the last page: the same pages, the same rows.
    let mut page = pages.last().unwrap().clone();
    let mut backward = vec![ids(&page)];
    while let Some(prev) = page["prev_cursor"].as_str().map(str::to_owned) {
        page = users(&app, &[("per_page", "7"), ("cursor", &prev)]).await;
        backward.push(ids(&page));
    }
    backward.reverse();
    let expected_pages: Vec<Vec<String>> = pages.iter().map(ids).collect();
    assert_eq!(backward, expected_pages);
    assert_eq!(page["page"], 0);

    // The old page numbers still work, and hand over to cursors.
    let third = users(&app, &[("page", "2"), ("per_page", "7")]).await;
    assert_eq!(ids(&third), ids(&pages[2]));
    let fourth = users(
        &app,
        &[
            ("per_page", "7"),
            ("cursor", third["next_cursor"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(ids(&fourth), ids(&pages[3]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rare_matches_past_the_walk_come_from_the_indexes_and_survive_changes_between_pages() {
    let app = admin_app().await;
    // More rows than one walk reads, all sorting before the needles.
    fill(&app, WALK_ROWS + 5000).await;
    let mut rows = Vec::new();
    for n in 0..37 {
        // Five share an email; three have none (they sort last).
        let email = match n {
            0..5 => Some("zz-needle-shared@example.com".to_owned()),
            5..8 => None,
            _ => Some(format!("zz-needle{:02}@example.com", (n * 7) % 37)),
        };
        rows.push((
            format!("auth0|needle{n:02}"),
            email,
            Some(format!("Needle {n}")),
        ));
    }
    insert(&app, &rows).await;
    let needles = expected(&app, "%needle%").await;

    let first = users(&app, &[("q", "NEEDLE"), ("per_page", "10")]).await;
    assert_eq!(ids(&first), needles[..10]);
    // Found through the trigram indexes, which count every match on the way.
    assert_eq!(first["total"], 37);
    assert_eq!(first["total_exact"], true);

    // Between two pages: a needle appears before the cursor, one on a later page is deleted,
    // one moves from a later page to before the cursor.
    insert(
        &app,
        &[(
            "auth0|needle-new".into(),
            Some("zz-needle-aaa@example.com".into()),
            Some("Needle new".into()),
        )],
    )
    .await;
    let deleted = needles[15].clone();
    let moved = needles[20].clone();
    sqlx::query("DELETE FROM users WHERE user_id = $1")
        .bind(&deleted)
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET email = 'zz-needle-aab@example.com' WHERE user_id = $1")
        .bind(&moved)
        .execute(&app.db)
        .await
        .unwrap();

    let mut seen: Vec<String> = ids(&first);
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let page = users(
            &app,
            &[("q", "needle"), ("per_page", "10"), ("cursor", &next)],
        )
        .await;
        seen.extend(ids(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no user twice: {seen:?}");
    for id in &needles {
        if *id != deleted && *id != moved {
            assert!(seen.contains(id), "{id} was lost");
        }
    }
    assert!(!seen.contains(&deleted));
    assert!(!seen.contains(&"auth0|needle-new".to_owned()));

    // The same needles, a page at a time, from the last page back to the first.
    let last_page = users(&app, &[("q", "needle"), ("per_page", "10"), ("page", "3")]).await;
    let mut page = last_page;
    let mut backward = ids(&page);
    while let Some(prev) = page["prev_cursor"].as_str().map(str::to_owned) {
        page = users(
            &app,
            &[("q", "needle"), ("per_page", "10"), ("cursor", &prev)],
        )
        .await;
        backward.splice(0..0, ids(&page));
    }
    assert_eq!(backward, expected(&app, "%needle%").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_totals_are_estimated_and_small_ones_counted() {
    let app = admin_app().await;
    // More than the sample reads; one group small enough to be counted exactly, one not.
    fill(&app, 60_000).await;
    let actual: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();

    let everyone = users(&app, &[]).await;
    assert_eq!(everyone["total_exact"], false, "{everyone}");
    let estimate = everyone["total"].as_i64().unwrap();
    let error = (estimate - actual).abs() as f64 / actual as f64;
    assert!(error < 0.15, "estimated {estimate} for {actual}");
    assert_eq!(estimate % 1000, 0, "two significant digits: {estimate}");

    let small = users(&app, &[("q", "group small")]).await;
    const { assert!(600 < EXACT_BELOW) };
    assert_eq!(small["total"], 600, "{small}");
    assert_eq!(small["total_exact"], true);
    let large = users(&app, &[("q", "GROUP LARGE")]).await;
    assert_eq!(large["total_exact"], false, "{large}");
    let estimate = large["total"].as_i64().unwrap();
    assert!(
        (10_000..=12_800).contains(&estimate),
        "estimated {estimate} for 11,400"
    );
    let tiny = users(&app, &[("q", "filler1234")]).await;
    assert_eq!(tiny["total"], 11, "filler1234 and filler12340-12349");
    assert_eq!(tiny["total_exact"], true);

    // The admin page says which it is.
    let admin = app.signed_in_client("admin@example.com").await;
    let html = admin
        .get(app.url("/admin/users"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("about 2") && html.contains(",000 users"),
        "an estimate: {html}"
    );
    assert!(html.contains("Page 1 of about "), "{html}");
}

#[tokio::test]
async fn short_text_finds_word_starts_and_longer_text_substrings() {
    let app = admin_app().await;
    let people = [
        ("auth0|john", "john.smith@example.com", "John Smith"),
        ("auth0|bjorn", "bjorn@example.com", "Björn Borg"),
        ("auth0|jo", "x@jo-consulting.com", "Ann Lee"),
        ("auth0|obrien", "obrien@example.com", "Ryan O'Brien"),
        ("auth0|pct", "sale@example.com", "50% off"),
        ("auth0|digits", "5000@example.com", "Five Thousand"),
    ];
    let rows: Vec<_> = people
        .iter()
        .map(|(id, email, name)| {
            (
                (*id).to_owned(),
                Some((*email).to_owned()),
                Some((*name).to_owned()),
            )
        })
        .collect();
    insert(&app, &rows).await;
    let found = |page: Value| -> HashSet<String> { ids(&page).into_iter().collect() };
    let set = |ids: &[&str]| -> HashSet<String> { ids.iter().map(|s| (*s).to_owned()).collect() };

    // One or two characters: the start of a word of the email or name.
    assert_eq!(
        found(users(&app, &[("q", "JO")]).await),
        set(&["auth0|john", "auth0|jo"])
    );
    assert_eq!(
        found(users(&app, &[("q", "b")]).await),
        set(&["auth0|bjorn", "auth0|obrien"])
    );
    assert_eq!(
        found(users(&app, &[("q", "sm")]).await),
        set(&["auth0|john"])
    );
    // Three or more: anywhere.
    assert_eq!(
        found(users(&app, &[("q", "jor")]).await),
        set(&["auth0|bjorn"])
    );
    assert_eq!(
        found(users(&app, &[("q", "o'br")]).await),
        set(&["auth0|obrien"])
    );
    assert_eq!(
        found(users(&app, &[("q", "john.smith@example.com")]).await),
        set(&["auth0|john"])
    );
    // Pattern characters are literal.
    assert_eq!(
        found(users(&app, &[("q", "50%")]).await),
        set(&["auth0|pct"])
    );
    assert_eq!(found(users(&app, &[("q", "%")]).await), set(&["auth0|pct"]));
    // No letter or digit: a substring, as typed.
    assert_eq!(
        found(users(&app, &[("q", "'")]).await),
        set(&["auth0|obrien"])
    );
    // Postgres text cannot hold NUL: nobody, not an error.
    let nul = users(&app, &[("q", "a\0b")]).await;
    assert_eq!(nul["total"], 0);
}

#[tokio::test]
async fn cursors_are_checked_and_the_document_describes_them() {
    let app = admin_app().await;
    let bearer = |path: &str| {
        client()
            .get(app.url(path))
            .header("Authorization", format!("Bearer {TOKEN}"))
    };
    // A cursor this API never handed out names no page.
    for path in [
        "/api/admin/users?cursor=not-a-cursor",
        "/api/admin/users?cursor=eyJkIjoiYSJ9",
        "/api/admin/users?cursor=",
        "/api/admin/users?page=1&cursor=eyJkIjoiYSJ9",
    ] {
        let response = bearer(path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("cursor"),
            "{problem}"
        );
    }
    // With a cursor, `page` is ignored.
    insert(
        &app,
        &[
            ("auth0|one".into(), Some("one@example.com".into()), None),
            ("auth0|two".into(), Some("two@example.com".into()), None),
        ],
    )
    .await;
    let first = users(&app, &[("per_page", "1")]).await;
    let next = first["next_cursor"].as_str().unwrap();
    let second = users(&app, &[("per_page", "1"), ("page", "7"), ("cursor", next)]).await;
    assert_eq!(ids(&second), ["auth0|two"]);
    let admin = app.signed_in_client("admin@example.com").await;
    let page = admin
        .get(app.url("/admin/users?cursor=garbage"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.unwrap().contains("not valid any more"));

    let spec: Value = client()
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parameters: HashMap<String, Value> = spec["paths"]["/users"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
        .collect();
    assert!(parameters.contains_key("cursor"));
    assert_eq!(parameters["page"]["deprecated"], true);
    let page_schema = &spec["components"]["schemas"]["UsersPage"]["properties"];
    for field in ["next_cursor", "prev_cursor", "total_exact", "total", "page"] {
        assert!(page_schema[field].is_object(), "UsersPage.{field}");
    }
}

#[tokio::test]
async fn the_search_copy_follows_every_write_and_skips_unchanged_rows() {
    let app = admin_app().await;
    let upsert = |id: &'static str, email: Option<&'static str>, name: &'static str| {
        sqlx::query(
            "INSERT INTO users (user_id, email, name) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE
                 SET email = EXCLUDED.email, name = EXCLUDED.name, synced_at = now()",
        )
        .bind(id)
        .bind(email)
        .bind(name)
    };
    let copy = |id: &'static str| {
        sqlx::query_as::<_, (bool, String, Option<String>, String)>(
            "SELECT no_email, email, name, xmin::text FROM user_search WHERE user_id = $1",
        )
        .bind(id)
    };
    upsert("auth0|a", Some("Ann@Example.com"), "Ann Lee")
        .execute(&app.db)
        .await
        .unwrap();
    let (no_email, email, name, written) = copy("auth0|a").fetch_one(&app.db).await.unwrap();
    assert_eq!(
        (no_email, email.as_str(), name.as_deref()),
        (false, "ann@example.com", Some("ann lee"))
    );

    // A sync rewriting the row as it was leaves the copy alone.
    upsert("auth0|a", Some("Ann@Example.com"), "Ann Lee")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET logins_count = 3 WHERE user_id = 'auth0|a'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(copy("auth0|a").fetch_one(&app.db).await.unwrap().3, written);

    // A new name or email reaches it in the same statement.
    upsert("auth0|a", None, "Ann Lee-Smith")
        .execute(&app.db)
        .await
        .unwrap();
    let (no_email, email, name, _) = copy("auth0|a").fetch_one(&app.db).await.unwrap();
    assert_eq!(
        (no_email, email.as_str(), name.as_deref()),
        (true, "", Some("ann lee-smith"))
    );
    let found = users(&app, &[("q", "lee-sm")]).await;
    assert_eq!(ids(&found), ["auth0|a"]);

    // A deleted user leaves it too.
    sqlx::query("DELETE FROM users WHERE user_id = 'auth0|a'")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(
        copy("auth0|a")
            .fetch_optional(&app.db)
            .await
            .unwrap()
            .is_none()
    );
}
