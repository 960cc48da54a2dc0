//! The App factory shared by `serve` and the tests: open storage, load keys,
//! bind (port 0 works), and run until stopped.

use std::net::TcpListener;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{Condition, Logger};
use actix_web::{web, App, HttpServer};
use ring::rand::SystemRandom;

use crate::clock::Clock;
use crate::config::{ConfigError, Settings};
use crate::jwt::JwtVerifier;
use crate::policy::TokenPolicy;
use crate::routes;
use crate::store::{Store, StoreError};

/// What every request handler shares.
pub struct AppState {
    pub store: Store,
    pub jwt: JwtVerifier,
    pub rng: SystemRandom,
    pub clock: Clock,
    pub policy: TokenPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}. Set server.bind (or AGENT_TOKENS__SERVER__BIND) to a free address.")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
}

/// A bound, ready-to-run server.
pub struct Application {
    port: u16,
    server: Server,
    state: Arc<AppState>,
}

impl Application {
    /// Validates settings, loads keys, opens the store and binds `server.bind`.
    pub fn build(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Clock::system())
    }

    /// [`Application::build`] with a clock tests can move.
    pub fn build_with_clock(settings: &Settings, clock: Clock) -> Result<Self, StartupError> {
        settings.validate()?;
        let jwt = JwtVerifier::from_settings(&settings.jwt)?;
        let addr = settings.bind_addr()?;
        // Bind before opening the store so a busy port fails fast and cleanly.
        let listener = TcpListener::bind(addr).map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let store = Store::open(&settings.storage.path, settings.storage.cache_mb)?;
        let state = Arc::new(AppState {
            store,
            jwt,
            rng: SystemRandom::new(),
            clock,
            policy: TokenPolicy::from_settings(&settings.tokens),
        });
        Self::serve(listener, state, settings.server.access_log)
    }

    fn serve(
        listener: TcpListener,
        state: Arc<AppState>,
        access_log: bool,
    ) -> Result<Self, StartupError> {
        let port = listener.local_addr().map_err(StartupError::Server)?.port();
        let data = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // The default format has no headers: Authorization never reaches the log.
                .wrap(Condition::new(
                    access_log,
                    Logger::new("%a \"%r\" %s %b %Dms"),
                ))
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
        })
        .listen(listener)
        .map_err(StartupError::Server)?
        .run();
        Ok(Self {
            port,
            server,
            state,
        })
    }

    /// The bound port (useful with `127.0.0.1:0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server (`stop(true)` finishes in-flight requests).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped (SIGINT/SIGTERM or the handle), then closes the
    /// store here: its final flush has run and its lock is released when
    /// this returns.
    pub async fn run_until_stopped(self) -> Result<(), StartupError> {
        let Application { server, state, .. } = self;
        let sweeper = tokio::spawn(expire_grace_periodically(Arc::downgrade(&state)));
        let served = server.await.map_err(StartupError::Server);
        sweeper.abort();
        let _ = sweeper.await;
        // Worker threads drop their App (and its Arc) as they wind down; the
        // last reference must be ours so the store closes before we return.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&state) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match Arc::try_unwrap(state) {
            Ok(state) => drop(state),
            Err(_) => log::warn!("the store was still in use 10 s after shutdown"),
        }
        served
    }
}

/// How often rotated-out tokens past their grace window are swept away.
const GRACE_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Sweeps expired grace entries at start and then periodically, until the
/// app is gone. Verify refuses them by time anyway; this keeps storage bounded.
async fn expire_grace_periodically(state: Weak<AppState>) {
    loop {
        let Some(app) = state.upgrade() else { return };
        match app.store.expire_grace(app.clock.now()) {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} rotated-out token(s) past their grace window"),
            Err(e) => log::error!("cannot remove expired grace entries: {e}"),
        }
        drop(app);
        tokio::time::sleep(GRACE_SWEEP_INTERVAL).await;
    }
}
