//! Keys from an identity provider's URL: `jwt.jwks_url`, or the `jwks_uri`
//! that `jwt.oidc_discovery_url`'s discovery document names.
//!
//! The set is fetched at start (a bounded wait; if the provider is down, the
//! copy saved in `storage.path` is used), refreshed in the background as its
//! `Cache-Control` asks (clamped), fetched again at once for a token with an
//! unknown `kid` (at most once per cooldown, one fetch for every waiter), and
//! on reload. A failed fetch keeps the set in use. Every fetch runs on this
//! module's own thread, never on a request worker; the verifier's set is
//! swapped whole (`JwtVerifier::replace_keys`), so verifying takes no lock.
//! Nothing here logs a token; key ids and URLs are public.

mod fetch;
pub mod saved;
mod url;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{ConfigError, Settings};
use crate::domain::jwt::{IdpKeys, JwtVerifier};
use crate::metrics::METRICS;
pub use fetch::{FetchError, FETCH_TIMEOUT, MAX_ANSWER_BYTES};

/// Freshness used when the JWK set's answer says nothing.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// `Cache-Control: max-age` is clamped to this range.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// After a failed fetch, the next try comes this soon, then twice as late
/// each time, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Tokens with unknown key ids cause at most one fetch per this long.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(30);
/// One refresh: the discovery document and the JWK set.
const REFRESH_DEADLINE: Duration = Duration::from_secs(2 * FETCH_TIMEOUT.as_secs() + 1);

/// Where the keys are published.
#[derive(Debug, Clone)]
enum Location {
    Jwks(Url),
    /// The discovery document's URL.
    Discovery(Url),
}

/// What an identity-provider key source needs, checked from the settings.
pub struct Plan {
    location: Location,
    /// The configured URL, as the saved copy names its source.
    configured: String,
    expected_issuer: Option<String>,
    fetcher: fetch::Fetcher,
    data_dir: PathBuf,
}

impl Plan {
    /// `None` unless `jwt.jwks_url` or `jwt.oidc_discovery_url` is set.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, ConfigError> {
        let jwt = &settings.jwt;
        let (location, configured) = match (&jwt.jwks_url, &jwt.oidc_discovery_url) {
            (Some(raw), None) => (
                Location::Jwks(url::parse("jwt.jwks_url", raw).map_err(ConfigError::new)?),
                raw.trim().to_owned(),
            ),
            (None, Some(raw)) => {
                let issuer = raw.trim().trim_end_matches('/');
                let document = if issuer.ends_with("/.well-known/openid-configuration") {
                    issuer.to_owned()
                } else {
                    format!("{issuer}/.well-known/openid-configuration")
                };
                let url =
                    url::parse("jwt.oidc_discovery_url", &document).map_err(ConfigError::new)?;
                (Location::Discovery(url), raw.trim().to_owned())
            }
            (None, None) => {
                if jwt.ca_file.is_some() {
                    return Err(ConfigError::new(
                        "jwt.ca_file is set but neither jwt.jwks_url nor jwt.oidc_discovery_url is: it only serves those URLs.",
                    ));
                }
                return Ok(None);
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "Set only one of jwt.jwks_url and jwt.oidc_discovery_url.",
                ))
            }
        };
        Ok(Some(Self {
            location,
            configured,
            expected_issuer: jwt.issuer.clone(),
            fetcher: fetch::Fetcher::new(jwt.ca_file.as_deref())?,
            data_dir: settings.storage.path.clone(),
        }))
    }

    /// For `check-config`: where the keys will come from.
    pub fn describe(&self) -> String {
        match &self.location {
            Location::Jwks(url) => format!("keys fetched from {url}"),
            Location::Discovery(url) => format!("keys fetched as {url} names them"),
        }
    }

    /// The JWK set's answer, after the discovery document when there is one.
    async fn fetch_jwks(&self) -> Result<(Url, fetch::Answer), FetchError> {
        let jwks = match &self.location {
            Location::Jwks(url) => url.clone(),
            Location::Discovery(document) => self.discover(document).await?,
        };
        let answer = self.fetcher.get(&jwks).await?;
        Ok((jwks, answer))
    }

    /// The `jwks_uri` of the discovery document, whose `issuer` must be
    /// `jwt.issuer` when that is set (OpenID Connect Discovery 1.0, §4.3).
    async fn discover(&self, document: &Url) -> Result<Url, FetchError> {
        let answer = self.fetcher.get(document).await?;
        let invalid = |what: &str| FetchError::Invalid {
            url: document.to_string(),
            what: what.to_owned(),
        };
        let doc: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| invalid("something that is not a JSON discovery document"))?;
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a discovery document without issuer"))?;
        if let Some(expected) = &self.expected_issuer {
            if issuer != expected {
                return Err(FetchError::IssuerMismatch {
                    url: document.to_string(),
                    found: issuer.to_owned(),
                    expected: expected.clone(),
                });
            }
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a discovery document without jwks_uri"))?;
        Url::parse(jwks)
            .ok()
            .filter(url::allowed)
            .ok_or_else(|| invalid("a jwks_uri that is not an https:// URL (or http to loopback)"))
    }
}

