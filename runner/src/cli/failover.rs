//! Database URLs naming several hosts, as libpq takes them
//! (`postgres://user@db1:5432,db2:5432/jobs?target_session_attrs=read-write`): the pool
//! connects to the first host that answers (with `read-write`, the first that accepts writes),
//! and follows the primary when a failover promotes another host.
//!
//! sqlx connects to one host. A [`Follower`] keeps one connection of its own to the host in
//! use and looks at it every second; when it fails, or stops accepting writes, the follower
//! looks for the first host that qualifies and points the pool's new connections there. The
//! pool then drops every connection opened before the move as it is next acquired (the old
//! host may be up, and read-only), and refuses a new connection to a host that does not
//! accept writes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// How often the follower looks at the host in use.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a look at one host may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The hosts of a URL naming several, and what a host must be to be used.
#[derive(Debug, Clone)]
pub struct Hosts {
    candidates: Vec<PgConnectOptions>,
    read_write: bool,
    /// When the follower last moved to another host.
    moved_at: Arc<Mutex<Option<Instant>>>,
}

impl Hosts {
    /// The hosts `url` names, if it names more than one or sets `target_session_attrs`;
    /// `None` for a plain URL, which sqlx takes as it is.
    pub fn parse(url: &str) -> anyhow::Result<Option<Self>> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(None);
        };
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (user, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), authority),
        };
        let (tail, read_write) = without_target_session_attrs(tail)?;
        if !hosts.contains(',') && read_write.is_none() {
            return Ok(None);
        }
        let candidates = hosts
            .split(',')
            .map(|host| {
                format!("{scheme}://{user}{host}{tail}")
                    .parse::<PgConnectOptions>()
                    .with_context(|| format!("host {host:?} of DATABASE_URL is not valid"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(Self {
            candidates,
            read_write: read_write.unwrap_or(false),
            moved_at: Arc::default(),
        }))
    }

    /// Every host's options changed by `change` (the application name, a pooler's options).
    pub fn map(mut self, change: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Self {
        self.candidates = self.candidates.into_iter().map(change).collect();
        self
    }

    /// The first host that qualifies, and its index: from the first host, or from the one
    /// after host `after` round to it.
    pub async fn find(&self, after: Option<usize>) -> anyhow::Result<(usize, PgConnectOptions)> {
        let start = after.map_or(0, |i| i + 1);
        let count = self.candidates.len();
        let mut errors = Vec::new();
        for index in (start..start + count).map(|i| i % count) {
            let options = &self.candidates[index];
            match self.check(options).await {
                Ok(()) => return Ok((index, options.clone())),
                Err(error) => errors.push(format!("{}: {error:#}", describe(options))),
            }
        }
        bail!("no host of DATABASE_URL qualifies: {}", errors.join("; "))
    }

    /// Pool options that drop connections opened before the follower last moved, and refuse
    /// a new connection to a host that does not qualify.
    pub fn pool_options(&self, options: PgPoolOptions) -> PgPoolOptions {
        let moved_at = self.moved_at.clone();
        let options = options.before_acquire(move |_, connection| {
            let moved_at = *moved_at.lock().expect("lock poisoned");
            let opened_since = moved_at.is_none_or(|at| connection.age < at.elapsed());
            Box::pin(async move { Ok(opened_since) })
        });
        if !self.read_write {
            return options;
        }
        options.after_connect(|conn, _| Box::pin(async move { accepts_writes(conn).await }))
    }

    async fn check(&self, options: &PgConnectOptions) -> anyhow::Result<()> {
        let look = async {
            let mut conn = options.connect().await?;
            let checked = self.check_connection(&mut conn).await;
            let _ = conn.close().await;
            checked
        };
        tokio::time::timeout(CHECK_TIMEOUT, look)
            .await
            .context("no answer")?
    }

    async fn check_connection(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.read_write {
            accepts_writes(conn).await?;
        } else {
            conn.ping().await?;
        }
        Ok(())
    }
}

/// An error unless the server on `conn` accepts writes (libpq's `read-write`).
async fn accepts_writes(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(&mut *conn)
        .await?;
    if read_only == "on" {
        return Err(sqlx::Error::Configuration(
            "this host does not accept writes (a standby); target_session_attrs=read-write".into(),
        ));
    }
    Ok(())
}

/// `tail` (path and query) without `target_session_attrs`, and whether that asked for
/// `read-write` (`None` if absent).
fn without_target_session_attrs(tail: &str) -> anyhow::Result<(String, Option<bool>)> {
    let Some((path, query)) = tail.split_once('?') else {
        return Ok((tail.to_owned(), None));
    };
    let mut kept = Vec::new();
    let mut read_write = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                read_write = Some(match value {
                    "any" => false,
                    "read-write" | "primary" => true,
                    other => bail!(
                        "target_session_attrs={other} is not supported: use read-write (or \
                         primary) to follow the primary, or any"
                    ),
                });
            }
            _ => kept.push(pair),
        }
    }
    let tail = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    Ok((tail, read_write))
}

