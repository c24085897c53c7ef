//! Upgrades: migrating a database that runners are using, and runners that meet a schema
//! newer than they know.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::{Connection, PgPool};

use crate::support::process::run_cli;
use crate::support::{TestDb, eventually};

const MINUTE: Duration = Duration::from_secs(60);

/// This build's migrations.
const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../runner/migrations");

/// The migrations as the release of 2026-11 shipped them.
const PREVIOUS_RELEASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/release-2026-11/migrations"
);

/// The newest migration of the release of 2026-11.
const RELEASED: u32 = 7;

/// Migrates `pool` with the migrations in `dir` whose version is at most `until`.
async fn migrate_with(pool: &PgPool, dir: &str, until: u32) {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if version_of(&name) <= until {
            std::fs::copy(&path, copy.path().join(name)).unwrap();
        }
    }
    let mut migrator = Migrator::new(copy.path()).await.unwrap();
    migrator.create_schema("jobrunner");
    migrator.dangerous_set_table_name("jobrunner._sqlx_migrations");
    migrator
        .run(pool)
        .await
        .expect("the earlier migrations apply");
}

fn version_of(file: &str) -> u32 {
    file.split('_').next().unwrap().parse().unwrap()
}

/// Whether a session waits for a lock on the jobs table.
async fn someone_waits_on_jobs(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_locks
                         WHERE NOT granted AND relation = 'jobrunner.jobs'::regclass)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrating_under_a_long_transaction_holds_the_runners_statements_up_a_moment_at_most() {
    let db = TestDb::empty().await;
    migrate_with(&db.pool, PREVIOUS_RELEASE, RELEASED).await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT jobrunner.enqueue('kept', jsonb_build_object('n', n)) FROM generate_series(1, 2) n",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();

    // A transaction that holds a lock on one job for as long as the test wants, as a batch
    // transaction of a long job does: a migration that alters the table cannot have it until
    // then, and a lock request waiting in line holds up every statement behind it.
    let mut long = db.connect().await;
    let mut blocker = long.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobrunner.jobs WHERE id = $1 FOR UPDATE")
        .bind(ids[0])
        .execute(&mut *blocker)
        .await
        .unwrap();

    let queue = db.queue();
    let migrating = tokio::spawn(async move { queue.migrate().await });
    eventually("the migration to wait for its lock", MINUTE, || async {
        someone_waits_on_jobs(&db.pool).await.then_some(())
    })
    .await;
    // A runner's statement on another job, while the migration wants the table: it must not
    // wait for the long transaction.
    let started = Instant::now();
    let written = tokio::time::timeout(
        MINUTE,
        sqlx::query("UPDATE jobrunner.jobs SET priority = 1 WHERE id = $1")
            .bind(ids[1])
            .execute(&db.pool),
    )
    .await;
    let held_up = started.elapsed();
    assert!(
        written.is_ok(),
        "a statement queued behind the migration waited for the long transaction"
    );
    written.unwrap().unwrap();
    eprintln!("while a migration waited for a long transaction, a write waited {held_up:?}");
    assert!(!migrating.is_finished(), "the migration waits for its lock");

    blocker.commit().await.unwrap();
    tokio::time::timeout(MINUTE, migrating)
        .await
        .expect("the migration ends once the long transaction has")
        .unwrap()
        .expect("the migration succeeds");
    let job = db.queue().job(ids[0]).await.expect("the job is kept");
    assert_eq!(job.payload["n"], 1);
}

#[tokio::test]
async fn an_index_build_that_was_interrupted_is_built_again() {
    let db = TestDb::empty().await;
    migrate_with(&db.pool, MIGRATIONS, 16).await;
    sqlx::query(
        "INSERT INTO jobrunner.jobs (job_type, payload) VALUES ('same', '{}'), ('same', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // A concurrent build that fails leaves an invalid index behind: here one of the name
    // migration 0017 builds (unique on a column with duplicates, so it fails).
    let failed = sqlx::raw_sql(
        "CREATE UNIQUE INDEX CONCURRENTLY jobs_parent_id ON jobrunner.jobs (job_type)",
    )
    .execute(&db.pool)
    .await;
    assert!(failed.is_err(), "the build fails");
    let valid = || async {
        sqlx::query_as::<_, (bool, String)>(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid)
               FROM pg_index AS i WHERE i.indexrelid = 'jobrunner.jobs_parent_id'::regclass",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert!(!valid().await.0, "it left an invalid index");

    db.queue().migrate().await.expect("migrate");
    let (is_valid, definition) = valid().await;
    assert!(is_valid, "the index was built again");
    assert!(definition.contains("(parent_id)"), "{definition}");
}

#[tokio::test]
async fn runners_refuse_a_schema_newer_than_they_know() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO jobrunner._sqlx_migrations
                (version, description, success, checksum, execution_time)
         VALUES (9999, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = test_plugins::rust_dir().to_str().unwrap().to_owned();
    for args in [vec!["run", "--plugins", &dir], vec!["migrate"]] {
        let (status, _, stderr) = run_cli(&db.url(), &args).await;
        assert!(!status.success(), "{args:?} refuses to start");
        assert!(
            stderr.contains("newer than this build") && stderr.contains("migration 9999"),
            "{args:?} says why: {stderr}"
        );
    }
}

#[test]
fn every_index_on_jobs_since_the_release_is_built_concurrently_one_per_migration() {
    for entry in std::fs::read_dir(MIGRATIONS).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if version_of(&name) <= RELEASED || !code.contains("INDEX") {
            continue;
        }
        assert!(
            text.starts_with("-- no-transaction")
                && code.contains("CREATE INDEX CONCURRENTLY IF NOT EXISTS")
                && code.matches(';').count() == 1,
            "{name}: an index is built CONCURRENTLY IF NOT EXISTS, alone in a \
             -- no-transaction migration, so that runners can write meanwhile"
        );
    }
    assert!(
        Path::new(MIGRATIONS)
            .join("0017_index_parent_id.sql")
            .exists()
    );
}

#[tokio::test]
async fn a_migration_waits_for_the_lock_an_earlier_releases_migrator_holds() {
    use sqlx::migrate::Migrate;
    let db = TestDb::empty().await;
    // sqlx's migrator, which earlier releases run, takes its lock by waiting in
    // pg_advisory_lock; ours tries the same lock until it is free.
    let mut earlier = db.connect().await;
    earlier.lock().await.unwrap();
    let queue = db.queue();
    let migrating = tokio::spawn(async move { queue.migrate().await });
    eventually("the migration to try the lock", MINUTE, || async {
        let trying: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity
                             WHERE query LIKE 'SELECT pg_try_advisory_lock%'
                               AND pid <> pg_backend_pid())",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        trying.then_some(())
    })
    .await;
    assert!(!migrating.is_finished(), "it waits while the lock is held");
    earlier.unlock().await.unwrap();
    tokio::time::timeout(MINUTE, migrating)
        .await
        .expect("it migrates once the lock is free")
        .unwrap()
        .expect("migrate");
}
