//! cxr-led's own database for one run: created on the server of
//! `DATABASE_URL` and dropped afterwards, queried through sqlx on a private
//! runtime so the harness itself stays synchronous.

use anyhow::Context;
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, PgPool};

/// The server the harness creates databases on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database made for one run; dropped (forcefully) on drop unless kept.
pub struct Database {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    runtime: tokio::runtime::Runtime,
    pool: Option<PgPool>,
    keep: bool,
}

impl Database {
    /// Creates `name` on the `DATABASE_URL` server (the name must be a plain identifier).
    pub fn create(name: &str) -> anyhow::Result<Database> {
        anyhow::ensure!(
            name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database name {name:?}: use lower-case letters, digits and _"
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let admin = admin_url();
        runtime.block_on(async {
            let mut conn = PgConnection::connect(&admin).await.with_context(|| {
                format!("connecting to {admin} (set DATABASE_URL to a server where we may create databases)")
            })?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
            conn.close().await.ok();
            anyhow::Ok(())
        })?;
        let url = with_database(&admin, name);
        Ok(Database { name: name.to_string(), url, runtime, pool: None, keep: false })
    }

    /// Keep the database when this is dropped (the demo leaves it for the user).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Runs a query and returns its rows.
    pub fn rows(&mut self, sql: &str) -> anyhow::Result<Vec<PgRow>> {
        let url = self.url.clone();
        let runtime = &self.runtime;
        let pool = match &self.pool {
            Some(pool) => pool.clone(),
            None => {
                let pool = runtime.block_on(PgPool::connect(&url))?;
                self.pool = Some(pool.clone());
                pool
            }
        };
        runtime.block_on(sqlx::query(sql).fetch_all(&pool)).with_context(|| format!("query {sql}"))
    }

    /// A query returning one bigint (e.g. `SELECT count(*) ...`).
    pub fn count(&mut self, sql: &str) -> anyhow::Result<i64> {
        use sqlx::Row;
        let rows = self.rows(sql)?;
        let row = rows.first().with_context(|| format!("no row from {sql}"))?;
        Ok(row.try_get::<i64, _>(0)?)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            self.runtime.block_on(pool.close());
        }
        if self.keep {
            return;
        }
        let name = self.name.clone();
        let _ = self.runtime.block_on(async {
            let mut conn = PgConnection::connect(&admin_url()).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
            anyhow::Ok(())
        });
    }
}

/// The admin URL with its database name replaced.
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin, String::new()),
    };
    let server = base.rsplit_once('/').map(|(server, _)| server).unwrap_or(base);
    format!("{server}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced_and_parameters_kept() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/postgres?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
