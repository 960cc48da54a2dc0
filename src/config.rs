//! Configuration: built-in defaults, then an optional TOML file, then
//! `AGENT_TOKENS__SECTION__KEY` environment variables (added last, so they win).
//!
//! This module owns the public config keys and their validation. It never
//! prints a secret: HMAC secrets are held in `SecretString`, whose `Debug`
//! is redacted, and error messages name keys, never values of secret keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use actix_web::http::header::HeaderName;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

/// The environment variable prefix; `AGENT_TOKENS__JWT__HMAC_SECRET` sets `jwt.hmac_secret`.
pub const ENV_PREFIX: &str = "AGENT_TOKENS";

/// A configuration problem, phrased as one plain sentence that names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// More HTTP workers than this is a typo (actix-server refuses above 512).
pub const MAX_WORKERS: usize = 256;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub jwt: JwtSettings,
    pub tokens: TokenSettings,
    pub limits: LimitSettings,
    pub rate_limit: RateLimitSettings,
    pub introspection: IntrospectionSettings,
    pub verify: VerifySettings,
    pub admin: AdminSettings,
    pub audit: AuditSettings,
}

/// The HTTP deprovisioning route (`DELETE /api/agent-tokens/users/{id}`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// A file holding the admin bearer secret; unset: the route does not exist.
    pub token_file: Option<PathBuf>,
}

/// Shortest admin secret accepted from `admin.token_file`, in bytes.
pub const MIN_ADMIN_SECRET_BYTES: usize = 32;

/// The audit trail (see `crate::store::audit`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Events older than this many days are removed in the background.
    pub retention_days: u64,
    /// Record the client address (the trusted header's when one is configured).
    pub record_addresses: bool,
    /// Also append every event as a JSON line to this file.
    pub file: Option<PathBuf>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention_days: 90,
            record_addresses: false,
            file: None,
        }
    }
}

/// RFC 7662 introspection and RFC 7009 revocation for resource servers.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IntrospectionSettings {
    /// `client_id:secret` per line (see `crate::domain::clients`); unset:
    /// the `/oauth2/` routes and the metadata answer 404.
    pub clients_file: Option<PathBuf>,
}

/// How the verify route accepts agent tokens besides `Authorization`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VerifySettings {
    /// A header that may carry the bare token (e.g. `X-API-Key`); empty: none.
    pub api_key_header: String,
}

impl VerifySettings {
    /// `api_key_header` as a header name; `None` when unset (or invalid:
    /// [`Settings::validate`] refuses that).
    pub fn api_key_header_name(&self) -> Option<HeaderName> {
        let name = self.api_key_header.trim();
        if name.is_empty() {
            return None;
        }
        HeaderName::from_bytes(name.as_bytes()).ok()
    }
}

/// Bounds on what one client can make the server hold or wait for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Total request header size allowed on every route but verify (larger: 431).
    /// The HTTP parser's own hard cap is 128 KiB on every route.
    pub max_header_bytes: usize,
    /// Declared body size allowed on every route but verify (larger: 413);
    /// no route reads a body.
    pub max_body_bytes: u64,
    /// Time a client has to send its request head (slow clients: 408, closed).
    pub client_request_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this.
    pub keep_alive_secs: u64,
    /// Concurrent connections per worker thread.
    pub max_connections: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_body_bytes: 4 * 1024,
            client_request_timeout_ms: 5_000,
            keep_alive_secs: 5,
            max_connections: 10_000,
        }
    }
}

/// Rate limits on the token-management routes (the model: `crate::http::limits`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Token changes (create, rotate, revoke that change something) per
    /// minute per user, sustained; 0 turns every rate limit off.
    pub management_per_minute: u32,
    /// Changes a user may make at once before the rate applies.
    pub management_burst: u32,
    /// Also limit requests per client address, before the JWT is checked:
    /// for a server clients reach directly (keyed on the peer address).
    pub per_address: bool,
    /// Requests per minute per client address, when that limit applies.
    pub address_per_minute: u32,
    /// Requests an address may make at once before its rate applies.
    pub address_burst: u32,
    /// Behind a trusted proxy: the header carrying the client address
    /// (e.g. `X-Real-IP`; for `X-Forwarded-For` the last entry is used).
    /// Setting it turns the per-address limit on, keyed on this header.
    pub client_ip_header: String,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            management_per_minute: 60,
            management_burst: 100,
            per_address: false,
            address_per_minute: 600,
            address_burst: 300,
            client_ip_header: String::new(),
        }
    }
}

