//! The coalescing quote reader against a real database: many lookups in flight at once each get
//! their own person's quote, whatever batch they ride in.

use std::time::Duration;

use futures::future::join_all;
use quotebook::{error::AppError, quotes::reader::QuoteReader};

use crate::helpers::spawn_app;

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
    let reader = QuoteReader::start(app.db.clone(), Duration::from_secs(5));

    // Each person asked for three times over, interleaved, plus ids that own nothing: one with a
    // NUL byte (Postgres text cannot hold it) must not spoil the batch it lands in.
    let mut ids: Vec<String> = (0..900)
        .map(|k| format!("auth0|reader{}", k % 300))
        .collect();
    ids.insert(450, "auth0|nul\0byte".to_owned());
    ids.insert(10, "auth0|nobody".to_owned());
    let answers = join_all(ids.iter().map(|id| reader.find(id))).await;

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
    let quote = reader.find("auth0|reader1").await.unwrap().unwrap();
    assert_eq!(quote.message, "changed");
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_for_every_waiting_page() {
    let app = spawn_app().await;
    let reader = QuoteReader::start(app.db.clone(), Duration::from_secs(5));
    app.db.close().await;
    let ids: Vec<String> = (0..20).map(|n| format!("auth0|x{n}")).collect();
    let answers = join_all(ids.iter().map(|id| reader.find(id))).await;
    for answer in answers {
        assert!(
            matches!(answer, Err(AppError::Unavailable(_))),
            "expected 503, got {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_query_stuck_behind_a_lock_times_out_as_a_503() {
    let app = spawn_app().await;
    let reader = QuoteReader::start(app.db.clone(), Duration::from_millis(500));
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE user_messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let answer = reader.find("auth0|anyone").await;
    assert!(
        matches!(answer, Err(AppError::Unavailable(_))),
        "expected 503, got {answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // Once the lock goes, lookups work again.
    blocker.rollback().await.unwrap();
    assert!(reader.find("auth0|anyone").await.unwrap().is_none());
}