enum Command {
    /// A token named a kid the set lacks; answered once a fetch (or the
    /// cooldown's refusal) is through.
    UnknownKid(oneshot::Sender<()>),
    /// A reload: fetch now, whatever the cooldown.
    Refetch(oneshot::Sender<Result<String, String>>),
}

/// The handle the server holds; the fetching thread ends when every handle is gone.
#[derive(Clone)]
pub struct KeySource {
    commands: mpsc::UnboundedSender<Command>,
}

impl KeySource {
    /// Starts the fetching thread and waits for the first fetch (bounded by
    /// the fetch deadline). Whatever its outcome, the server starts: with
    /// the fetched set, the saved one, or none (then not ready).
    pub fn start(plan: Plan, verifier: Arc<JwtVerifier>) -> std::io::Result<Self> {
        let (commands, inbox) = mpsc::unbounded_channel();
        let (first_done, first) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("agent-tokens-idp".to_owned())
            .spawn(move || {
                let mut refresher = Refresher {
                    plan,
                    verifier,
                    in_use: Vec::new(),
                    saved: None,
                    last_unknown_kid_fetch: None,
                    failures: 0,
                };
                runtime.block_on(refresher.run(inbox, first_done));
            })?;
        if first
            .recv_timeout(REFRESH_DEADLINE + Duration::from_secs(2))
            .is_err()
        {
            log::warn!("the identity provider's keys are still being fetched; starting without waiting longer");
        }
        Ok(Self { commands })
    }

    /// Asks for a fetch because a token named an unknown kid, and waits for
    /// it (or for the cooldown's no). The caller then verifies again.
    pub async fn after_unknown_kid(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::UnknownKid(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    /// Fetches now (a reload) and says what came of it.
    pub async fn refetch(&self) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Refetch(reply))
            .map_err(|_| "the key fetcher has stopped".to_owned())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the key fetcher has stopped".to_owned()))
    }
}

struct Refresher {
    plan: Plan,
    verifier: Arc<JwtVerifier>,
    /// The JWKs in use, as served.
    in_use: Vec<Value>,
    /// The JWKs the saved copy holds now.
    saved: Option<Vec<Value>>,
    last_unknown_kid_fetch: Option<Instant>,
    failures: u32,
}

/// Someone waiting for the fetch in progress.
enum Waiter {
    Kid(oneshot::Sender<()>),
    Reload(oneshot::Sender<Result<String, String>>),
}

