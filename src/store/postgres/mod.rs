//! PostgreSQL as the shared store of several stateless replicas
//! (`storage.backend = "postgres"`; docs/postgresql.md).
//!
//! Every replica keeps the guarantees of [`crate::store`] through the
//! database, never through memory of its own:
//! - each change is one transaction, committed with `synchronous_commit =
//!   on` before it is answered;
//! - a user's changes take a transaction-scoped advisory lock on the user
//!   id, and `UNIQUE (user_id, slot)` keeps one current token and one
//!   token in grace per user whatever replicas race;
//! - audit events are inserted in the transaction of their change.
//!
//! The client is tokio-postgres with deadpool's pool, on a small runtime
//! of its own: the connections live there whichever worker asks, and the
//! threads that cannot await (the stamp writer, start, the offline tools)
//! wait on it.

mod offline;
mod queries;
mod schema;
mod snapshot;

pub use offline::PgOffline;
pub use schema::SCHEMA_VERSION;
pub use snapshot::Snapshot;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::{Host, SslMode};

use crate::store::error::StoreError;
use crate::store::records::{ChangeListener, Changes};

/// How long one operation may take, connection included, before it is
/// answered as unavailable: verify fails closed instead of hanging.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a free connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What opening PostgreSQL needs (from `[storage]`).
pub struct PgSettings {
    /// `storage.url` or `storage.url_file`'s content.
    pub url: SecretString,
    pub pool_size: usize,
}

/// An open pool of connections to the database.
pub struct Pg {
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    listener: Arc<dyn ChangeListener>,
    target: String,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("target", &self.target).finish()
    }
}

/// A bad `storage.url`, said without repeating it (it may hold a password).
fn bad_url(why: &str) -> StoreError {
    StoreError::Setting(format!(
        "storage.url {why} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
    ))
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// The client's settings from the URL, with what every connection needs:
/// synchronous commit, TLS required off the machine, time limits.
/// Returns them with a description safe to log (hosts and database only).
pub fn client_config(url: &SecretString) -> Result<(tokio_postgres::Config, String), StoreError> {
    let mut config: tokio_postgres::Config = url
        .expose_secret()
        .parse()
        .map_err(|_| bad_url("is not a valid PostgreSQL URL"))?;
    if config.get_hosts().is_empty() {
        return Err(bad_url("names no host"));
    }
    if config.get_dbname().is_none() {
        return Err(bad_url("names no database"));
    }
    let loopback = config.get_hosts().iter().all(is_loopback);
    match config.get_ssl_mode() {
        // "prefer" (the default) would fall back to plain text: off the
        // machine, the token hashes and the password must not travel so.
        SslMode::Prefer if !loopback => {
            config.ssl_mode(SslMode::Require);
        }
        SslMode::Disable if !loopback => log::warn!(
            "storage.url sets sslmode=disable for a host that is not loopback: the connection is not encrypted"
        ),
        _ => {}
    }
    // Acknowledged means committed and flushed (and on synchronous
    // standbys, if the cluster has them), whatever the server's default.
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=on"),
        _ => "-c synchronous_commit=on".to_owned(),
    };
    config.options(&options);
    if config.get_application_name().is_none() {
        config.application_name("agent-tokens");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A peer that vanished without closing is noticed within a minute.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    let target = format!(
        "{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    );
    Ok((config, target))
}

/// TLS with the system's trusted roots (Debian's ca-certificates).
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the parser refuses is skipped, as a browser would.
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Setting(format!("cannot set up TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Whether a database error means the server cannot serve now (shutting
/// down, starting, out of connections) rather than a refused query.
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
}

/// Maps a client error; the text never holds the URL.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if is_unavailable_code(db.code().code()) => {
            StoreError::Unavailable(db.message().to_owned())
        }
        Some(db) => StoreError::Postgres(format!("{} ({})", db.message(), db.code().code())),
        None if is_connection_error(&e) => StoreError::Unavailable(e.to_string()),
        None => StoreError::Postgres(e.to_string()),
    }
}

