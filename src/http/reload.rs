//! `SIGHUP` (`systemctl reload`): what the running server reads again.
//!
//! Each part of the server that can reload registers a hook here when the
//! server is built. A hook either applies its new state whole or refuses it
//! and keeps the old one; either way one log line says what happened. Hooks
//! run one after another, never two reloads at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};

use crate::domain::clock::Clock;
use crate::domain::jwt::JwtVerifier;
use crate::idp::KeySource;
use crate::metrics::METRICS;

/// What a hook did (`Ok`: a short summary) or why it kept the old state.
pub type ReloadResult = Result<String, String>;
pub type ReloadFuture = Pin<Box<dyn Future<Output = ReloadResult> + Send>>;
type Hook = Arc<dyn Fn() -> ReloadFuture + Send + Sync>;

/// The registered hooks, shared by the signal handler and [`Reloads::run`].
#[derive(Clone, Default)]
pub struct Reloads {
    hooks: Arc<RwLock<Vec<(&'static str, Hook)>>>,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Reloads {
    /// Adds a hook; `what` names it in the log ("JWT keys").
    pub fn register(
        &self,
        what: &'static str,
        hook: impl Fn() -> ReloadFuture + Send + Sync + 'static,
    ) {
        self.hooks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((what, Arc::new(hook)));
    }

    /// Runs every hook in turn and logs each outcome.
    pub async fn run(&self) -> Vec<(&'static str, ReloadResult)> {
        let _one_at_a_time = self.running.lock().await;
        let hooks = self
            .hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut outcomes = Vec::new();
        for (what, hook) in hooks {
            let outcome = hook().await;
            match &outcome {
                Ok(summary) => log::info!("reload: {what}: {summary}"),
                Err(why) => log::error!("reload: {what}: {why}"),
            }
            outcomes.push((what, outcome));
        }
        outcomes
    }
}

/// The JWT keys' hook: the key files read again, the identity provider's
/// set fetched again. A file that no longer loads changes nothing.
pub fn jwt_keys(
    verifier: Arc<JwtVerifier>,
    idp: Option<KeySource>,
) -> impl Fn() -> ReloadFuture + Send + Sync + 'static {
    move || {
        let verifier = Arc::clone(&verifier);
        let idp = idp.clone();
        Box::pin(async move {
            if let Some(idp) = idp {
                return idp.refetch().await;
            }
            match verifier.reload_files() {
                Ok(Some(count)) => {
                    METRICS.jwt_key_set(count, Clock::system().now());
                    Ok(format!("{} loaded", verifier.describe_keys()))
                }
                Ok(None) => Ok("no key file to read (an inline jwt.hmac_secret)".to_owned()),
                Err(e) => Err(format!("{e} The previous keys stay in force.")),
            }
        })
    }
}