impl RateLimitSettings {
    /// `client_ip_header` as a header name; `None` when unset (or invalid:
    /// [`Settings::validate`] refuses that).
    pub fn client_ip_header_name(&self) -> Option<HeaderName> {
        let name = self.client_ip_header.trim();
        if name.is_empty() {
            return None;
        }
        HeaderName::from_bytes(name.as_bytes()).ok()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on, `IP:PORT`.
    pub bind: String,
    /// One access-log line per request (never with the Authorization header).
    pub access_log: bool,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_timeout_secs: u64,
    /// HTTP worker threads; 0: one per CPU the process may use.
    pub workers: usize,
    /// `IP:PORT` of a private listener for `/metrics` (and the health
    /// routes); when set, `/metrics` leaves `bind`. Empty: off.
    pub metrics_bind: String,
    /// The admin socket; empty: `admin.sock` in `storage.path`.
    pub admin_socket: String,
    /// A group whose members may use the admin socket (it is then 0660).
    pub admin_group: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".to_owned(),
            access_log: true,
            shutdown_timeout_secs: 10,
            workers: 0,
            metrics_bind: String::new(),
            admin_socket: String::new(),
            admin_group: String::new(),
        }
    }
}

/// Holds every block of a million-token store (about 115 MiB of tables),
/// so 100,000 active tokens spread over all of it are answered without
/// reading files; what it costs is in docs/configuration.md.
pub const DEFAULT_CACHE_MB: u64 = 192;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// The data directory (see [`crate::store::layout`]).
    pub path: PathBuf,
    /// The store's block cache in MiB (see docs/configuration.md, "Memory").
    pub cache_mb: u64,
    /// Settings of the online compaction of releases before 0.2 (on sled),
    /// still accepted so their config files load; the store compacts itself
    /// now, and [`Settings::obsolete_keys`] names them for a warning.
    pub compact_growth_percent: Option<u64>,
    pub compact_min_growth_mb: Option<u64>,
    pub compact_check_secs: Option<u64>,
    /// Where tokens live: the embedded store in `path`, or PostgreSQL.
    pub backend: StorageBackend,
    /// PostgreSQL's URL (it may carry a password); or `url_file`.
    pub url: Option<SecretString>,
    /// A file holding the URL (a systemd credential).
    pub url_file: Option<PathBuf>,
    /// PostgreSQL connections per replica.
    pub pool_size: usize,
}

/// `storage.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Embedded,
    Postgres,
}

pub const DEFAULT_POOL_SIZE: usize = 16;

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/agent-tokens/db"),
            cache_mb: DEFAULT_CACHE_MB,
            compact_growth_percent: None,
            compact_min_growth_mb: None,
            compact_check_secs: None,
            backend: StorageBackend::Embedded,
            url: None,
            url_file: None,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

