//! Starts the real application on port 0 with its own temporary data
//! directory, and signs user JWTs the way an issuer would.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use agent_tokens::config::{Overlay, Settings, Sources};
use agent_tokens::domain::clock::Clock;
use agent_tokens::domain::token::TokenHash;
use agent_tokens::http::app::{Application, StartupError};
use agent_tokens::store::offline::Offline;
use agent_tokens::store::{IndexEntry, UserRecord};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tempfile::TempDir;

pub use crate::common::{TestConfig, SECRET as HMAC_SECRET};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub data_dir: TempDir,
    pub config: TestConfig,
    /// The app's clock: frozen, moved only by `clock.advance(secs)`.
    pub clock: Clock,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<Result<(), StartupError>>,
}

pub use crate::common::pg;

/// Whether this run is against PostgreSQL (`AGENT_TOKENS_TEST_BACKEND=postgres`,
/// as scripts/test.sh runs the suite a second time) instead of the embedded store.
pub fn on_postgres() -> bool {
    std::env::var("AGENT_TOKENS_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// `config` on the backend under test. On PostgreSQL, each data
/// directory gets its own database, kept across restarts (its name is
/// written beside the store's path).
pub fn with_backend(config: TestConfig, db_path: &Path) -> TestConfig {
    if !on_postgres() {
        return config;
    }
    let cluster = pg::shared();
    let marker = db_path.with_extension("pg-database");
    let name = match std::fs::read_to_string(&marker) {
        Ok(name) => name,
        Err(_) => {
            let name = cluster.new_database();
            std::fs::write(&marker, &name).unwrap();
            name
        }
    };
    config
        .set("storage", "backend", "postgres")
        .set("storage", "url", cluster.url(&name))
        .set("storage", "pool_size", 8)
}

/// What the PostgreSQL database of the store at `db_path` holds.
pub fn stored_in_postgres(db_path: &Path) -> Stored {
    let name = std::fs::read_to_string(db_path.with_extension("pg-database")).unwrap();
    let store = agent_tokens::store::postgres::PgOffline::open(
        &agent_tokens::store::postgres::PgSettings {
            url: pg::shared().url(&name).into(),
            pool_size: 1,
        },
    )
    .unwrap();
    let snapshot = store.snapshot().unwrap();
    Stored {
        users: snapshot.users,
        grace_entries: snapshot
            .index
            .values()
            .filter(|e| e.grace_until.is_some())
            .count(),
        index: snapshot
            .index
            .into_iter()
            .map(|(hash, entry)| (TokenHash::from_bytes(hash), entry))
            .collect(),
    }
}

pub fn settings_for(config: &TestConfig, db_path: &Path) -> Settings {
    let toml = with_backend(config.clone(), db_path)
        .or_set("server", "access_log", false)
        .to_toml(db_path);
    Settings::load(Sources {
        file: None,
        overlay: Some(Overlay {
            toml,
            replaces: &[],
        }),
        env: Some(HashMap::new()),
    })
    .expect("test settings load")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestConfig::hs256()).await
}

pub async fn spawn_app_with(config: TestConfig) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    start_in(config, data_dir).await
}

async fn start_in(config: TestConfig, data_dir: TempDir) -> TestApp {
    TestApp::start_in(config, data_dir, Clock::manual()).await
}