/// Follows the primary: looks at the host in use every second and points the pool at the
/// first host that qualifies when it stops qualifying.
pub struct Follower {
    hosts: Hosts,
    pool: PgPool,
    current: usize,
}

impl Follower {
    /// A follower of `hosts` for `pool`, which connects to host `current`.
    pub fn new(hosts: Hosts, pool: PgPool, current: usize) -> Self {
        Self {
            hosts,
            pool,
            current,
        }
    }

    /// Runs until `stop` fires.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut watching: Option<PgConnection> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            if self.still_qualifies(&mut watching).await {
                continue;
            }
            watching = None;
            match self.hosts.find(Some(self.current)).await {
                Ok((index, options)) if index != self.current => {
                    tracing::warn!(
                        from = describe(&self.hosts.candidates[self.current]),
                        to = describe(&options),
                        "the database host in use stopped qualifying; new connections go to \
                         the next host that does"
                    );
                    self.current = index;
                    self.pool.set_connect_options(options);
                    *self.hosts.moved_at.lock().expect("lock poisoned") = Some(Instant::now());
                }
                // The host in use qualifies again (the follower's own connection had failed).
                Ok(_) => {}
                Err(error) => tracing::warn!(error = format!("{error:#}"), "no database host"),
            }
        }
    }

    /// Whether the host in use still qualifies, on the follower's own connection to it.
    async fn still_qualifies(&self, watching: &mut Option<PgConnection>) -> bool {
        let options = &self.hosts.candidates[self.current];
        let look = async {
            if watching.is_none() {
                *watching = Some(options.connect().await?);
            }
            let conn = watching.as_mut().expect("connected above");
            self.hosts.check_connection(conn).await
        };
        matches!(tokio::time::timeout(CHECK_TIMEOUT, look).await, Ok(Ok(())))
    }
}

/// `host:port (user, database)` of `options`, for messages.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{} (user {}, database {})",
        options.get_host(),
        options.get_port(),
        options.get_username(),
        options.get_database().unwrap_or(options.get_username())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_several_hosts_gives_one_per_host() {
        let hosts = Hosts::parse(
            "postgres://u:p@127.0.0.1:5433,127.0.0.2:5434/jobs?target_session_attrs=read-write\
             &sslmode=disable",
        )
        .unwrap()
        .expect("several hosts");
        assert!(hosts.read_write);
        let described: Vec<String> = hosts.candidates.iter().map(describe).collect();
        assert_eq!(
            described,
            [
                "127.0.0.1:5433 (user u, database jobs)",
                "127.0.0.2:5434 (user u, database jobs)"
            ]
        );
    }

    #[test]
    fn a_plain_url_is_left_to_sqlx() {
        assert!(
            Hosts::parse("postgres://u@127.0.0.1:5432/jobs")
                .unwrap()
                .is_none()
        );
        let one = Hosts::parse("postgres://127.0.0.1/jobs?target_session_attrs=any")
            .unwrap()
            .expect("target_session_attrs is ours to take");
        assert!(!one.read_write);
        assert_eq!(one.candidates.len(), 1);
    }

    #[test]
    fn unsupported_session_attrs_are_refused() {
        let error = Hosts::parse("postgres://a,b/x?target_session_attrs=standby").unwrap_err();
        assert!(error.to_string().contains("not supported"), "{error}");
    }
}
