//! PostgreSQL: the connection pool, and the schema migrations of
//! `migrations/`. The schema owner (or a superuser) applies them, at start-up
//! in a development set-up or with `cxr-ledd migrate`; the service's own role
//! (granted `cxr_led_service`) may not change the schema, so it only checks
//! that every migration has been applied.

use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

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
    let (name, superuser, owns_audit, schema_exists): (String, bool, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
         EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'audit_event' \
                 AND tableowner = current_user), \
         EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'audit_event')",
    )
    .fetch_one(db)
    .await?;
    Ok(Role { name, superuser, owns_audit, schema_exists })
}

/// Applies the pending migrations when `role` may change the schema (its
/// owner, a superuser, or anyone on a database not migrated yet); otherwise
/// refuses to go on while a migration is missing.
pub async fn prepare(db: &PgPool, role: &Role) -> anyhow::Result<()> {
    if role.can_rewrite_audit() || !role.schema_exists {
        MIGRATOR.run(db).await.context("applying the migrations")?;
        return Ok(());
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
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