impl StorageSettings {
    /// PostgreSQL's URL, from `storage.url` or the file `storage.url_file`
    /// names. Errors name the key, never the URL.
    pub fn postgres_url(&self) -> Result<SecretString, ConfigError> {
        match (&self.url, &self.url_file) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "Set only one of storage.url and storage.url_file.",
            )),
            (Some(url), None) => Ok(url.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(format!(
                        "storage.url_file {} cannot be read: {e}.",
                        path.display()
                    ))
                })?;
                // A credential file written with `echo` ends with a newline.
                Ok(SecretString::from(text.trim().to_owned()))
            }
            (None, None) => Err(ConfigError::new(
                "storage.backend = \"postgres\" needs storage.url or storage.url_file.",
            )),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self.backend {
            StorageBackend::Embedded => {
                if self.url.is_some() || self.url_file.is_some() {
                    return Err(ConfigError::new(
                        "storage.url and storage.url_file need storage.backend = \"postgres\".",
                    ));
                }
            }
            StorageBackend::Postgres => {
                if self.url.is_some() && self.url_file.is_some() {
                    return Err(ConfigError::new(
                        "Set only one of storage.url and storage.url_file.",
                    ));
                }
                if self.url.is_none() && self.url_file.is_none() {
                    return Err(ConfigError::new(
                        "storage.backend = \"postgres\" needs storage.url or storage.url_file.",
                    ));
                }
            }
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return Err(ConfigError::new(
                "storage.pool_size must be between 1 and 1024.",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// Allowed algorithms; the token header's `alg` must be one of these.
    #[serde(deserialize_with = "string_or_list")]
    pub algorithms: Vec<String>,
    pub hmac_secret: Option<SecretString>,
    pub hmac_secret_file: Option<PathBuf>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    /// An identity provider's JWK set URL, fetched at start and refreshed
    /// in the background (`crate::idp`).
    pub jwks_url: Option<String>,
    /// An issuer URL: its `/.well-known/openid-configuration` names the JWK set.
    pub oidc_discovery_url: Option<String>,
    /// PEM certificates trusted, besides the system's roots, for those URLs.
    pub ca_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// With keys someone else issues for many clients (a public key, a
    /// JWKS), `audience` is required unless this is false.
    pub require_audience: bool,
    pub leeway_secs: u64,
    pub user_claim: String,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            algorithms: vec!["HS256".to_owned()],
            hmac_secret: None,
            hmac_secret_file: None,
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            oidc_discovery_url: None,
            ca_file: None,
            issuer: None,
            audience: None,
            require_audience: true,
            leeway_secs: 30,
            user_claim: "sub".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// How long a rotated-out token keeps verifying (0: it dies at once).
    pub rotation_grace_secs: u64,
    /// Tokens older than this stop verifying; unset means no expiry.
    pub max_age_days: Option<u64>,
}

/// Longest rotation grace window: 30 days.
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 86_400;

/// Accepts `["HS256", "RS256"]` from TOML and `HS256,RS256` from the environment.
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrList {
        One(String),
        Many(Vec<String>),
    }
    Ok(match StringOrList::deserialize(deserializer)? {
        StringOrList::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        StringOrList::Many(v) => v,
    })
}

/// Where settings come from, in increasing precedence after the built-in defaults.
#[derive(Default)]
pub struct Sources<'a> {
    /// A TOML file (`--config PATH`).
    pub file: Option<&'a Path>,
    /// Settings layered above the file and below the environment (used by `--dev`).
    pub overlay: Option<Overlay>,
    /// The environment; `None` reads the process environment.
    pub env: Option<HashMap<String, String>>,
}

/// A layer of settings between the config file and the environment.
#[derive(Default)]
pub struct Overlay {
    /// TOML text.
    pub toml: String,
    /// Dotted keys the overlay takes over: the file's values for them are
    /// dropped, not merged (`--dev`'s HS256 secret replaces whatever key the
    /// file names, instead of conflicting with it).
    pub replaces: &'static [&'static str],
}

