//! The schema's two forms agree: a database migrated from nothing and one migrated by the
//! previous release and then upgraded hold the same `jobrunner` schema, and the definitions in
//! `runner/sql` are applied again only when their text changes.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use sqlx::migrate::Migrator;

use crate::support::db::TestDb;

/// The migrations as the release of 2026-11 shipped them, functions and all.
const PREVIOUS_RELEASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/release-2026-11/migrations"
);

/// The `jobrunner` schema as `pg_dump` prints it, without the lines that differ per run.
fn schema_dump(db: &TestDb) -> String {
    let output = Command::new("pg_dump")
        .args(["--schema-only", "--schema=jobrunner", "--no-owner"])
        .arg(format!("--dbname={}", db.url()))
        .output()
        .expect("pg_dump runs");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("a UTF-8 dump")
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the migrations table records: version, checksum, success.
async fn recorded(db: &TestDb) -> Vec<(i64, Vec<u8>, bool)> {
    sqlx::query_as("SELECT version, checksum, success FROM jobrunner._sqlx_migrations ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upgraded_database_has_the_schema_of_a_fresh_one() {
    let fresh = TestDb::empty().await;
    fresh
        .queue()
        .migrate()
        .await
        .expect("migrate a fresh database");

    let upgraded = TestDb::empty().await;
    let mut previous = Migrator::new(Path::new(PREVIOUS_RELEASE)).await.unwrap();
    previous.create_schema("jobrunner");
    previous.dangerous_set_table_name("jobrunner._sqlx_migrations");
    previous
        .run(&upgraded.pool)
        .await
        .expect("the previous release migrates");
    let waiting: i64 = sqlx::query_scalar("SELECT jobrunner.enqueue('kept', '{\"n\": 1}')")
        .fetch_one(&upgraded.pool)
        .await
        .unwrap();
    upgraded.queue().migrate().await.expect("upgrade");

    assert_eq!(schema_dump(&upgraded), schema_dump(&fresh));
    assert_eq!(recorded(&upgraded).await, recorded(&fresh).await);
    let job = upgraded
        .queue()
        .job(waiting)
        .await
        .expect("the job is kept");
    assert_eq!(job.payload, json!({"n": 1}));
}

#[tokio::test]
async fn definitions_are_applied_again_only_when_their_text_changes() {
    let db = TestDb::new().await;
    let applied_at = "SELECT max(applied_at) FROM jobrunner.definitions";
    let first: chrono::DateTime<chrono::Utc> = db.scalar(applied_at).await;
    db.queue().migrate().await.unwrap();
    assert_eq!(
        db.scalar::<chrono::DateTime<chrono::Utc>>(applied_at).await,
        first
    );

    // A definition lost, and the record of it changed as a new text would.
    sqlx::raw_sql(
        "DROP FUNCTION jobrunner.claim_share;
         UPDATE jobrunner.definitions SET sha256 = 'older' WHERE file = 'tenants.sql'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db.queue().migrate().await.unwrap();
    let restored: bool = db
        .scalar("SELECT to_regproc('jobrunner.claim_share') IS NOT NULL")
        .await;
    assert!(restored, "migrate applies the changed definitions");
    assert!(db.scalar::<chrono::DateTime<chrono::Utc>>(applied_at).await > first);
}
