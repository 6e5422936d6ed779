//! Batched quote saves against a real database: saves arriving together share one statement yet
//! each keeps its own precondition, outcome and read-your-own-write; one bad save (no `users`
//! row, an id Postgres cannot store, a statement that fails for it alone) never fails the
//! others.

use std::time::{Duration, Instant};

use futures::future::join_all;
use quotebook::{
    batching::BatchError,
    quotes::{
        batched_saves::{BatchedSaves, Save},
        queries::{Precondition, SaveOutcome, find_many, parse_version},
        quote::Quote,
    },
};
use reqwest::StatusCode;

use crate::helpers::{TestApp, spawn_app};

async fn people(app: &TestApp, prefix: &str, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|n| format!("auth0|{prefix}{n}")).collect();
    sqlx::query("INSERT INTO users (user_id) SELECT unnest($1::text[])")
        .bind(&ids)
        .execute(&app.db)
        .await
        .unwrap();
    ids
}

fn save(user_id: &str, text: &str, precondition: Precondition) -> Save {
    Save {
        user_id: user_id.to_owned(),
        quote: Quote::parse(text).unwrap(),
        precondition,
    }
}

async fn stored(app: &TestApp, user_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT message FROM user_messages WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(&app.db)
        .await
        .unwrap()
}

// The default (single-threaded) test runtime queues every save below before the writer runs, so
// they share batches.
#[tokio::test]
async fn saves_arriving_together_keep_their_own_preconditions_and_outcomes() {
    let app = spawn_app().await;
    let ids = people(&app, "writer", 40).await;
    // Half already have a quote; its version is what a loaded edit form carries.
    sqlx::query(
        "INSERT INTO user_messages (user_id, message)
         SELECT id, 'old' FROM unnest($1::text[]) AS id",
    )
    .bind(&ids[..20])
    .execute(&app.db)
    .await
    .unwrap();
    let current = find_many(app.db.acquire().await.unwrap(), ids[..20].to_vec())
        .await
        .unwrap();
    let version = |id: &str| {
        let (_, quote) = current.iter().find(|(i, _)| i == id).unwrap();
        parse_version(&quote.version()).unwrap()
    };
    let stale = parse_version("1000000").unwrap();

    let writer = BatchedSaves::start(app.db.clone(), Duration::from_secs(10));
    let mut batch = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let text = format!("new {n}");
        batch.push(match n % 5 {
            // Create-only over an existing quote: a conflict; over none: created.
            0 => save(id, &text, Precondition::Absent),
            // Replace the version loaded (or create when there is none).
            1 if n < 20 => save(id, &text, Precondition::Version(version(id))),
            2 if n < 20 => save(id, &text, Precondition::Version(stale)),
            _ => save(id, &text, Precondition::Any),
        });
    }
    // A person saving twice at once: the second follows the first, as if sent one by one.
    batch.push(save(&ids[3], "second try", Precondition::Any));
    batch.push(save(
        &ids[1],
        "same version again",
        Precondition::Version(version(&ids[1])),
    ));

    let outcomes = join_all(batch.iter().cloned().map(|s| writer.save(s))).await;
    for (request, outcome) in batch.iter().zip(&outcomes) {
        let n: usize = request
            .user_id
            .trim_start_matches("auth0|writer")
            .parse()
            .unwrap();
        let outcome = outcome
            .as_ref()
            .unwrap_or_else(|err| panic!("{request:?}: {err}"));
        let expect_conflict = match (&request.precondition, request.quote.as_str()) {
            (_, "same version again") => true,
            (Precondition::Absent, _) => n < 20,
            (Precondition::Version(v), _) => *v == stale,
            (Precondition::Any, _) => false,
        };
        match outcome {
            SaveOutcome::Saved(saved) => {
                assert!(!expect_conflict, "{request:?} should have lost");
                assert_eq!(saved.message, request.quote.as_str());
            }
            SaveOutcome::Conflict(latest) => {
                assert!(expect_conflict, "{request:?} should have been saved");
                assert_ne!(latest.message, request.quote.as_str());
            }
            SaveOutcome::NoUser => panic!("{request:?}: every one of them has a users row"),
        }
    }
    assert_eq!(stored(&app, &ids[3]).await.as_deref(), Some("second try"));
    assert_eq!(stored(&app, &ids[1]).await.as_deref(), Some("new 1"));
    assert_eq!(stored(&app, &ids[0]).await.as_deref(), Some("old"));
    assert_eq!(stored(&app, &ids[2]).await.as_deref(), Some("old"));
    assert_eq!(stored(&app, &ids[25]).await.as_deref(), Some("new 25"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_save_reads_back_once_answered() {
    let app = spawn_app().await;
    let ids = people(&app, "reader", 64).await;
    let writer = BatchedSaves::start(app.db.clone(), Duration::from_secs(10));
    let tasks = ids.iter().map(|id| {
        let writer = writer.clone();
        let db = app.db.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for round in 0..5 {
                let text = format!("{id} round {round}");
                let outcome = writer.save(save(&id, &text, Precondition::Any)).await;
                assert!(matches!(outcome, Ok(SaveOutcome::Saved(_))), "{outcome:?}");
                // Answered means committed: any connection reads it now.
                let read: String =
                    sqlx::query_scalar("SELECT message FROM user_messages WHERE user_id = $1")
                        .bind(&id)
                        .fetch_one(&db)
                        .await
                        .unwrap();
                assert_eq!(read, text);
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
}

#[tokio::test]
async fn one_bad_save_fails_alone() {
    let app = spawn_app().await;
    let ids = people(&app, "neighbour", 30).await;
    people(&app, "boom", 1).await;
    // A statement touching this person fails (a trigger standing in for any per-row failure:
    // a row deleted under the statement, a constraint added later).
    sqlx::query(
        "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.user_id = 'auth0|boom0' THEN RAISE EXCEPTION 'refused'; END IF;
             RETURN NEW;
         END $$",
    )
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON user_messages
         FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
    )
    .execute(&app.db)
    .await
    .unwrap();

    let writer = BatchedSaves::start(app.db.clone(), Duration::from_secs(10));
    let mut batch: Vec<Save> = ids
        .iter()
        .map(|id| save(id, "fine", Precondition::Any))
        .collect();
    batch.insert(7, save("auth0|boom0", "refused", Precondition::Any));
    // No users row (deleted while signed in) and an id Postgres text cannot hold.
    batch.insert(13, save("auth0|gone", "orphan", Precondition::Any));
    batch.insert(21, save("auth0|nul\0id", "nul", Precondition::Any));

    let started = Instant::now();
    let outcomes = join_all(batch.iter().cloned().map(|s| writer.save(s))).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for (request, outcome) in batch.iter().zip(outcomes) {
        match request.user_id.as_str() {
            "auth0|boom0" => assert!(matches!(outcome, Err(BatchError::Failed(_))), "{outcome:?}"),
            "auth0|gone" | "auth0|nul\0id" => {
                assert!(matches!(outcome, Ok(SaveOutcome::NoUser)), "{outcome:?}")
            }
            _ => assert!(matches!(outcome, Ok(SaveOutcome::Saved(_))), "{outcome:?}"),
        }
    }
    for id in &ids {
        assert_eq!(stored(&app, id).await.as_deref(), Some("fine"));
    }
    assert_eq!(stored(&app, "auth0|boom0").await, None);
    assert_eq!(stored(&app, "auth0|gone").await, None);
}

#[tokio::test]
async fn a_person_whose_account_was_removed_is_signed_out_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.signed_in_client("removed@example.com").await;
    let token = app.csrf_for(&client).await;
    sqlx::query("DELETE FROM users WHERE email = 'removed@example.com'")
        .execute(&app.db)
        .await
        .unwrap();

    let put = client
        .put(app.url("/quote"))
        .header("HX-Request", "true")
        .header("X-CSRF-Token", &token)
        .form(&[("message", "Still here?")])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert!(
        put.headers()["hx-redirect"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login")
    );
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM user_messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(written, 0);
    // The session is over: the home page shows the login box again.
    let home = client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!home.contains("csrf-token"), "still signed in");
}
