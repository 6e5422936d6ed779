//! Batched lookups against a real database (with the quote query pages use): many lookups in
//! flight at once each get their own person's quote, whatever batch they ride in; failures reach
//! every waiting page as a 503.

use std::time::Duration;

use futures::future::join_all;
use quotebook::{
    batched_lookup::{BatchedLookup, LookupError},
    quotes::queries::{StoredQuote, find_many},
};

use crate::helpers::spawn_app;

fn quote_reader(db: &sqlx::PgPool, timeout: Duration) -> BatchedLookup<StoredQuote> {
    BatchedLookup::start(db.clone(), timeout, find_many)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_in_flight_together_each_get_their_own_quote() {
    let app = spawn_app().await;
    // 300 people; every third has no quote.
    for n in 0..300 {
        let user_id = format!("auth0|reader{n}");
        sqlx::query("INSERT INTO users (user_id, email) VALUES ($1, $2)")
            .bind(&user_id)
            .bind(format!("reader{n}@example.com"))
            .execute(&app.db)
            .await
            .unwrap();
        if n % 3 != 0 {
            sqlx::query("INSERT INTO user_messages (user_id, message) VALUES ($1, $2)")
                .bind(&user_id)
                .bind(format!("quote of reader {n}"))
                .execute(&app.db)
                .await
                .unwrap();
        }
    }
    let reader = quote_reader(&app.db, Duration::from_secs(5));

    // Each person asked for three times over, interleaved, plus ids that own nothing: one with a
    // NUL byte (Postgres text cannot hold it) must not spoil the batch it lands in.
    let mut ids: Vec<String> = (0..900)
        .map(|k| format!("auth0|reader{}", k % 300))
        .collect();
    ids.insert(450, "auth0|nul\0byte".to_owned());
    ids.insert(10, "auth0|nobody".to_owned());
    let answers = join_all(ids.iter().map(|id| reader.get(id))).await;

    for (id, answer) in ids.iter().zip(answers) {
        let quote = answer.unwrap_or_else(|err| panic!("{id:?}: {err}"));
        let expected = id
            .strip_prefix("auth0|reader")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| n % 3 != 0)
            .map(|n| format!("quote of reader {n}"));
        assert_eq!(quote.map(|q| q.message), expected, "{id:?}");
    }

    // A save is visible to the very next lookup: nothing is cached.
    sqlx::query("UPDATE user_messages SET message = 'changed' WHERE user_id = 'auth0|reader1'")
        .execute(&app.db)
        .await
        .unwrap();
    let quote = reader.get("auth0|reader1").await.unwrap().unwrap();
    assert_eq!(quote.message, "changed");
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_for_every_waiting_page() {
    let app = spawn_app().await;
    let reader = quote_reader(&app.db, Duration::from_secs(5));
    app.db.close().await;
    let ids: Vec<String> = (0..20).map(|n| format!("auth0|x{n}")).collect();
    let answers = join_all(ids.iter().map(|id| reader.get(id))).await;
    for answer in answers {
        assert!(
            matches!(answer, Err(LookupError::Unavailable(_))),
            "expected 503, got {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_query_stuck_behind_a_lock_times_out_as_a_503() {
    let app = spawn_app().await;
    let reader = quote_reader(&app.db, Duration::from_millis(500));
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE user_messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let answer = reader.get("auth0|anyone").await;
    assert!(
        matches!(answer, Err(LookupError::Unavailable(_))),
        "expected 503, got {answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Once the lock goes, lookups work again.
    blocker.rollback().await.unwrap();
    assert!(reader.get("auth0|anyone").await.unwrap().is_none());
}

/// The quote query, made slow (in Postgres) when the batch holds the key "slow", and counting
/// the batches it is asked for.
fn instrumented_reader(
    db: &sqlx::PgPool,
    batches: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
) -> BatchedLookup<StoredQuote> {
    BatchedLookup::start(
        db.clone(),
        Duration::from_secs(10),
        move |mut conn, keys| {
            batches.lock().unwrap().push(keys.len());
            async move {
                if keys.iter().any(|k| k == "slow") {
                    sqlx::query("SELECT pg_sleep(1.5)")
                        .execute(&mut *conn)
                        .await?;
                }
                find_many(conn, keys).await
            }
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_arriving_during_a_query_share_the_next_one() {
    let app = spawn_app().await;
    let batches = std::sync::Arc::default();
    let reader = instrumented_reader(&app.db, std::sync::Arc::clone(&batches));
    let ids: Vec<String> = (0..200).map(|n| format!("auth0|many{n}")).collect();
    let answers = join_all(ids.iter().map(|id| reader.get(id))).await;
    assert!(answers.iter().all(|a| matches!(a, Ok(None))));
    let sizes = batches.lock().unwrap().clone();
    assert_eq!(
        sizes.iter().sum::<usize>(),
        200,
        "every lookup asked once: {sizes:?}"
    );
    assert!(
        sizes.len() <= 20,
        "200 lookups in flight together took {} queries: {sizes:?}",
        sizes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_query_does_not_hold_up_the_pages_behind_it() {
    let app = spawn_app().await;
    let reader = instrumented_reader(&app.db, std::sync::Arc::default());
    let slow = tokio::spawn({
        let reader = reader.clone();
        async move { reader.get("slow").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = std::time::Instant::now();
    assert!(reader.get("auth0|fast").await.unwrap().is_none());
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(800),
        "waited {waited:?} behind a stalled query"
    );
    assert!(!slow.is_finished(), "the slow query is still running");
    assert!(slow.await.unwrap().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_distant_database_a_lookup_waits_only_a_moment_for_the_batch_in_flight() {
    let app = spawn_app().await;
    // Each batch costs a 60 ms round trip, as to a database far away. What is measured is when
    // batches leave, not how many connections the pool has: the simulated trip gives its
    // connection back while it waits.
    let pool = app.db.clone();
    let reader = BatchedLookup::start(
        app.db.clone(),
        Duration::from_secs(10),
        move |conn, keys| {
            let pool = pool.clone();
            async move {
                drop(conn);
                tokio::time::sleep(Duration::from_millis(60)).await;
                find_many(pool.acquire().await?, keys).await
            }
        },
    );
    // A page every 3 ms for a quarter of a second.
    let lookups = (0..80).map(|n| {
        let reader = reader.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3 * n)).await;
            let started = std::time::Instant::now();
            reader.get(&format!("auth0|far{n}")).await.unwrap();
            started.elapsed()
        })
    });
    let mut waited: Vec<Duration> = join_all(lookups)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    waited.sort();
    // One batch at a time would add up to a whole round trip of waiting (half of one on
    // average) to every page.
    let median = waited[waited.len() / 2];
    assert!(
        median < Duration::from_millis(80),
        "median {median:?}: {waited:?}"
    );
    assert!(
        waited[waited.len() * 9 / 10] < Duration::from_millis(100),
        "{waited:?}"
    );
}
