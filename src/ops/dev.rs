//! `serve --dev`: a working service in one command for a newcomer.
//!
//! A throw-away data directory (deleted on exit) and a random HS256 secret,
//! layered between the config file and the environment, plus a ready user
//! JWT on stdout. Never for production: the secret dies with the process.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use tempfile::TempDir;

use crate::config::{Overlay, Settings};

/// The `sub` of the printed JWT.
pub const DEV_USER: &str = "dev-user";
const DEV_JWT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub struct DevMode {
    data_dir: TempDir,
    secret: SecretString,
}

impl DevMode {
    pub fn new() -> std::io::Result<Self> {
        let data_dir = tempfile::Builder::new()
            .prefix("agent-tokens-dev-")
            .tempdir()?;
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("the system random number generator failed"))?;
        let secret = SecretString::from(hex::encode(bytes));
        Ok(Self { data_dir, secret })
    }

    /// The settings layered above the config file and below the
    /// environment. They take over the file's JWT key material (a file
    /// naming an RSA key or a secret file would otherwise conflict with the
    /// dev secret); the file's issuer, audience and claim still apply, and
    /// the environment still wins.
    pub fn overlay(&self) -> Overlay {
        Overlay {
            toml: self.overlay_toml(),
            replaces: &[
                "storage.path",
                "jwt.algorithms",
                "jwt.hmac_secret",
                "jwt.hmac_secret_file",
                "jwt.public_key_file",
                "jwt.jwks_file",
                "jwt.jwks_url",
                "jwt.oidc_discovery_url",
                "jwt.ca_file",
            ],
        }
    }

    fn overlay_toml(&self) -> String {
        let mut storage = toml_table();
        storage.insert(
            "path".into(),
            Value::String(self.data_dir.path().join("db").display().to_string()),
        );
        let mut jwt = toml_table();
        jwt.insert("algorithms".into(), json!(["HS256"]));
        jwt.insert(
            "hmac_secret".into(),
            Value::String(self.secret.expose_secret().to_owned()),
        );
        format!(
            "[storage]\n{}\n[jwt]\n{}\n",
            toml_lines(&storage),
            toml_lines(&jwt)
        )
    }

    /// Prints the dev banner, a user JWT and a curl line to stdout.
    pub fn announce(&self, settings: &Settings, port: u16) {
        let host = settings
            .bind_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| "127.0.0.1".into());
        let host = match host.as_str() {
            "0.0.0.0" => "127.0.0.1".to_owned(),
            "::" => "[::1]".to_owned(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_owned(),
        };
        let base = format!("http://{host}:{port}");
        // One write, and none of it may panic: `serve --dev | head` must
        // not take the server down when the reader leaves.
        let mut text = String::new();
        let _ = writeln!(
            text,
            "agent-tokens {} — DEV MODE",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            text,
            "  This is a development mode: data lives in a throw-away directory and the JWT"
        );
        let _ = writeln!(
            text,
            "  secret is random and dies with the process. Do not use it in production."
        );
        let _ = writeln!(
            text,
            "  Data directory: {}",
            settings.storage.path.display()
        );
        let _ = writeln!(text, "  Listening on:   {base}");
        match self.user_jwt(settings) {
            Some(jwt) => {
                let _ = writeln!(text);
                let _ = writeln!(text, "A user JWT for {DEV_USER:?}, valid for 24 hours:");
                let _ = writeln!(text);
                let _ = writeln!(text, "  {jwt}");
                let _ = writeln!(text);
                let _ = writeln!(text, "Get (or create) that user's agent token:");
                let _ = writeln!(text);
                let _ = writeln!(
                    text,
                    "  curl -s -X POST {base}/api/agent-tokens/me/get-or-create -H \"Authorization: Bearer {jwt}\""
                );
            }
            None => {
                let _ = writeln!(
                    text,
                    "  (No user JWT printed: the environment replaced the dev HS256 secret.)"
                );
            }
        }
        let _ = writeln!(text);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// A JWT signed with the effective HMAC secret, if it is still HS256-capable.
    fn user_jwt(&self, settings: &Settings) -> Option<String> {
        let secret = settings.jwt.hmac_secret.as_ref()?;
        if !settings.jwt.algorithms.iter().any(|a| a == "HS256") {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        let mut claims = Map::new();
        claims.insert(settings.jwt.user_claim.clone(), json!(DEV_USER));
        claims.insert("iat".into(), json!(now.as_secs()));
        claims.insert("exp".into(), json!((now + DEV_JWT_LIFETIME).as_secs()));
        if let Some(iss) = &settings.jwt.issuer {
            claims.insert("iss".into(), json!(iss));
        }
        if let Some(aud) = &settings.jwt.audience {
            claims.insert("aud".into(), json!(aud));
        }
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        )
        .ok()
    }
}

fn toml_table() -> Map<String, Value> {
    Map::new()
}

/// `key = value` lines; JSON string and array syntax is valid TOML for these values.
fn toml_lines(table: &Map<String, Value>) -> String {
    table
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}