impl Refresher {
    async fn run(
        &mut self,
        mut inbox: mpsc::UnboundedReceiver<Command>,
        first_done: std::sync::mpsc::Sender<()>,
    ) {
        for result in FETCH_RESULTS {
            METRICS.idp_fetches.with_label_values(&[result]);
        }
        let mut next = match self.refresh("start").await {
            Ok(fresh) => Instant::now() + fresh,
            Err(e) => {
                self.use_saved_copy(&e);
                Instant::now() + self.retry_delay()
            }
        };
        let _ = first_done.send(());
        loop {
            let command = tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => Some(command),
                    None => return,
                },
                () = tokio::time::sleep_until(next) => None,
            };
            let mut waiting = Vec::new();
            let why = match command {
                None => "scheduled refresh",
                Some(Command::UnknownKid(reply)) => {
                    // The fetch at start does not count: a key added just
                    // after it is fetched for the first token that uses it.
                    if self
                        .last_unknown_kid_fetch
                        .is_some_and(|at| at.elapsed() < UNKNOWN_KID_COOLDOWN)
                    {
                        let _ = reply.send(());
                        continue;
                    }
                    self.last_unknown_kid_fetch = Some(Instant::now());
                    waiting.push(Waiter::Kid(reply));
                    "a token with an unknown kid"
                }
                Some(Command::Refetch(reply)) => {
                    waiting.push(Waiter::Reload(reply));
                    "reload"
                }
            };
            let outcome = self.refresh(why).await;
            next = Instant::now()
                + match &outcome {
                    Ok(fresh) => *fresh,
                    Err(_) => self.retry_delay(),
                };
            // Whoever asked while this fetch ran is answered by it: one fetch for all.
            while let Ok(command) = inbox.try_recv() {
                waiting.push(match command {
                    Command::UnknownKid(reply) => Waiter::Kid(reply),
                    Command::Refetch(reply) => Waiter::Reload(reply),
                });
            }
            let summary = outcome
                .map(|_| {
                    format!(
                        "{} key(s) from the identity provider",
                        self.verifier.key_count()
                    )
                })
                .map_err(|e| format!("{e}; the keys in use stay"));
            for waiter in waiting {
                match waiter {
                    Waiter::Kid(reply) => {
                        let _ = reply.send(());
                    }
                    Waiter::Reload(reply) => {
                        let _ = reply.send(summary.clone());
                    }
                }
            }
        }
    }

    fn retry_delay(&self) -> Duration {
        let doubled = RETRY_FIRST.saturating_mul(1 << self.failures.saturating_sub(1).min(10));
        doubled.min(RETRY_MAX)
    }

    /// One fetch; on success the set is swapped in and saved. Returns how
    /// long the set is fresh.
    async fn refresh(&mut self, why: &str) -> Result<Duration, FetchError> {
        let fetched = tokio::time::timeout(REFRESH_DEADLINE, self.plan.fetch_jwks())
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Timeout {
                    url: match &self.plan.location {
                        Location::Jwks(url) | Location::Discovery(url) => url.to_string(),
                    },
                })
            });
        let result = fetched.and_then(|(url, answer)| {
            self.verifier
                .parse_idp_keys(&answer.body)
                .map(|keys| (answer.max_age, keys))
                .map_err(|e| FetchError::Invalid {
                    url: url.to_string(),
                    what: format!("a JWK set that is refused: {e}"),
                })
        });
        let (max_age, keys) = match result {
            Ok(ok) => ok,
            Err(e) => {
                METRICS.idp_fetches.with_label_values(&[e.label()]).inc();
                self.failures = self.failures.saturating_add(1);
                log::warn!(
                    "cannot fetch the identity provider's keys ({why}): {e}; {}",
                    match self.verifier.key_count() {
                        0 => "no key set is loaded".to_owned(),
                        n => format!("the {n} key(s) in use stay"),
                    }
                );
                return Err(e);
            }
        };
        METRICS.idp_fetches.with_label_values(&["ok"]).inc();
        self.failures = 0;
        let now = unix_now();
        self.install(keys, now, why);
        if self.saved.as_ref() != Some(&self.in_use) {
            self.save(now);
        }
        let fresh = max_age.map_or(DEFAULT_REFRESH, Duration::from_secs);
        Ok(fresh.clamp(MIN_REFRESH, MAX_REFRESH))
    }

    /// Swaps `keys` in, saying in the log what changed (kids are public).
    fn install(&mut self, keys: IdpKeys, fetched_at: u64, why: &str) {
        let before = self.verifier.kids();
        let after: Vec<String> = keys.set.kids().into_iter().map(str::to_owned).collect();
        let ignored = keys.ignored;
        self.verifier.replace_keys(keys.set);
        self.in_use = keys.usable;
        METRICS.jwt_key_set(after.len(), fetched_at);
        let added: Vec<&str> = after
            .iter()
            .filter(|k| !before.contains(k))
            .map(String::as_str)
            .collect();
        let removed: Vec<&str> = before
            .iter()
            .filter(|k| !after.contains(k))
            .map(String::as_str)
            .collect();
        if added.is_empty() && removed.is_empty() {
            log::debug!("identity provider keys unchanged ({why})");
            return;
        }
        log::info!(
            "identity provider keys ({why}): {} in use (kids {:?}), added {added:?}, removed {removed:?}, {ignored} unusable key(s) ignored",
            after.len(),
            after
        );
    }

    fn save(&mut self, fetched_at: u64) {
        let saved = saved::Saved {
            source: self.plan.configured.clone(),
            fetched_at,
            keys: self.in_use.clone(),
        };
        match saved::save(&self.plan.data_dir, &saved) {
            Ok(()) => self.saved = Some(saved.keys),
            Err(e) => log::warn!(
                "cannot save the identity provider's keys to {}: {e}; a restart while it is down would have no keys",
                saved::path_in(&self.plan.data_dir).display()
            ),
        }
    }

    /// At start, with the provider unreachable: the saved copy, if any.
    fn use_saved_copy(&mut self, cause: &FetchError) {
        let path = saved::path_in(&self.plan.data_dir);
        let none = |why: String| {
            log::error!(
                "no JWT key set: the identity provider's keys cannot be fetched ({cause}) and {why}; user JWTs are refused (503) and /readyz answers 503 until it answers"
            );
        };
        let saved = match saved::load(&self.plan.data_dir, &self.plan.configured) {
            Ok(Some(saved)) => saved,
            Ok(None) => return none(format!("no saved copy is in {}", path.display())),
            Err(e) => return none(e),
        };
        match self.verifier.parse_idp_keys(&saved.jwk_set()) {
            Ok(keys) => {
                log::warn!(
                    "the identity provider's keys cannot be fetched ({cause}); verifying with the {} key(s) saved in {} at {} until it answers",
                    keys.set.len(),
                    path.display(),
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(saved.fetched_at)),
                );
                self.install(keys, saved.fetched_at, "saved copy");
                self.saved = Some(saved.keys);
            }
            Err(e) => none(format!(
                "the saved copy in {} is refused: {e}",
                path.display()
            )),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every `result` label of the fetch counter.
const FETCH_RESULTS: [&str; 7] = [
    "ok",
    "timeout",
    "network_error",
    "http_error",
    "too_large",
    "invalid",
    "issuer_mismatch",
];
