//! The queue's way to PostgreSQL: a connection pool reaching the server directly, or through a
//! pooler in transaction mode (PgBouncer's `pool_mode = transaction`), which lends a server
//! connection for one transaction at a time.
//!
//! Through such a pooler nothing may outlive its transaction:
//! - sqlx prepares a statement (Parse, Sync) and then runs it (Bind, Execute, Sync); between the
//!   two the pooler may hand the next message to another server. So every statement with
//!   arguments runs inside a transaction, which keeps its server until it ends.
//! - Named prepared statements stay on the server they were prepared on, where another client
//!   may later meet them. The statement cache is off; statements run on the pool are unnamed,
//!   and a transaction begins by deallocating whatever an earlier client left on its server.
//! - Session state (LISTEN, session advisory locks, `SET`) is lost between transactions: what
//!   needs a session takes a direct connection of its own ([`Db::session`]), or goes without.

use std::ops::{Deref, DerefMut};

use futures_util::{StreamExt, TryStreamExt, stream};
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgListener, PgPoolOptions, PgQueryResult, PgRow, PgStatement,
};
use sqlx::{
    AssertSqlSafe, Either, Execute, Executor, PgConnection, PgPool, Postgres, SqlStr, Transaction,
};

/// What a transaction does first through a pooler: the server it got may hold named
/// statements an earlier client prepared, whose names ours could collide with.
const POOLED_FIRST: &str = "DEALLOCATE ALL";

/// How the pool reaches the server.
#[derive(Debug, Clone)]
pub enum Pooling {
    /// Each pool connection is a server session of its own.
    Direct,
    /// Through a pooler in transaction mode. `session` connects directly, for what needs a
    /// session (LISTEN, the migration lock); without it those go without or are refused.
    Transaction {
        /// A direct connection's options, if one was given.
        session: Option<Box<PgConnectOptions>>,
    },
}

/// The queue's connection pool and how it reaches the server. Every statement the queue and
/// the runner send goes through it.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    pooling: Pooling,
}

impl Db {
    /// A pool reaching the server as `pooling` says. Through a pooler, the pool's connect
    /// options must have the statement cache off ([`pooled_options`]).
    pub fn new(pool: PgPool, pooling: Pooling) -> Self {
        Self { pool, pooling }
    }

    /// The pool itself, for its statistics and options. Statements through a pooler must go
    /// through [`Db`], not this.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the pool goes through a pooler in transaction mode.
    pub fn is_pooled(&self) -> bool {
        matches!(self.pooling, Pooling::Transaction { .. })
    }

    /// How to open a session of our own (LISTEN, session locks): the pool's options when it
    /// is direct, the direct URL's through a pooler, `None` if there is none.
    pub fn session(&self) -> Option<PgConnectOptions> {
        match &self.pooling {
            Pooling::Direct => Some(self.pool.connect_options().as_ref().clone()),
            Pooling::Transaction { session } => session.as_deref().cloned(),
        }
    }

    /// A LISTEN connection: one of the pool's when direct, one of its own to the direct URL
    /// through a pooler; `None` through a pooler without a direct URL.
    pub async fn listener(&self) -> Result<Option<PgListener>, sqlx::Error> {
        let pool = match &self.pooling {
            Pooling::Direct => self.pool.clone(),
            Pooling::Transaction {
                session: Some(options),
            } => PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options.as_ref().clone()),
            Pooling::Transaction { session: None } => return Ok(None),
        };
        PgListener::connect_with(&pool).await.map(Some)
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin_with("BEGIN".to_owned()).await
    }

    /// Begins a transaction with `begin`: `BEGIN` and statements to run with it, in one round
    /// trip. They must be safe SQL: no value from outside may be formatted into them.
    pub async fn begin_with(
        &self,
        begin: String,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let begin = match self.pooling {
            Pooling::Direct => begin,
            Pooling::Transaction { .. } => format!("{begin}; {POOLED_FIRST}"),
        };
        self.pool.begin_with(AssertSqlSafe(begin)).await
    }

    /// A connection for a few statements in a row: a pool connection when direct, a
    /// transaction through a pooler. [`Statements::finish`] commits that transaction;
    /// dropping it unfinished rolls it back.
    pub async fn statements(&self) -> Result<Statements, sqlx::Error> {
        Ok(match self.pooling {
            Pooling::Direct => Statements::Direct(self.pool.acquire().await?),
            Pooling::Transaction { .. } => Statements::Pooled(self.begin().await?),
        })
    }
}