impl TestApp {
    /// Starts the app on an existing data directory.
    pub async fn start_in(config: TestConfig, data_dir: TempDir, clock: Clock) -> TestApp {
        let settings = settings_for(&config, &data_dir.path().join("db"));
        let app = Application::build_with_clock(&settings, clock.clone()).expect("app builds");
        let port = app.port();
        let handle = app.handle();
        let task = tokio::spawn(app.run_until_stopped());
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            data_dir,
            config,
            clock,
            handle,
            task,
        }
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.path().join("db")
    }

    /// Stops the server gracefully and waits until the store is closed.
    pub async fn stop(self) -> (TempDir, TestConfig) {
        self.handle.stop(true).await;
        self.task.await.unwrap().unwrap();
        (self.data_dir, self.config)
    }

    /// Stops and starts again on the same data directory (a new port, the same clock).
    pub async fn restart(self) -> TestApp {
        let clock = self.clock.clone();
        let (dir, config) = self.stop().await;
        TestApp::start_in(config, dir, clock).await
    }

    /// Stops the server and opens its store directly to inspect what is stored.
    pub async fn stop_and_inspect(self) -> (Stored, TempDir) {
        let (dir, _) = self.stop().await;
        if on_postgres() {
            return (stored_in_postgres(&dir.path().join("db")), dir);
        }
        let store = Offline::open(&dir.path().join("db"), 8).unwrap();
        let stored = Stored {
            users: store.users().map(Result::unwrap).collect(),
            index: store.index_entries().map(Result::unwrap).collect(),
            grace_entries: store.grace_entries().unwrap(),
        };
        drop(store);
        (stored, dir)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req.send().await.unwrap()
    }

    pub async fn get_me(&self, jwt: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, "/api/agent-tokens/me", Some(jwt))
            .await
    }

    pub async fn rotate(&self, jwt: &str) -> reqwest::Response {
        self.request(reqwest::Method::POST, "/api/agent-tokens/me", Some(jwt))
            .await
    }

    pub async fn get_or_create(&self, jwt: &str) -> reqwest::Response {
        self.request(
            reqwest::Method::POST,
            "/api/agent-tokens/me/get-or-create",
            Some(jwt),
        )
        .await
    }

    pub async fn verify(&self, token: &str) -> reqwest::Response {
        self.request(
            reqwest::Method::GET,
            "/api/agent-tokens/verify",
            Some(token),
        )
        .await
    }

    pub async fn verify_status(&self, token: &str) -> u16 {
        self.verify(token).await.status().as_u16()
    }

    /// Rotates and returns the new raw token.
    pub async fn new_token(&self, jwt: &str) -> String {
        let resp = self.rotate(jwt).await;
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn revoke(&self, jwt: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, "/api/agent-tokens/me", Some(jwt))
            .await
    }
}

/// Everything in the two trees after a stop.
pub struct Stored {
    pub users: Vec<(String, UserRecord)>,
    pub index: Vec<(TokenHash, IndexEntry)>,
    pub grace_entries: usize,
}

/// SHA-256 of a token string, as the store keys it.
pub fn sha256(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().unwrap()
}

/// Standard claims for `sub`, valid for an hour.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iat": now(), "exp": now() + 3600 })
}

/// An HS256 user JWT for `sub` signed with [`HMAC_SECRET`].
pub fn user_jwt(sub: &str) -> String {
    sign_hs(Algorithm::HS256, &claims(sub), HMAC_SECRET.as_bytes())
}

pub fn sign_hs(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Signs with a private key fixture (`rsa`, `rsa_other`, `ec256`, `ec384`, `ed25519`, ...).
pub fn sign_with_key(alg: Algorithm, claims: &Value, key: &str, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture(&format!("{key}_private.pem"))).unwrap();
    let encoding = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => panic!("use sign_hs for HMAC"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &encoding).unwrap()
}

/// A JWT with arbitrary header JSON and signature bytes (for alg=none and similar).
pub fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string()),
        b64.encode(signature)
    )
}

/// Asserts a JSON error response with the given status and `error` code; returns the body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "content type"
    );
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code, "error code in {body}");
    assert!(body["message"].is_string(), "message in {body}");
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only error and message: {body}"
    );
    if status == 401 {
        let www = www.expect("401 carries WWW-Authenticate");
        assert!(www.starts_with("Bearer "), "{www}");
    }
    body
}

/// Asserts the page's 401 for a rejected user JWT.
pub async fn assert_invalid_jwt(resp: reqwest::Response) {
    assert_eq!(resp.status().as_u16(), 401);
    let www = resp
        .headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(www.starts_with("Bearer "), "{www}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["message"], "Missing or invalid JWT.");
}

/// Writes a sled directory directly: a store as releases before 0.2 left it.
/// Closes a sled store made by [`legacy_db`] and waits until its lock is
/// free: sled's background threads keep the file locked for a moment after
/// the last handle is dropped, and an open right after would find the store
/// "in use by another process" (a 0.1 server that exited holds nothing).
pub fn close_legacy(db: sled::Db, path: &Path) {
    db.flush().unwrap();
    drop(db);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let file = std::fs::File::open(path.join("db")).unwrap();
        match file.try_lock() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the sled store at {} stayed locked: {e:?}", path.display())
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

pub fn legacy_db(path: &Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .open()
        .unwrap()
}