impl Settings {
    /// Keys that are accepted but no longer do anything.
    pub fn obsolete_keys(&self) -> Vec<&'static str> {
        let storage = &self.storage;
        [
            (
                "storage.compact_growth_percent",
                storage.compact_growth_percent,
            ),
            (
                "storage.compact_min_growth_mb",
                storage.compact_min_growth_mb,
            ),
            ("storage.compact_check_secs", storage.compact_check_secs),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|_| key))
        .collect()
    }

    /// Loads and type-checks settings. Semantic checks are in [`Settings::validate`].
    pub fn load(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = sources.file {
            if !path.is_file() {
                return Err(ConfigError::new(format!(
                    "The config file {} does not exist or is not a file.",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(format!(
                    "Cannot read the config file {}: {e}.",
                    path.display()
                ))
            })?;
            check_toml_syntax(path, &text)?;
            let replaced = sources.overlay.as_ref().map_or(&[][..], |o| o.replaces);
            if replaced.is_empty() {
                builder =
                    builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
            } else {
                let mut table: toml::Table = toml::from_str(&text)
                    .map_err(|_| ConfigError::new("The config file is not valid TOML."))?;
                for key in replaced {
                    remove_dotted(&mut table, key);
                }
                let file = config::Config::try_from(&table).map_err(describe_config_error)?;
                builder = builder.add_source(file);
            }
        }
        if let Some(overlay) = &sources.overlay {
            builder = builder.add_source(config::File::from_str(
                &overlay.toml,
                config::FileFormat::Toml,
            ));
        }
        let env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(sources.env);
        builder = builder.add_source(env);
        let raw = builder.build().map_err(describe_config_error)?;
        let settings: Settings = raw.try_deserialize().map_err(describe_config_error)?;
        Ok(settings)
    }

    /// Checks everything that does not need the key material (see `jwt::JwtVerifier`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bind = self.bind_addr()?;
        // Port 0 (any free port, as tests use) never collides.
        if bind.port() != 0 && self.metrics_bind_addr()? == Some(bind) {
            return Err(ConfigError::new(
                "server.metrics_bind must differ from server.bind.",
            ));
        }
        if self.server.shutdown_timeout_secs > 300 {
            return Err(ConfigError::new(
                "server.shutdown_timeout_secs must be at most 300.",
            ));
        }
        if self.server.workers > MAX_WORKERS {
            return Err(ConfigError::new(format!(
                "server.workers must be at most {MAX_WORKERS} (0: one per CPU)."
            )));
        }
        if !(1024..=128 * 1024).contains(&self.limits.max_header_bytes) {
            return Err(ConfigError::new(
                "limits.max_header_bytes must be between 1024 and 131072.",
            ));
        }
        if self.limits.client_request_timeout_ms == 0 {
            return Err(ConfigError::new(
                "limits.client_request_timeout_ms must be more than 0.",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::new(
                "limits.max_connections must be more than 0.",
            ));
        }
        self.validate_rate_limit()?;
        self.validate_verifiers()?;
        if self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError::new("storage.path must not be empty."));
        }
        if self.storage.cache_mb == 0 || self.storage.cache_mb > 64 * 1024 {
            return Err(ConfigError::new(
                "storage.cache_mb must be between 1 and 65536.",
            ));
        }
        self.storage.validate()?;
        if self.jwt.algorithms.is_empty() {
            return Err(ConfigError::new(
                "jwt.algorithms must list at least one algorithm.",
            ));
        }
        if self.jwt.user_claim.trim().is_empty() {
            return Err(ConfigError::new("jwt.user_claim must not be empty."));
        }
        if self.jwt.leeway_secs > 600 {
            return Err(ConfigError::new(
                "jwt.leeway_secs must be at most 600 seconds.",
            ));
        }
        if matches!(&self.jwt.issuer, Some(s) if s.is_empty()) {
            return Err(ConfigError::new(
                "jwt.issuer must not be empty when set; remove it to skip the issuer check.",
            ));
        }
        if matches!(&self.jwt.audience, Some(s) if s.is_empty()) {
            return Err(ConfigError::new(
                "jwt.audience must not be empty when set; remove it to skip the audience check.",
            ));
        }
        if self.tokens.rotation_grace_secs > MAX_ROTATION_GRACE_SECS {
            return Err(ConfigError::new(format!(
                "tokens.rotation_grace_secs must be at most {MAX_ROTATION_GRACE_SECS} (30 days)."
            )));
        }
        if !(1..=36_500).contains(&self.audit.retention_days) {
            return Err(ConfigError::new(
                "audit.retention_days must be between 1 and 36500.",
            ));
        }
        if matches!(&self.audit.file, Some(p) if p.as_os_str().is_empty()) {
            return Err(ConfigError::new(
                "audit.file must not be empty when set; remove it to keep events in the store only.",
            ));
        }
        if matches!(&self.admin.token_file, Some(p) if p.as_os_str().is_empty()) {
            return Err(ConfigError::new(
                "admin.token_file must not be empty when set; remove it to turn the deprovisioning route off.",
            ));
        }
        if self.server.admin_group.contains(char::is_whitespace) {
            return Err(ConfigError::new(
                "server.admin_group must be a group name without spaces.",
            ));
        }
        if matches!(self.tokens.max_age_days, Some(d) if d == 0 || d > 36_500) {
            return Err(ConfigError::new(
                "tokens.max_age_days must be between 1 and 36500 when set; remove it for tokens that do not expire.",
            ));
        }
        Ok(())
    }

    fn validate_verifiers(&self) -> Result<(), ConfigError> {
        let header = self.verify.api_key_header.trim();
        if !header.is_empty() {
            match self.verify.api_key_header_name() {
                None => {
                    return Err(ConfigError::new(
                        "verify.api_key_header must be an HTTP header name such as X-API-Key.",
                    ))
                }
                Some(name) if name == actix_web::http::header::AUTHORIZATION => {
                    return Err(ConfigError::new(
                        "verify.api_key_header must not be Authorization, which verify reads already.",
                    ))
                }
                Some(_) => {}
            }
        }
        if matches!(&self.introspection.clients_file, Some(p) if p.as_os_str().is_empty()) {
            return Err(ConfigError::new(
                "introspection.clients_file must not be empty when set; remove it to turn introspection off.",
            ));
        }
        Ok(())
    }

    fn validate_rate_limit(&self) -> Result<(), ConfigError> {
        let rate = &self.rate_limit;
        let header = rate.client_ip_header.trim();
        if !header.is_empty() && rate.client_ip_header_name().is_none() {
            return Err(ConfigError::new(
                "rate_limit.client_ip_header must be an HTTP header name such as X-Real-IP.",
            ));
        }
        if rate.management_per_minute == 0 {
            return Ok(());
        }
        if rate.management_burst == 0 {
            return Err(ConfigError::new(
                "rate_limit.management_burst must be at least 1 when rate_limit.management_per_minute is set.",
            ));
        }
        if rate.per_address || !header.is_empty() {
            if rate.address_per_minute == 0 {
                return Err(ConfigError::new(
                    "rate_limit.address_per_minute must be at least 1 when the per-address limit is on (rate_limit.per_address or rate_limit.client_ip_header).",
                ));
            }
            if rate.address_burst == 0 {
                return Err(ConfigError::new(
                    "rate_limit.address_burst must be at least 1 when the per-address limit is on (rate_limit.per_address or rate_limit.client_ip_header).",
                ));
            }
        }
        Ok(())
    }

    /// Where the admin socket is: `server.admin_socket`, else
    /// `admin.sock` in `storage.path`.
    pub fn admin_socket_path(&self) -> PathBuf {
        match self.server.admin_socket.trim() {
            "" => self.storage.path.join("admin.sock"),
            path => PathBuf::from(path),
        }
    }

    /// Reads the admin secret of `admin.token_file`, if set: surrounding
    /// whitespace (a trailing newline) is not part of it.
    pub fn admin_secret(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(path) = &self.admin.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!(
                "admin.token_file: cannot read {}: {e}.",
                path.display()
            ))
        })?;
        let secret = text.trim();
        if secret.len() < MIN_ADMIN_SECRET_BYTES {
            return Err(ConfigError::new(format!(
                "admin.token_file must hold a secret of at least {MIN_ADMIN_SECRET_BYTES} characters (e.g. openssl rand -hex 32)."
            )));
        }
        Ok(Some(SecretString::from(secret.to_owned())))
    }

    /// The parsed `server.bind` address.
    /// The private metrics address, if `server.metrics_bind` is set.
    pub fn metrics_bind_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let value = self.server.metrics_bind.trim();
        if value.is_empty() {
            return Ok(None);
        }
        value.parse().map(Some).map_err(|_| {
            ConfigError::new(format!(
                "server.metrics_bind must be an IP address and port such as 127.0.0.1:9464 (got {:?}).",
                self.server.metrics_bind
            ))
        })
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError::new(format!(
                "server.bind must be an IP address and port such as 127.0.0.1:8080 (got {:?}).",
                self.server.bind
            ))
        })
    }
}

