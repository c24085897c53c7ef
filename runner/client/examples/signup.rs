//! An application that records a sign-up and enqueues the welcome email in the same
//! transaction: the job exists exactly when the sign-up does, and a sign-up that fails leaves
//! no job behind. It depends on `jobrunner-client` alone, not on the runner.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1/app \
//!     cargo run -p jobrunner-client --example signup -- alice@example.com
//! ```

use jobrunner_client::{NewJob, Queue, QueueError, Unique};
use serde_json::json;
use sqlx::PgPool;

/// The application's own table.
pub async fn create_users_table(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("CREATE TABLE IF NOT EXISTS users (email text PRIMARY KEY)")
        .execute(pool)
        .await
        .map(drop)
}

/// Records `email` as a new user and enqueues their welcome email: both, or neither.
/// Returns the job's id.
pub async fn sign_up(queue: &Queue, email: &str) -> Result<i64, QueueError> {
    let mut tx = queue.pool().begin().await?;
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    let welcome = NewJob::new("send-welcome", json!({ "email": email }))
        .unique(Unique::Key(format!("welcome:{email}")));
    let job = queue.enqueue(&mut *tx, &welcome).await?;
    tx.commit().await?;
    Ok(job.id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("set DATABASE_URL"))?;
    let email = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "someone@example.com".to_owned());
    let queue = Queue::new(PgPool::connect(&url).await?);
    queue.migrate().await?;
    create_users_table(queue.pool()).await?;
    let id = sign_up(&queue, &email).await?;
    println!("signed up {email}; the welcome email is job {id}");
    Ok(())
}
