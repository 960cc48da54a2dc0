//! What every request handler shares, and how a handler borrows it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest};
use ring::rand::SystemRandom;

use crate::domain::clients::ClientsFile;
use crate::domain::clock::Clock;
use crate::domain::jwt::JwtVerifier;
use crate::domain::policy::TokenPolicy;
use crate::http::answers::Answers;
use crate::http::audit::AuditRequests;
use crate::http::error::ApiError;
use crate::http::limits::RequestLimits;
use crate::idp::KeySource;
use crate::store::error::StoreError;
use crate::store::Store;

/// What every request handler shares.
pub struct AppState {
    pub store: Store,
    /// Remembered verify and status answers; the store's writes keep them exact.
    pub answers: Arc<Answers>,
    pub jwt: Arc<JwtVerifier>,
    /// Fetches the identity provider's keys, when they come from a URL.
    pub idp: Option<KeySource>,
    pub rng: SystemRandom,
    pub clock: Clock,
    pub policy: TokenPolicy,
    pub limits: RequestLimits,
    /// `/readyz`'s recent probe result.
    pub readiness: Readiness,
    /// `verify.api_key_header`: a header that may carry the bare token.
    pub api_key_header: Option<HeaderName>,
    /// The OAuth routes' clients and body cap; `None` (the routes answer
    /// 404) without `introspection.clients_file`.
    pub oauth: Option<OAuthClients>,
    /// What audit events record of a request.
    pub audit: AuditRequests,
    /// Days audit events are kept (`audit.retention_days`).
    pub audit_retention_days: u64,
    /// `admin.token_file`'s secret; `None`: no deprovisioning route.
    pub admin_secret: Option<crate::domain::admin::AdminSecret>,
}

/// What the `/oauth2/` routes need besides the store.
#[derive(Debug)]
pub struct OAuthClients {
    /// `introspection.clients_file`, re-read by [`ClientsFile::reload`].
    pub clients: ClientsFile,
    /// `limits.max_body_bytes`: the largest form accepted.
    pub max_body_bytes: usize,
}

/// What [`AppState::count_expiring`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiring {
    /// Live tokens that stop verifying within the window.
    pub soon: u64,
    /// Tokens past `tokens.max_age_days`, to be removed.
    pub expired: u64,
}

/// The window of `agent_tokens_tokens_expiring_within_7d`.
pub const EXPIRING_WINDOW_SECS: u64 = 7 * 86_400;

impl AppState {
    /// Live tokens that stop verifying within [`EXPIRING_WINDOW_SECS`],
    /// and tokens past `tokens.max_age_days` still stored: without that
    /// setting only grace windows end (a range read); with it, every
    /// token is assessed (a read of the index).
    pub fn count_expiring(&self) -> Result<Expiring, StoreError> {
        let now = self.clock.now();
        let until = now.saturating_add(EXPIRING_WINDOW_SECS);
        if self.policy.max_age_secs.is_none() {
            let soon = self
                .store
                .grace_ending(now.saturating_add(1), until.saturating_add(1))?;
            return Ok(Expiring { soon, expired: 0 });
        }
        let expired = std::cell::Cell::new(0u64);
        let soon = self.store.count_tokens(|entry| {
            match self.policy.assess(entry.created_at, entry.grace_until, now) {
                Ok(active) => active.expires_at.is_some_and(|t| t <= until),
                Err(crate::domain::policy::Inactive::Expired) => {
                    expired.set(expired.get() + 1);
                    false
                }
                Err(_) => false,
            }
        })?;
        Ok(Expiring {
            soon,
            expired: expired.get(),
        })
    }

    /// Re-reads `introspection.clients_file`: a SIGHUP hook (see
    /// `crate::http::reload`, which logs the outcome). A file that fails to
    /// read or parse changes nothing; the error names key and line, never a secret.
    pub fn reload(&self) -> crate::http::reload::ReloadResult {
        let Some(oauth) = &self.oauth else {
            return Ok("not configured".to_owned());
        };
        let path = oauth.clients.path().display();
        match oauth.clients.reload() {
            Ok(n) => Ok(format!("{path}: {n} client(s)")),
            Err(e) => Err(format!("{e} The previous clients stay in force.")),
        }
    }
}

/// The shared state, borrowed from the request. The hot handlers use this
/// rather than extracting `web::Data`, which clones an `Arc` whose count
/// every worker writes on every request.
pub fn app_state(req: &HttpRequest) -> Result<&AppState, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .map(|data| data.get_ref())
        .ok_or(ApiError::Internal("application state is not registered"))
}

/// How long a successful durable-write probe answers for `/readyz`.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// `/readyz` needs no credential: a flood of probes must not become a
/// flood of disk syncs. A success is reused for [`PROBE_REUSE`]; a failed
/// store answers not-ready at once, without a probe.
#[derive(Debug, Default)]
pub struct Readiness {
    /// When the last probe succeeded; callers queue here while one probes.
    last_success: tokio::sync::Mutex<Option<Instant>>,
}

impl Readiness {
    pub async fn check(&self, store: &Store, now: u64) -> Result<(), StoreError> {
        if store.refuses_writes() {
            return Err(StoreError::Recovering);
        }
        let mut last = self.last_success.lock().await;
        if last.is_some_and(|at| at.elapsed() < PROBE_REUSE) {
            return Ok(());
        }
        store.probe_write(now).await?;
        *last = Some(Instant::now());
        Ok(())
    }
}