/// Removes `section.key` (or a top-level `key`) from a TOML table.
fn remove_dotted(table: &mut toml::Table, dotted: &str) {
    match dotted.split_once('.') {
        Some((section, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(section) {
                remove_dotted(inner, rest);
            }
        }
        None => {
            table.remove(dotted);
        }
    }
}

/// Refuses a file that is not TOML with where and what, never the text:
/// the toml crate's own message quotes the offending line, which may hold
/// a secret (`hmac_secret = "...` with its closing quote missing).
fn check_toml_syntax(path: &Path, text: &str) -> Result<(), ConfigError> {
    let Err(err) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let mut sentence = format!("{} is not valid TOML", path.display());
    if let Some(span) = err.span() {
        let place = SourcePlace::of(text, span.start);
        sentence.push_str(&format!(" at line {}, column {}", place.line, place.column));
        if let Some(key) = place.key {
            sentence.push_str(&format!(" (key {key})"));
        }
    }
    Err(ConfigError::new(format!(
        "{sentence}: {}.",
        redact_toml_message(err.message())
    )))
}

/// The toml crate's message without any piece of the input: it quotes
/// values in backticks ("invalid type: integer `123...` as i128"); quoted
/// syntax (`"`, `,`, `]`) is kept, anything longer is left out.
fn redact_toml_message(message: &str) -> String {
    let first_line = message.trim().lines().next().unwrap_or_default();
    if first_line.starts_with("invalid type: integer") {
        return "the integer is out of range (TOML integers are 64-bit)".to_owned();
    }
    let mut out = String::new();
    for (i, piece) in first_line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(piece);
        } else if piece.chars().count() <= 3 {
            out.push('`');
            out.push_str(piece);
            out.push('`');
        } else {
            out.push_str("(a value)");
        }
    }
    out.trim().trim_end_matches('.').to_owned()
}

