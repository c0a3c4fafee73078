//! cxr-led's own database for one run: created on the server of
//! `DATABASE_URL` and dropped afterwards, queried through sqlx on a private
//! runtime so the harness itself stays synchronous.

use anyhow::Context;
pub use cxr_led_test_kit::database::admin_url;
use sqlx::postgres::PgRow;
use sqlx::PgPool;

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
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let url = runtime.block_on(cxr_led_test_kit::database::create(name)).map_err(anyhow::Error::msg)?;
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
        let _ = self.runtime.block_on(cxr_led_test_kit::database::drop(&self.name));
    }
}