/// The options of a pool that goes through a pooler in transaction mode: no statement cache
/// (a cached statement would be looked for on whatever server the next transaction gets), and
/// no `extra_float_digits` startup parameter, which PgBouncer refuses unless told to ignore it.
pub fn pooled_options(options: PgConnectOptions) -> PgConnectOptions {
    options.statement_cache_capacity(0).extra_float_digits(None)
}

/// A connection from [`Db::statements`].
pub enum Statements {
    /// A pool connection; each statement commits by itself.
    Direct(PoolConnection<Postgres>),
    /// A transaction, committed by [`Statements::finish`].
    Pooled(Transaction<'static, Postgres>),
}

impl Statements {
    /// Commits what was done, if it was done in a transaction.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Direct(_) => Ok(()),
            Self::Pooled(tx) => tx.commit().await,
        }
    }
}

impl Deref for Statements {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Self::Direct(conn) => conn,
            Self::Pooled(tx) => tx,
        }
    }
}

impl DerefMut for Statements {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Direct(conn) => conn,
            Self::Pooled(tx) => tx,
        }
    }
}

/// A statement taken apart, to be run unnamed.
struct Unnamed {
    sql: SqlStr,
    arguments: Option<PgArguments>,
}

impl Unnamed {
    fn of<'q>(mut query: impl Execute<'q, Postgres>) -> Result<Self, BoxDynError> {
        let arguments = query.take_arguments()?;
        Ok(Self {
            sql: query.sql(),
            arguments,
        })
    }
}

impl Execute<'_, Postgres> for Unnamed {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        Ok(self.arguments.take())
    }

    fn persistent(&self) -> bool {
        false
    }
}

/// Runs `statement` in a transaction of its own, unnamed, and returns everything it returned.
/// A statement without arguments goes out as one simple-protocol message, which a pooler
/// cannot split: it runs as it is.
async fn run_pooled(
    db: Db,
    statement: Unnamed,
) -> Result<Vec<Either<PgQueryResult, PgRow>>, sqlx::Error> {
    if statement.arguments.is_none() {
        let mut conn = db.pool.acquire().await?;
        return conn.fetch_many(statement).try_collect().await;
    }
    let mut tx = db.begin().await?;
    let results = tx.fetch_many(statement).try_collect().await?;
    tx.commit().await?;
    Ok(results)
}

impl<'p> Executor<'p> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_core::stream::BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.is_pooled() {
            return (&self.pool).fetch_many(query);
        }
        let db = self.clone();
        let results = async move {
            let statement = Unnamed::of(query).map_err(sqlx::Error::Encode)?;
            let results = run_pooled(db, statement).await?;
            Ok::<_, sqlx::Error>(stream::iter(results.into_iter().map(Ok)))
        };
        stream::once(results).try_flatten().boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures_core::future::BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.is_pooled() {
            return (&self.pool).fetch_optional(query);
        }
        let db = self.clone();
        Box::pin(async move {
            let statement = Unnamed::of(query).map_err(sqlx::Error::Encode)?;
            let results = run_pooled(db, statement).await?;
            Ok(results.into_iter().find_map(|result| result.right()))
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> futures_core::future::BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        (&self.pool).prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: SqlStr,
    ) -> futures_core::future::BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>> {
        (&self.pool).describe(sql)
    }
}
