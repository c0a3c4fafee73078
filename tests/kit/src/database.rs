//! A PostgreSQL database made for one test on the `DATABASE_URL` server
//! (`.ci/env.sh` starts one) and dropped, forcefully, afterwards.

use sqlx::{Connection, PgConnection, PgPool};

/// The server databases are created on: `$DATABASE_URL`, else the local default.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `admin` with its database name replaced by `name`, parameters kept.
pub fn url_of(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin, String::new()),
    };
    let server = base.rsplit_once('/').map(|(server, _)| server).unwrap_or(base);
    format!("{server}/{name}{query}")
}

/// A name no other test process uses: `prefix`, this process id and the clock.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// Creates database `name` on the [`admin_url`] server, replacing one left
/// behind by an earlier run, and returns its URL. The name must be a plain
/// identifier (lower-case letters, digits, `_`): it goes into SQL as is.
pub async fn create(name: &str) -> Result<String, String> {
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("database name {name:?}: use lower-case letters, digits and _"));
    }
    let admin = admin_url();
    let mut conn = PgConnection::connect(&admin).await.map_err(|e| {
        format!("connecting to {admin}: {e} (set DATABASE_URL to a server where we may create databases)")
    })?;
    for sql in [format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
        sqlx::query(&sql).execute(&mut conn).await.map_err(|e| format!("{sql}: {e}"))?;
    }
    conn.close().await.ok();
    Ok(url_of(&admin, name))
}

/// Drops database `name` (its connections are cut); a missing one is fine.
pub async fn drop(name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(&admin_url()).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    conn.close().await.ok();
    Ok(())
}

/// A database for one async test, dropped when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// Creates a fresh database (panics with the reason when it cannot).
    pub async fn create() -> TestDb {
        let name = unique_name("cxrled_test");
        let url = create(&name).await.expect("create the test database");
        TestDb { name, url }
    }

    /// A pool on it.
    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which must not block: the
        // database goes away on a thread of its own, waited for.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let _ = runtime.block_on(drop(&name));
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::url_of;

    #[test]
    fn the_database_name_is_replaced_and_parameters_kept() {
        assert_eq!(url_of("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(url_of("postgres://u@h/postgres?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}
