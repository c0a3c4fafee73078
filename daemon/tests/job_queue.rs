//! The job queue on a real PostgreSQL: concurrent claimers never share a
//! job, an expired lease is taken over, failures back off and end in the
//! dead letter with their reason, and a worker that keeps dying does too; a
//! study re-opened by a late instance waits for its running job, then gets
//! the next one.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use cxr_led_daemon::db;
use cxr_led_daemon::pipeline::queue::{self, FailOutcome};
use cxr_led_daemon::pipeline::tracker;
use sqlx::{PgPool, Row};

async fn enqueue_studies(pool: &PgPool, count: usize) -> Vec<String> {
    let mut studies = Vec::new();
    for i in 0..count {
        let study = format!("1.2.826.0.1.3680043.10.1.{i}");
        sqlx::query("INSERT INTO study (study_instance_uid, enqueued_at) VALUES ($1, now())")
            .bind(&study)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO job (study_instance_uid) VALUES ($1)").bind(&study).execute(pool).await.unwrap();
        studies.push(study);
    }
    studies
}

async fn job_state(pool: &PgPool, study: &str) -> (String, i32, Option<String>) {
    let row = sqlx::query("SELECT state, attempts, last_error FROM job WHERE study_instance_uid = $1")
        .bind(study)
        .fetch_one(pool)
        .await
        .unwrap();
    (row.get("state"), row.get("attempts"), row.get("last_error"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_never_claim_the_same_job() {
    let test_db = common::TestDb::create().await;
    let pool = db::connect(&test_db.url, 16).await.unwrap();
    let studies = enqueue_studies(&pool, 60).await;

    // Eight workers (as if from several daemons) drain the queue at once.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("test-host:{w}");
            let mut mine = Vec::new();
            while let Some(job) = queue::claim(&pool, &worker, Duration::from_secs(60), 3).await.unwrap() {
                assert!(queue::complete(&pool, &job, &worker, "test").await.unwrap());
                mine.push(job.study_instance_uid);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for task in tasks {
        for study in task.await.unwrap() {
            total += 1;
            assert!(seen.insert(study.clone()), "study {study} was claimed twice");
        }
    }
    assert_eq!(total, studies.len());
    assert_eq!(seen, studies.into_iter().collect());
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM job WHERE state = 'done' AND attempts = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(done, 60);
    assert_eq!(queue::depth(&pool).await.unwrap(), 0);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_worker_loses_it() {
    let test_db = common::TestDb::create().await;
    let pool = db::connect(&test_db.url, 4).await.unwrap();
    let study = enqueue_studies(&pool, 1).await.remove(0);

    let first = queue::claim(&pool, "host-a:1", Duration::from_secs(60), 3).await.unwrap().unwrap();
    // Held: nobody else gets it.
    assert!(queue::claim(&pool, "host-b:1", Duration::from_secs(60), 3).await.unwrap().is_none());
    // host-a dies: its lease runs out.
    sqlx::query("UPDATE job SET lease_expires_at = now() - interval '1 second'").execute(&pool).await.unwrap();
    let second = queue::claim(&pool, "host-b:1", Duration::from_secs(60), 3).await.unwrap().unwrap();
    assert_eq!(second.study_instance_uid, study);
    assert_eq!(second.attempt, 2);
    // The old worker can no longer renew, finish or fail the job.
    assert!(!queue::heartbeat(&pool, &first, "host-a:1", Duration::from_secs(60)).await.unwrap());
    assert!(!queue::complete(&pool, &first, "host-a:1", "late").await.unwrap());
    assert_eq!(
        queue::fail(&pool, &first, "host-a:1", "late", false, 3, Duration::ZERO).await.unwrap(),
        FailOutcome::LeaseLost
    );
    assert!(queue::complete(&pool, &second, "host-b:1", "ok").await.unwrap());
    assert_eq!(job_state(&pool, &study).await.0, "done");
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_with_the_reason() {
    let test_db = common::TestDb::create().await;
    let pool = db::connect(&test_db.url, 4).await.unwrap();
    let study = enqueue_studies(&pool, 1).await.remove(0);

    let job = queue::claim(&pool, "w", Duration::from_secs(60), 2).await.unwrap().unwrap();
    let outcome = queue::fail(&pool, &job, "w", "GPU out of memory", false, 2, Duration::from_secs(120)).await.unwrap();
    assert_eq!(outcome, FailOutcome::Retry(Duration::from_secs(120)));
    assert_eq!(job_state(&pool, &study).await.0, "queued");
    // Not due yet: the backoff holds it.
    assert!(queue::claim(&pool, "w", Duration::from_secs(60), 2).await.unwrap().is_none());
    sqlx::query("UPDATE job SET available_at = now()").execute(&pool).await.unwrap();
    let job = queue::claim(&pool, "w", Duration::from_secs(60), 2).await.unwrap().unwrap();
    assert_eq!(job.attempt, 2);
    let outcome = queue::fail(&pool, &job, "w", "GPU out of memory again", false, 2, Duration::ZERO).await.unwrap();
    assert_eq!(outcome, FailOutcome::Dead);
    let (state, attempts, error) = job_state(&pool, &study).await;
    assert_eq!((state.as_str(), attempts), ("dead", 2));
    assert_eq!(error.as_deref(), Some("GPU out of memory again"));
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event FROM audit_event WHERE study_instance_uid = $1 ORDER BY id")
            .bind(&study)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(events, vec!["job-retry", "job-dead"]);
}

#[tokio::test]
async fn a_worker_that_keeps_dying_ends_in_the_dead_letter() {
    let test_db = common::TestDb::create().await;
    let pool = db::connect(&test_db.url, 4).await.unwrap();
    let study = enqueue_studies(&pool, 1).await.remove(0);
    for attempt in 1..=2 {
        let job = queue::claim(&pool, "crashy", Duration::from_secs(60), 2).await.unwrap().unwrap();
        assert_eq!(job.attempt, attempt);
        // The process dies mid-job: no complete, no fail; the lease expires.
        sqlx::query("UPDATE job SET lease_expires_at = now() - interval '1 second'").execute(&pool).await.unwrap();
    }
    assert!(queue::claim(&pool, "next", Duration::from_secs(60), 2).await.unwrap().is_none());
    let (state, _, error) = job_state(&pool, &study).await;
    assert_eq!(state, "dead");
    assert!(error.unwrap().contains("lease expired"), "the reason says the worker died");
}

#[tokio::test]
async fn release_hands_a_job_back_without_spending_an_attempt() {
    let test_db = common::TestDb::create().await;
    let pool = db::connect(&test_db.url, 4).await.unwrap();
    let study = enqueue_studies(&pool, 1).await.remove(0);
    let job = queue::claim(&pool, "w", Duration::from_secs(60), 3).await.unwrap().unwrap();
    queue::release(&pool, &job, "w").await.unwrap();
    assert_eq!(job_state(&pool, &study).await, ("queued".to_string(), 0, None));
    let again = queue::claim(&pool, "w2", Duration::from_secs(60), 3).await.unwrap().unwrap();
    assert_eq!(again.attempt, 1);
}

#[tokio::test]
async fn a_reopened_study_waits_for_its_running_job_then_gets_the_next() {
    let test_db = common::TestDb::create().await;
    let pool = db::connect(&test_db.url, 4).await.unwrap();
    let study = "1.2.826.0.1.3680043.10.2.1";
    let quiet = Duration::from_secs(1);
    // As the ingest leaves a study: its last instance longer ago than the quiet period.
    let reopen = || async {
        sqlx::query(
            "INSERT INTO study (study_instance_uid, last_received_at) VALUES ($1, now() - interval '10 s') \
             ON CONFLICT (study_instance_uid) DO UPDATE SET enqueued_at = NULL, last_received_at = now() - interval '10 s'",
        )
        .bind(study)
        .execute(&pool)
        .await
        .unwrap();
    };
    let jobs = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM job WHERE study_instance_uid = $1 ORDER BY id")
            .bind(study)
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    reopen().await;
    assert_eq!(tracker::enqueue_complete(&pool, quiet).await.unwrap(), [study]);

    // Re-opened while its job is still queued: that job will see the new instance.
    reopen().await;
    assert!(tracker::enqueue_complete(&pool, quiet).await.unwrap().is_empty());
    assert_eq!(jobs().await, ["queued"]);

    // Re-opened while its job runs: the study waits (the job may have listed its instances already).
    let job = queue::claim(&pool, "w", Duration::from_secs(60), 3).await.unwrap().unwrap();
    reopen().await;
    assert!(tracker::enqueue_complete(&pool, quiet).await.unwrap().is_empty());
    assert_eq!(jobs().await, ["running"]);
    let waiting: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT enqueued_at FROM study WHERE study_instance_uid = $1")
            .bind(study)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(waiting, None);

    // Once it is done, the next poll enqueues the next job.
    assert!(queue::complete(&pool, &job, "w", "test").await.unwrap());
    assert_eq!(tracker::enqueue_complete(&pool, quiet).await.unwrap(), [study]);
    assert_eq!(jobs().await, ["done", "queued"]);
    // And no second open job can exist.
    let second_open = sqlx::query("INSERT INTO job (study_instance_uid) VALUES ($1)").bind(study).execute(&pool).await;
    assert!(second_open.is_err(), "a second open job for one study was accepted");
}