/// The connection failed, not the query: closed, refused, timed out.
fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    let text = e.to_string();
    e.is_closed()
        || e.source().is_some_and(|s| s.is::<std::io::Error>())
        || [
            "error connecting",
            "TLS handshake",
            "timeout",
            "connection closed",
        ]
        .iter()
        .any(|what| text.contains(what))
}

pub(crate) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) => {
            StoreError::Unavailable("no connection could be made or freed in time".into())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// For `check-config`: connects once, migrating nothing, and says what
/// answered: hosts and database, server version, schema version (0 for a
/// database the server has not set up yet).
pub fn check_connection(settings: &PgSettings) -> Result<String, StoreError> {
    let (config, target) = client_config(&settings.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot start the client: {e}")))?;
    let tls = tls()?;
    runtime.block_on(async move {
        let connect = tokio::time::timeout(OP_TIMEOUT, config.connect(tls));
        let (client, connection) = match connect.await {
            Ok(result) => result.map_err(pg_error)?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no answer within {OP_TIMEOUT:?}"
                )))
            }
        };
        let driver = tokio::spawn(connection);
        let version: String = client
            .query_one("SELECT current_setting('server_version')", &[])
            .await
            .map_err(pg_error)?
            .try_get(0)
            .map_err(pg_error)?;
        let migrated: bool = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await
            .map_err(pg_error)?
            .try_get(0)
            .map_err(pg_error)?;
        let schema = if migrated {
            schema::applied_version(&client).await?
        } else {
            0
        };
        drop(client);
        let _ = driver.await;
        schema::refuse_newer(schema)?;
        Ok(format!(
            "PostgreSQL {version} at {target} (schema version {schema} of {SCHEMA_VERSION})"
        ))
    })
}

impl Pg {
    /// Connects, migrates the schema, and keeps a pool of `pool_size`
    /// connections. `listener` hears every committed change.
    pub fn open(
        settings: &PgSettings,
        listener: Arc<dyn ChangeListener>,
    ) -> Result<Self, StoreError> {
        let (config, target) = client_config(&settings.url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("agent-tokens-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the client's threads: {e}"))
            })?;
        let manager = Manager::from_config(
            config,
            tls()?,
            ManagerConfig {
                // A connection the server closed is noticed and replaced
                // on checkout, so a restarted server is picked up alone.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Setting(format!("cannot build the connection pool: {e}")))?;
        let pg = Self {
            pool,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            listener,
            target,
        };
        let pool = pg.pool.clone();
        let found = pg.block(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await
        })?;
        log::info!(
            "PostgreSQL at {} (schema version {}, was {found}), {} connections at most",
            pg.target,
            SCHEMA_VERSION,
            settings.pool_size
        );
        Ok(pg)
    }

    /// Hosts and database, safe to show.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `op` on the client's runtime, within [`OP_TIMEOUT`].
    async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        match self
            .handle
            .spawn(tokio::time::timeout(OP_TIMEOUT, op))
            .await
        {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable(format!(
                "no answer within {OP_TIMEOUT:?}"
            ))),
            Err(e) => Err(StoreError::Unavailable(format!(
                "the query task failed: {e}"
            ))),
        }
    }

    /// [`Pg::run`] without a time limit (a revoke-all of every token).
    async fn run_unbounded<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(op).await.unwrap_or_else(|e| {
            Err(StoreError::Unavailable(format!(
                "the query task failed: {e}"
            )))
        })
    }

    /// [`Pg::run`] for a thread that cannot await. Never starts a runtime
    /// here, so it also works (blocking) inside one, as at start.
    fn block<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.block_unbounded(async move {
            match tokio::time::timeout(OP_TIMEOUT, op).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "no answer within {OP_TIMEOUT:?}"
                ))),
            }
        })
    }

    /// [`Pg::block`] without a time limit (an import of a million users).
    fn block_unbounded<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(op.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the query task failed".into()))?
    }

    fn committed(listener: &dyn ChangeListener, changes: Changes) {
        listener.committed(&changes);
        crate::metrics::METRICS.audit_events_written(changes.events.len());
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(runtime) = self.runtime.take() {
            // Also from inside another runtime (a server stopping).
            runtime.shutdown_background();
        }
    }
}
