//! The App factory shared by `serve` and the tests: open storage, load keys,
//! bind (port 0 works), and run until stopped.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use actix_http::body::MessageBody;
use actix_http::error::DispatchError;
use actix_http::HttpService;
use actix_server::{GracefulShutdownSignal, Server, ServerHandle};
use actix_service::{
    fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_web::dev::{AppConfig, Service, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Condition, Logger};
use actix_web::{web, App};
use ring::rand::SystemRandom;
use sd_notify::NotifyState;
use tokio::net::TcpStream;

use crate::config::{ConfigError, Settings, StorageBackend};
use crate::domain::admin::AdminSecret;
use crate::domain::clients::ClientsFile;
use crate::domain::clock::Clock;
use crate::domain::jwt::JwtVerifier;
use crate::domain::policy::TokenPolicy;
use crate::http::answers::Answers;
use crate::http::audit::{AuditFile, AuditRequests, Listeners};
use crate::http::conn::{Deadlines, RequestPhase, TimedStream};
use crate::http::limits::RequestLimits;
use crate::http::reload::{self, Reloads};
use crate::http::state::{AppState, OAuthClients, Readiness};
use crate::http::{openapi, routes};
use crate::idp::{self, KeySource};
use crate::metrics::METRICS;
use crate::store::error::StoreError;
use crate::store::postgres::PgSettings;
use crate::store::records::ChangeListener;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store at {} is in use (is another agent-tokens running on it?); every server needs its own storage.path", path.display())]
    InUse { path: std::path::PathBuf },
    #[error("cannot listen on {addr}: {source}. Set {key} (or {env}) to a free address.")]
    Bind {
        key: &'static str,
        env: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Server(#[source] std::io::Error),
    #[error("cannot start fetching the identity provider's keys: {0}")]
    KeyFetcher(#[source] std::io::Error),
}

/// A bound, ready-to-run server.
pub struct Application {
    port: u16,
    metrics_port: Option<u16>,
    server: Server,
    state: Arc<AppState>,
    reloads: Reloads,
}

impl Application {
    /// Validates settings, loads keys, opens the store and binds `server.bind`.
    pub fn build(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Clock::system())
    }

    /// [`Application::build`] with a clock tests can move.
    pub fn build_with_clock(settings: &Settings, clock: Clock) -> Result<Self, StartupError> {
        settings.validate()?;
        let jwt = Arc::new(JwtVerifier::from_settings(&settings.jwt)?);
        let idp_plan = idp::Plan::from_settings(settings)?;
        let oauth = match &settings.introspection.clients_file {
            Some(path) => Some(OAuthClients {
                clients: ClientsFile::load(path)?,
                max_body_bytes: usize::try_from(settings.limits.max_body_bytes)
                    .unwrap_or(usize::MAX),
            }),
            None => None,
        };
        // Bind before opening the store so a busy port fails fast and cleanly.
        let listener = bind(
            settings.bind_addr()?,
            "server.bind",
            "AGENT_TOKENS__SERVER__BIND",
        )?;
        let metrics_listener = match settings.metrics_bind_addr()? {
            Some(addr) => Some(bind(
                addr,
                "server.metrics_bind",
                "AGENT_TOKENS__SERVER__METRICS_BIND",
            )?),
            None => None,
        };
        let postgres = settings.storage.backend == StorageBackend::Postgres;
        let answers = Arc::new(if postgres {
            Answers::off()
        } else {
            Answers::default()
        });
        let mut heard = Arc::clone(&answers) as Arc<dyn ChangeListener>;
        if let Some(path) = &settings.audit.file {
            let file = Arc::new(AuditFile::open(path)?) as Arc<dyn ChangeListener>;
            heard = Arc::new(Listeners(vec![heard, file]));
        }
        let opened = if postgres {
            // No tokens there, but the admin socket and the identity
            // provider's saved keys live in storage.path.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&settings.storage.path)
            .map_err(|e| StartupError::Store(StoreError::layout(&settings.storage.path)(e)))?;
            let pg = PgSettings {
                url: settings.storage.postgres_url()?,
                pool_size: settings.storage.pool_size,
            };
            Store::open_postgres(&pg, heard)
        } else {
            Store::open(&settings.storage.path, settings.storage.cache_mb, heard)
        };
        let store = opened.map_err(|e| match e {
            StoreError::InUse { path } => StartupError::InUse { path },
            e => StartupError::Store(e),
        })?;
        // After the store: the saved key set lives in its directory.
        let idp = match idp_plan {
            Some(plan) => {
                Some(KeySource::start(plan, Arc::clone(&jwt)).map_err(StartupError::KeyFetcher)?)
            }
            None => {
                METRICS.jwt_key_set(jwt.key_count(), clock.now());
                None
            }
        };
        let reloads = Reloads::default();
        reloads.register("JWT keys", reload::jwt_keys(Arc::clone(&jwt), idp.clone()));
        let state = Arc::new(AppState {
            store,
            answers,
            jwt,
            idp,
            rng: SystemRandom::new(),
            clock,
            policy: TokenPolicy::from_settings(&settings.tokens),
            limits: RequestLimits::new(&settings.limits, &settings.rate_limit),
            readiness: Readiness::default(),
            api_key_header: settings.verify.api_key_header_name(),
            oauth,
            audit: AuditRequests::from_settings(&settings.audit, &settings.rate_limit),
            audit_retention_days: settings.audit.retention_days,
            admin_secret: settings.admin_secret()?.as_ref().map(AdminSecret::new),
        });
        if state.oauth.is_some() {
            let weak = Arc::downgrade(&state);
            reloads.register("introspection.clients_file", move || {
                let state = weak.upgrade();
                Box::pin(async move {
                    state.map_or_else(|| Ok("the server is stopping".to_owned()), |s| s.reload())
                })
            });
        }
        Self::serve(listener, metrics_listener, state, reloads, settings)
    }

    fn serve(
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        state: Arc<AppState>,
        reloads: Reloads,
        settings: &Settings,
    ) -> Result<Self, StartupError> {
        let server_settings = &settings.server;
        let limits = &settings.limits;
        let local = listener.local_addr().map_err(StartupError::Server)?;
        let data = web::Data::from(Arc::clone(&state));
        let metrics_on_main = metrics_listener.is_none();
        let oauth_on = state.oauth.is_some();
        let admin_on = state.admin_secret.is_some();
        let access_log = server_settings.access_log;
        LazyLock::force(&METRICS);
        // Built from actix-server and actix-http rather than actix-web's
        // HttpServer, which cannot wrap the accepted stream (see `conn`).
        let mut builder = actix_server::Server::build()
            // Signals are ours (see `run_until_signalled`): systemd must hear
            // STOPPING=1 before the listener closes.
            .disable_signals()
            .shutdown_timeout(server_settings.shutdown_timeout_secs)
            .max_concurrent_connections(limits.max_connections);
        if server_settings.workers > 0 {
            builder = builder.workers(server_settings.workers);
        }
        let http = HttpSettings {
            deadlines: Deadlines::from_limits(limits),
            keep_alive: Duration::from_secs(limits.keep_alive_secs),
            local,
            shutdown: builder.graceful_shutdown_signal(),
        };
        let mut builder = builder
            .listen("agent-tokens", listener, {
                let http = http.clone();
                let data = data.clone();
                move || {
                    let data = data.clone();
                    let app = App::new()
                        .app_data(data)
                        // Outermost, so it times everything and sees the final status.
                        .wrap_fn(|req, srv| {
                            let started = Instant::now();
                            let method = req.method().clone();
                            let call = srv.call(req);
                            async move {
                                let res = call.await?;
                                // Hot routes are named after their pattern: no allocation.
                                let request = res.request();
                                let pattern;
                                let route = match request.match_name() {
                                    Some(name) => name,
                                    None => {
                                        pattern = request.match_pattern();
                                        pattern.as_deref().unwrap_or("unmatched")
                                    }
                                };
                                METRICS.observe_request(
                                    route,
                                    &method,
                                    res.status().as_u16(),
                                    started.elapsed(),
                                );
                                Ok(res)
                            }
                        })
                        // No headers (Authorization) and no query string (a token
                        // sent as `?access_token=`) ever reach the log.
                        .wrap(Condition::new(
                            access_log,
                            Logger::new("%a \"%{request}xi\" %s %b %Dms")
                                .custom_request_replace("request", request_line_without_query),
                        ))
                        .wrap_fn(in_request_phase)
                        .configure(|cfg| routes::configure(cfg, metrics_on_main))
                        .configure(|cfg| {
                            if oauth_on {
                                routes::oauth2::configure(cfg);
                            }
                            if admin_on {
                                routes::admin::configure(cfg);
                            }
                        })
                        .configure(openapi::configure)
                        .default_service(web::to(routes::not_found));
                    http.service(app)
                }
            })
            .map_err(StartupError::Server)?;
        let mut metrics_port = None;
        if let Some(listener) = metrics_listener {
            let local = listener.local_addr().map_err(StartupError::Server)?;
            metrics_port = Some(local.port());
            let http = HttpSettings { local, ..http };
            builder = builder
                .listen("agent-tokens-metrics", listener, move || {
                    let app = App::new()
                        .app_data(data.clone())
                        .wrap_fn(in_request_phase)
                        .configure(routes::configure_private)
                        .default_service(web::to(routes::not_found));
                    http.service(app)
                })
                .map_err(StartupError::Server)?;
        }
        let server = builder.run();
        Ok(Self {
            port: local.port(),
            metrics_port,
            server,
            state,
            reloads,
        })
    }

    /// The bound port (useful with `127.0.0.1:0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the private `server.metrics_bind` listener, if set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// The shared state, for what serves beside HTTP (the admin socket);
    /// weak, so it never keeps the store open past the stop.
    pub fn state(&self) -> Weak<AppState> {
        Arc::downgrade(&self.state)
    }

    /// What `SIGHUP` runs; register a part's own reload here. Tests run it directly.
    pub fn reloads(&self) -> Reloads {
        self.reloads.clone()
    }

    /// A handle to stop the server (`stop(true)` finishes in-flight requests).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM or SIGINT (or the handle), telling systemd
    /// READY=1 now and STOPPING=1 when a signal arrives. In-flight requests
    /// finish within `server.shutdown_timeout_secs`; then the store closes.
    /// `on_ready` runs once signals are handled and before READY=1 (it
    /// announces the port: whoever reads it may signal us at once).
    pub async fn run_until_signalled(self, on_ready: impl FnOnce(u16)) -> Result<(), StartupError> {
        let handle = self.handle();
        // Installed before READY=1: a SIGTERM right after it must not find
        // the default disposition (which would kill us mid-request).
        let shutdown_signal = shutdown_signal();
        let signals = tokio::spawn(async move {
            let signal = shutdown_signal.await;
            log::info!("{signal}: stopping (finishing in-flight requests)");
            notify_systemd(&[NotifyState::Stopping]);
            handle.stop(true).await;
        });
        // Also before READY=1: SIGHUP's default disposition ends the process.
        let reloader = tokio::spawn(reload_on_hangup(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
            self.reloads.clone(),
        ));
        on_ready(self.port);
        notify_systemd(&[NotifyState::Ready]);
        let result = self.run_until_stopped().await;
        signals.abort();
        reloader.abort();
        result
    }

    /// Serves until stopped (via the handle), then closes the
    /// store here: its final flush has run and its lock is released when
    /// this returns.
    pub async fn run_until_stopped(self) -> Result<(), StartupError> {
        let Application { server, state, .. } = self;
        let sweeper = tokio::spawn(expire_grace_periodically(Arc::downgrade(&state)));
        let expiring = tokio::spawn(count_expiring_periodically(Arc::downgrade(&state)));
        let served = server.await.map_err(StartupError::Server);
        sweeper.abort();
        expiring.abort();
        let _ = expiring.await;
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

fn bind(
    addr: SocketAddr,
    key: &'static str,
    env: &'static str,
) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).map_err(|source| StartupError::Bind {
        key,
        env,
        addr: addr.to_string(),
        source,
    })
}

/// What every listener's HTTP layer shares.
#[derive(Clone)]
struct HttpSettings {
    deadlines: Deadlines,
    keep_alive: Duration,
    local: SocketAddr,
    shutdown: GracefulShutdownSignal,
}

impl HttpSettings {
    /// HTTP/1 over timed streams (see `conn`) in front of `app`.
    fn service<T, B>(
        &self,
        app: App<T>,
    ) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = DispatchError, InitError = ()>
    where
        T: ServiceFactory<
                ServiceRequest,
                Config = (),
                Response = ServiceResponse<B>,
                Error = actix_web::Error,
                InitError = (),
            > + 'static,
        B: MessageBody + 'static,
    {
        let deadlines = self.deadlines;
        let shutdown = self.shutdown.clone();
        let http = HttpService::<TimedStream, _, _>::build()
            .keep_alive(self.keep_alive)
            // The timed stream bounds every request's head, the first one
            // included; actix's own timer (first request only) would answer
            // 408 on a connection an HTTP client opened and kept unused.
            .client_request_timeout(Duration::ZERO)
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(self.local)
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .on_connect_ext(|io: &TimedStream, data| {
                data.insert(io.clock());
            })
            // The app reads neither the host nor the local address from
            // its config (URLs in answers are relative).
            .h1(map_config(
                app.into_factory()
                    .map_err(|e: actix_web::Error| e.error_response()),
                |_| AppConfig::default(),
            ));
        fn_service(move |io: TcpStream| {
            let peer = io.peer_addr().ok();
            std::future::ready(Ok::<_, DispatchError>((
                TimedStream::new(io, deadlines),
                peer,
            )))
        })
        .and_then(http)
    }
}

/// The access log's request line: method, path and version, never the query.
fn request_line_without_query(req: &actix_web::dev::ServiceRequest) -> String {
    format!("{} {} {:?}", req.method(), req.path(), req.version())
}

/// How often rotated-out tokens past their grace window are swept away (and
/// idle clients forgotten by the rate limiter).
const GRACE_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Sweeps expired grace entries and audit events past their retention at
/// start and then periodically, until the app is gone. Verify refuses
/// expired grace tokens by time anyway; this keeps storage bounded.
async fn expire_grace_periodically(state: Weak<AppState>) {
    loop {
        let Some(app) = state.upgrade() else { return };
        match app.store.expire_grace(app.clock.now()).await {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} rotated-out token(s) past their grace window"),
            Err(e) => log::error!("cannot remove expired grace entries: {e}"),
        }
        app.limits.forget_idle_clients();
        let kept_secs = app.audit_retention_days.saturating_mul(86_400);
        match app
            .store
            .sweep_audit(app.clock.now().saturating_sub(kept_secs))
            .await
        {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} audit event(s) past audit.retention_days"),
            Err(e) => log::error!("cannot remove old audit events: {e}"),
        }
        drop(app);
        tokio::time::sleep(GRACE_SWEEP_INTERVAL).await;
    }
}

