//! Applies the embedded migrations in `runner/migrations`.

use sqlx::migrate::Migrator;

use super::{Queue, Result};

/// The migrations, with their bookkeeping table inside the `jobrunner` schema too.
fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    // sqlx takes a per-database advisory lock before creating the schema, so runners that
    // start together migrate one after the other and the later ones find nothing to do.
    migrator.create_schema("jobrunner");
    migrator.dangerous_set_table_name("jobrunner._sqlx_migrations");
    migrator
}

impl Queue {
    /// Applies pending migrations. Idempotent, and safe to call from many runners at once.
    pub async fn migrate(&self) -> Result<()> {
        migrator().run(&self.pool).await?;
        Ok(())
    }
}
