//! The state enums are the schema's: every `JobState` and `OutboxState`
//! encodes to a value its table's CHECK constraint allows, and every value
//! the constraint allows has a variant. A state added on one side only fails
//! here instead of on a rare path at run time.

mod common;

use common::*;
use cxr_led_daemon::db::{self, JobState, OutboxState};
use sqlx::PgPool;

/// The quoted values of a CHECK constraint, e.g. `['queued', 'running']`.
async fn allowed(pool: &PgPool, constraint: &str) -> Vec<String> {
    let definition: String =
        sqlx::query_scalar("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1")
            .bind(constraint)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("constraint {constraint}: {e}"));
    let mut values: Vec<String> = definition.split('\'').skip(1).step_by(2).map(str::to_string).collect();
    values.sort();
    values
}

/// What sqlx writes into the column for each value.
async fn encoded<T>(pool: &PgPool, values: &[T]) -> Vec<String>
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Copy + Send + Sync,
{
    let mut texts = Vec::new();
    for &value in values {
        texts.push(sqlx::query_scalar::<_, String>("SELECT $1::text").bind(value).fetch_one(pool).await.unwrap());
    }
    texts.sort();
    texts
}

#[tokio::test]
async fn the_state_enums_match_the_check_constraints() {
    let test_db = TestDb::create().await;
    let pool = db::connect(&test_db.url, 2).await.unwrap();
    assert_eq!(encoded(&pool, &JobState::ALL).await, allowed(&pool, "job_state_check").await);
    assert_eq!(encoded(&pool, &OutboxState::ALL).await, allowed(&pool, "outbox_state_check").await);
}