/// How often the tokens expiring within 7 days are counted (a read of the
/// whole index when `tokens.max_age_days` is set), and tokens past that
/// age removed.
const EXPIRING_COUNT_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps `agent_tokens_tokens_expiring_within_7d` current and removes
/// tokens past `tokens.max_age_days` (each leaves an `expired` event; verify
/// refuses them by time before that), off the request threads, at start
/// and then every [`EXPIRING_COUNT_INTERVAL`].
async fn count_expiring_periodically(state: Weak<AppState>) {
    loop {
        let counting = state.clone();
        let counted =
            tokio::task::spawn_blocking(move || counting.upgrade().map(|app| app.count_expiring()))
                .await;
        match counted {
            Ok(Some(Ok(found))) => {
                METRICS
                    .tokens_expiring
                    .set(i64::try_from(found.soon).unwrap_or(i64::MAX));
                if found.expired > 0 {
                    remove_expired(&state).await;
                }
            }
            Ok(Some(Err(e))) => log::warn!("cannot count the tokens expiring soon: {e}"),
            Ok(None) | Err(_) => return,
        }
        tokio::time::sleep(EXPIRING_COUNT_INTERVAL).await;
    }
}

/// Revokes every token created `tokens.max_age_days` ago or earlier, as
/// the server (`expired` events), through the store's revoke-all.
async fn remove_expired(state: &Weak<AppState>) {
    let Some(app) = state.upgrade() else { return };
    let Some(max_age) = app.policy.max_age_secs else {
        return;
    };
    let now = app.clock.now();
    // Expired when now >= created_at + max_age, so created before this.
    let before = now.saturating_sub(max_age).saturating_add(1);
    let system = crate::store::audit::Audit::by(crate::store::audit::Actor::System);
    match app.store.revoke_all(Some(before), now, &system).await {
        Ok(0) => {}
        Ok(n) => log::info!("removed {n} token(s) past tokens.max_age_days"),
        Err(e) => log::error!("cannot remove tokens past tokens.max_age_days: {e}"),
    }
}

/// Installs SIGTERM (systemd's stop) and SIGINT (Ctrl-C) handlers now and
/// returns a future that resolves, with the signal's name, when one arrives.
fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match streams {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                log::error!("cannot install signal handlers; stop the process with SIGKILL");
                std::future::pending().await
            }
        }
    }
}

/// Runs the reload hooks on every SIGHUP (`systemctl reload`).
async fn reload_on_hangup(hangups: std::io::Result<tokio::signal::unix::Signal>, reloads: Reloads) {
    let mut hangups = match hangups {
        Ok(hangups) => hangups,
        Err(e) => {
            log::error!("cannot handle SIGHUP ({e}); restart the service to reload keys");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        log::info!("SIGHUP: reloading");
        reloads.run().await;
    }
}

/// Tells systemd about our state when run as a `Type=notify` unit; a no-op otherwise.
fn notify_systemd(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(state) {
            log::warn!("cannot notify systemd: {e}");
        }
    }
}

/// Marks the request as the app's own time on its connection (see `conn`)
/// until its answer is ready; both listeners' apps wrap their routes in it.
fn in_request_phase<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let phase = RequestPhase::start(&req);
    let call = srv.call(req);
    async move {
        let res = call.await;
        drop(phase);
        res
    }
}