/// Line and column (from 1) of a byte offset in a TOML text, and the
/// dotted name of the key that line sets, if it sets one.
struct SourcePlace {
    line: usize,
    column: usize,
    key: Option<String>,
}

impl SourcePlace {
    fn of(text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let table = before[..line_start].lines().rev().find_map(|l| {
            let l = l.trim();
            let name = l.strip_prefix('[')?.split(']').next()?;
            Some(name.trim_matches(['[', ' ']).to_owned())
        });
        let this_line = text[line_start..].lines().next().unwrap_or_default();
        // Named only when the error is in the value, after the `=`: an
        // error at the start of a line belongs to what came before it.
        let key = this_line
            .split_once('=')
            .filter(|(k, _)| offset - line_start > k.len())
            .map(|(k, _)| k.trim())
            .filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            })
            .map(|k| match &table {
                Some(t) if !t.is_empty() => format!("{t}.{k}"),
                _ => k.to_owned(),
            });
        Self { line, column, key }
    }
}

/// Turns the config crate's errors into one sentence that names the key.
/// Values are never echoed: a mistyped secret must not end up in a terminal log.
fn describe_config_error(err: config::ConfigError) -> ConfigError {
    use config::ConfigError as E;
    match err {
        E::NotFound(key) => ConfigError::new(format!("Missing config key {key}.")),
        E::FileParse { uri, cause } => {
            // (Files were checked by `check_toml_syntax`; this is the
            // `--dev` overlay or a parse the two crates disagree on.)
            let place = uri.unwrap_or_else(|| "the config file".to_owned());
            let cause = redact_toml_message(&cause.to_string());
            ConfigError::new(format!("{place} is not valid TOML: {cause}."))
        }
        E::Type { key, expected, .. } => match key {
            Some(key) => ConfigError::new(format!("Config key {key} must be {expected}.")),
            None => ConfigError::new(format!("A config value must be {expected}.")),
        },
        E::Message(msg) if msg.contains("non-Unicode") => {
            ConfigError::new("An AGENT_TOKENS__ environment variable contains non-UTF-8 data.")
        }
        E::Message(msg) => ConfigError::new(describe_serde_message(&msg)),
        other => ConfigError::new(describe_serde_message(&other.to_string())),
    }
}

