//! PostgreSQL: the connection pool, and the schema migrations of
//! `migrations/`. The schema owner (or a superuser) applies them, at start-up
//! in a development set-up or with `cxr-ledd migrate`; the service's own role
//! (granted `cxr_led_service`) may not change the schema, so it only checks
//! that every migration has been applied. The states its CHECK constraints
//! allow are the enums here, bound and read by the checked queries
//! (`sqlx::query!`, prepared in `.sqlx/`).

use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Landed migrations that were once edited in place, as (version, sha384 of
/// the edited copy): a database that ran the edited copy recorded that
/// checksum, which the landed file no longer has. Its effect is redone by a
/// follow-up migration, so the record is set back to the landed file's
/// checksum before the migrator checks it. Never add to this list: add a
/// migration instead of editing one (`daemon/tests/landed_migrations.rs`
/// fails when a landed file changes).
pub const KNOWN_EDITS: &[(i64, &str)] = &[(
    20261125000004,
    "3c4dbcaf1cc3262bc86b658e506333a1b8ac609929001c56d9aeb13d50302a37ce9bbdcae320c9dd14fbae177ab736d8",
)];

/// Sets the recorded checksum of every [`KNOWN_EDITS`] migration back to the
/// landed file's; returns how many records changed. A database without
/// `_sqlx_migrations` yet has nothing to repair.
pub async fn repair_known_edits(db: &PgPool) -> Result<u64, sqlx::Error> {
    let table = sqlx::query_scalar!("SELECT to_regclass('_sqlx_migrations')::text AS name").fetch_one(db).await?;
    if table.is_none() {
        return Ok(0);
    }
    let mut repaired = 0;
    for &(version, edited) in KNOWN_EDITS {
        let Some(landed) = MIGRATOR.iter().find(|m| m.version == version) else { continue };
        let edited = hex::decode(edited).expect("KNOWN_EDITS holds hex");
        let changed = sqlx::query!(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
            landed.checksum.as_ref(),
            version,
            edited,
        )
        .execute(db)
        .await?
        .rows_affected();
        if changed > 0 {
            tracing::warn!(
                version,
                "migration {version} had been run from an edited copy: its recorded checksum is set back to the \
                 landed file's; a follow-up migration redoes what the edit changed"
            );
        }
        repaired += changed;
    }
    Ok(repaired)
}

/// Repairs [`KNOWN_EDITS`], then applies the pending migrations.
pub async fn migrate(db: &PgPool) -> anyhow::Result<()> {
    repair_known_edits(db).await.context("repairing the checksum of an edited migration")?;
    MIGRATOR.run(db).await.context("applying the migrations")?;
    Ok(())
}

/// The connected role, as far as the audit is concerned.
#[derive(Debug, Clone)]
pub struct Role {
    /// `current_user`.
    pub name: String,
    /// A superuser bypasses every privilege.
    pub superuser: bool,
    /// It owns `audit_event`, so it may disable its triggers and alter it.
    pub owns_audit: bool,
    /// `audit_event` exists (the schema has been migrated at least once).
    pub schema_exists: bool,
}

impl Role {
    /// Whether this role could rewrite the audit trail (and may migrate).
    pub fn can_rewrite_audit(&self) -> bool {
        self.superuser || self.owns_audit
    }
}

/// Opens the pool, without touching the schema.
pub async fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

/// Who the pool connects as.
pub async fn role(db: &PgPool) -> Result<Role, sqlx::Error> {
    sqlx::query_as!(
        Role,
        r#"SELECT current_user::text AS "name!",
                  coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS "superuser!",
                  EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'audit_event'
                          AND tableowner = current_user) AS "owns_audit!",
                  EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'audit_event')
                      AS "schema_exists!""#
    )
    .fetch_one(db)
    .await
}

/// Applies the pending migrations when `role` may change the schema (its
/// owner, a superuser, or anyone on a database not migrated yet); otherwise
/// refuses to go on while a migration is missing.
pub async fn prepare(db: &PgPool, role: &Role) -> anyhow::Result<()> {
    if role.can_rewrite_audit() || !role.schema_exists {
        return migrate(db).await;
    }
    let applied: Vec<i64> = sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(db)
        .await
        .context("reading _sqlx_migrations (is this role granted cxr_led_service?)")?;
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the database lacks migration(s) {}; {} may not change the schema: run `cxr-ledd migrate --config FILE \
             --database-url <the schema owner's URL>` first (systemd/README.md, \"Database roles\")",
            missing.join(", "),
            role.name
        );
    }
    Ok(())
}

/// Connects and brings the schema up to date (or checks it is): for tools
/// and tests; the service also checks the role first (`service::start`).
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let db = pool(url, max_connections).await?;
    let role = role(&db).await?;
    prepare(&db, &role).await?;
    Ok(db)
}

/// `job.state`, as its CHECK constraint allows (migrations/…000002_pipeline.sql).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (or for its retry time).
    Queued,
    /// Claimed by a worker under a lease.
    Running,
    /// Every instance decided.
    Done,
    /// Out of attempts, or failed for good: the dead letter.
    Dead,
}

impl JobState {
    /// Every state, in the order of the constraint.
    pub const ALL: [JobState; 4] = [JobState::Queued, JobState::Running, JobState::Done, JobState::Dead];
}

/// `outbox.state`, as its CHECK constraint allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum OutboxState {
    /// To be sent (now or at `next_attempt_at`).
    Pending,
    /// The destination answered Success or a Warning.
    Sent,
    /// Given up after `max-attempts`.
    Failed,
}

impl OutboxState {
    /// Every state, in the order of the constraint.
    pub const ALL: [OutboxState; 3] = [OutboxState::Pending, OutboxState::Sent, OutboxState::Failed];
}