/// serde says "unknown field `x`, expected one of ..." and config appends
/// " for key `jwt`"; rewrite that as "Unknown config key jwt.x."
fn describe_serde_message(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let section = msg
            .rsplit_once("for key `")
            .and_then(|(_, k)| k.split('`').next())
            .filter(|k| !k.is_empty());
        let key = match section {
            Some(section) => format!("{section}.{field}"),
            None => field.to_owned(),
        };
        return format!("Unknown config key {key}.");
    }
    let mut sentence = msg.trim().to_owned();
    if !sentence.ends_with('.') {
        sentence.push('.');
    }
    format!("Invalid configuration: {sentence}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn load_toml(toml: &str) -> Result<Settings, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        Settings::load(Sources {
            file: Some(file.path()),
            overlay: None,
            env: env(&[]),
        })
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let s = Settings::load(Sources {
            env: env(&[]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert!(s.server.access_log);
        assert_eq!(s.storage.path, PathBuf::from("/var/lib/agent-tokens/db"));
        assert_eq!(s.storage.cache_mb, DEFAULT_CACHE_MB);
        assert!(s.obsolete_keys().is_empty());
        assert_eq!(s.jwt.algorithms, vec!["HS256"]);
        assert_eq!(s.jwt.leeway_secs, 30);
        assert_eq!(s.jwt.user_claim, "sub");
        assert_eq!(s.rate_limit.management_per_minute, 60);
        assert_eq!(s.rate_limit.management_burst, 100);
        assert!(!s.rate_limit.per_address);
        assert_eq!(s.rate_limit.address_per_minute, 600);
        assert_eq!(s.rate_limit.address_burst, 300);
        assert_eq!(s.rate_limit.client_ip_header, "");
        s.validate().unwrap();
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"[server]\nbind = \"127.0.0.1:9000\"\naccess_log = true\n")
            .unwrap();
        let s = Settings::load(Sources {
            file: Some(file.path()),
            overlay: None,
            env: env(&[
                ("AGENT_TOKENS__SERVER__BIND", "127.0.0.1:9100"),
                ("AGENT_TOKENS__SERVER__ACCESS_LOG", "false"),
                ("AGENT_TOKENS__JWT__ALGORITHMS", "RS256, ES256"),
                ("AGENT_TOKENS__STORAGE__CACHE_MB", "24"),
            ]),
        })
        .unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:9100");
        assert!(!s.server.access_log);
        assert_eq!(s.jwt.algorithms, vec!["RS256", "ES256"]);
        assert_eq!(s.storage.cache_mb, 24);
    }

    #[test]
    fn a_numeric_looking_secret_from_the_environment_is_kept_verbatim() {
        use secrecy::ExposeSecret;
        let secret = "000123456789012345678901234567890e5";
        let s = Settings::load(Sources {
            env: env(&[("AGENT_TOKENS__JWT__HMAC_SECRET", secret)]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.jwt.hmac_secret.unwrap().expose_secret(), secret);
    }

    #[test]
    fn the_overlay_sits_between_file_and_environment() {
        let s = Settings::load(Sources {
            file: None,
            overlay: Some(Overlay {
                toml: "[server]\nbind = \"127.0.0.1:1\"\n[storage]\ncache_mb = 4\n".into(),
                replaces: &[],
            }),
            env: env(&[("AGENT_TOKENS__SERVER__BIND", "127.0.0.1:2")]),
        })
        .unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:2");
        assert_eq!(s.storage.cache_mb, 4);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = load_toml("[server]\nbindd = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(err.to_string(), "Unknown config key server.bindd.");
        let err = load_toml("[sever]\nbind = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(err.to_string(), "Unknown config key sever.");
        let err = Settings::load(Sources {
            env: env(&[("AGENT_TOKENS__JWT__SECRET", "x")]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "Unknown config key jwt.secret.");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = load_toml("[storage]\ncache_mb = \"lots\"\n").unwrap_err();
        assert!(
            err.to_string().contains("storage.cache_mb"),
            "message was: {err}"
        );
        let err = load_toml("[server]\naccess_log = \"maybe\"\n").unwrap_err();
        assert!(
            err.to_string().contains("server.access_log"),
            "message was: {err}"
        );
    }

    #[test]
    fn a_missing_config_file_is_reported_plainly() {
        let err = Settings::load(Sources {
            file: Some(Path::new("/nonexistent/agent-tokens.toml")),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The config file /nonexistent/agent-tokens.toml does not exist or is not a file."
        );
    }

    #[test]
    fn invalid_toml_is_reported() {
        let err = load_toml("[server\n").unwrap_err();
        assert!(err.to_string().contains("is not valid TOML"), "{err}");
    }

    /// The toml crate quotes the offending line; a secret on it must not
    /// reach the terminal or the journal.
    #[test]
    fn a_toml_error_names_place_and_key_but_never_the_value() {
        const SECRET: &str = "SUPERSECRETVALUE0123456789abcdef";
        let cases: &[(String, &str)] = &[
            (
                format!("[jwt]\nhmac_secret = \"{SECRET}\n"),
                "at line 2, column 48 (key jwt.hmac_secret): invalid basic string, expected `\"`.",
            ),
            (
                format!("[jwt]\nhmac_secret = {SECRET}\n"),
                "at line 2, column 15 (key jwt.hmac_secret): string values must be quoted",
            ),
            (
                "[jwt]\nhmac_secret = 12345678901234567890123456789012345\n".to_owned(),
                "at line 2, column 15 (key jwt.hmac_secret): the integer is out of range (TOML integers are 64-bit).",
            ),
            (
                format!("[jwt]\nalgorithms = [\"HS256\"\nhmac_secret = \"{SECRET}\"\n"),
                "at line 3, column 1: missing comma between array elements",
            ),
        ];
        for (toml, expected) in cases {
            let err = load_toml(toml).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}\nexpected: {expected}");
            assert!(
                !err.contains(SECRET) && !err.contains("1234567890"),
                "{err}"
            );
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn semantic_checks_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "[server]\nbind = \"localhost\"\n",
                "server.bind must be an IP address and port such as 127.0.0.1:8080 (got \"localhost\").",
            ),
            ("[storage]\npath = \"\"\n", "storage.path must not be empty."),
            (
                "[server]\nmetrics_bind = \"localhost:9464\"\n",
                "server.metrics_bind must be an IP address and port such as 127.0.0.1:9464 (got \"localhost:9464\").",
            ),
            (
                "[server]\nbind = \"127.0.0.1:9000\"\nmetrics_bind = \"127.0.0.1:9000\"\n",
                "server.metrics_bind must differ from server.bind.",
            ),
            (
                "[limits]\nmax_header_bytes = 200000\n",
                "limits.max_header_bytes must be between 1024 and 131072.",
            ),
            (
                "[limits]\nclient_request_timeout_ms = 0\n",
                "limits.client_request_timeout_ms must be more than 0.",
            ),
            (
                "[limits]\nmax_connections = 0\n",
                "limits.max_connections must be more than 0.",
            ),
            (
                "[rate_limit]\nmanagement_burst = 0\n",
                "rate_limit.management_burst must be at least 1 when rate_limit.management_per_minute is set.",
            ),
            (
                "[rate_limit]\nper_address = true\naddress_per_minute = 0\n",
                "rate_limit.address_per_minute must be at least 1 when the per-address limit is on (rate_limit.per_address or rate_limit.client_ip_header).",
            ),
            (
                "[rate_limit]\nclient_ip_header = \"X-Real-IP\"\naddress_burst = 0\n",
                "rate_limit.address_burst must be at least 1 when the per-address limit is on (rate_limit.per_address or rate_limit.client_ip_header).",
            ),
            (
                "[rate_limit]\nclient_ip_header = \"X Real IP\"\n",
                "rate_limit.client_ip_header must be an HTTP header name such as X-Real-IP.",
            ),
            (
                "[server]\nshutdown_timeout_secs = 301\n",
                "server.shutdown_timeout_secs must be at most 300.",
            ),
            (
                "[server]\nworkers = 257\n",
                "server.workers must be at most 256 (0: one per CPU).",
            ),
            ("[storage]\ncache_mb = 0\n", "storage.cache_mb must be between 1 and 65536."),
            ("[jwt]\nalgorithms = []\n", "jwt.algorithms must list at least one algorithm."),
            ("[jwt]\nuser_claim = \" \"\n", "jwt.user_claim must not be empty."),
            ("[jwt]\nleeway_secs = 3600\n", "jwt.leeway_secs must be at most 600 seconds."),
            (
                "[jwt]\nissuer = \"\"\n",
                "jwt.issuer must not be empty when set; remove it to skip the issuer check.",
            ),
            (
                "[jwt]\naudience = \"\"\n",
                "jwt.audience must not be empty when set; remove it to skip the audience check.",
            ),
            (
                "[tokens]\nrotation_grace_secs = 2592001\n",
                "tokens.rotation_grace_secs must be at most 2592000 (30 days).",
            ),
            (
                "[verify]\napi_key_header = \"X API Key\"\n",
                "verify.api_key_header must be an HTTP header name such as X-API-Key.",
            ),
            (
                "[verify]\napi_key_header = \"authorization\"\n",
                "verify.api_key_header must not be Authorization, which verify reads already.",
            ),
            (
                "[introspection]\nclients_file = \"\"\n",
                "introspection.clients_file must not be empty when set; remove it to turn introspection off.",
            ),
            (
                "[tokens]\nmax_age_days = 0\n",
                "tokens.max_age_days must be between 1 and 36500 when set; remove it for tokens that do not expire.",
            ),
        ];
        for (toml, expected) in cases {
            let err = load_toml(toml).unwrap().validate().unwrap_err();
            assert_eq!(&err.to_string(), expected, "for config {toml:?}");
        }
    }

    #[test]
    fn workers_default_to_one_per_cpu_and_refuse_negative_counts() {
        assert_eq!(load_toml("").unwrap().server.workers, 0);
        assert_eq!(
            load_toml("[server]\nworkers = 3\n").unwrap().server.workers,
            3
        );
        let err = load_toml("[server]\nworkers = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.workers"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_hmac_secret() {
        let s =
            load_toml("[jwt]\nhmac_secret = \"super-secret-value-that-is-long-enough\"\n").unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("super-secret-value"), "{debug}");
    }
}
