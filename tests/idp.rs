//! Keys from an identity provider's URL, and reloads: against a real
//! OpenID provider on loopback (npm's oauth2-mock-server, installed into
//! tests/idp by scripts/test.sh and driven by tests/idp/provider.js), a tiny
//! JWKS server here for answers no real provider gives, and the built binary
//! for SIGHUP.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use agent_tokens::config::{Overlay, Settings, Sources};
use agent_tokens::http::app::{Application, StartupError};
use agent_tokens::http::reload::{ReloadResult, Reloads};
use serde_json::{json, Value};
use tempfile::TempDir;

const AUDIENCE: &str = "agent-tokens";

// --- the provider ---

/// oauth2-mock-server on 127.0.0.1, stopped (and waited for) on drop.
struct Provider {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: mpsc::Receiver<String>,
    issuer: String,
    /// The key it signs with from the start.
    kid: String,
}

impl Provider {
    fn start() -> Provider {
        let dir = common::repo().join("tests/idp");
        assert!(
            dir.join("node_modules/oauth2-mock-server").is_dir(),
            "tests/idp/node_modules is missing: scripts/test.sh installs it (npm ci in tests/idp)"
        );
        let mut child = Command::new("node")
            .arg("provider.js")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (scripts/test.sh installs it)");
        let stdin = child.stdin.take();
        let answers = common::lines_of(child.stdout.take().unwrap());
        let first: Value = serde_json::from_str(
            &answers
                .recv_timeout(Duration::from_secs(30))
                .expect("the provider announces itself"),
        )
        .unwrap();
        Provider {
            child,
            stdin,
            answers,
            issuer: first["issuer"].as_str().unwrap().to_owned(),
            kid: first["kid"].as_str().unwrap().to_owned(),
        }
    }

    fn call(&mut self, command: Value) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let answer: Value = serde_json::from_str(
            &self
                .answers
                .recv_timeout(Duration::from_secs(20))
                .expect("the provider answers"),
        )
        .unwrap();
        assert!(answer.get("error").is_none(), "{command} -> {answer}");
        answer
    }

    /// A token for `sub` signed with the key `kid`.
    fn token(&mut self, kid: &str, sub: &str) -> String {
        let answer = self.call(json!({ "op": "token", "kid": kid, "sub": sub, "aud": AUDIENCE }));
        answer["token"].as_str().unwrap().to_owned()
    }

    /// Publishes a new key and returns its kid.
    fn rotate(&mut self) -> String {
        self.call(json!({ "op": "rotate" }))["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn remove(&mut self, kid: &str) {
        self.call(json!({ "op": "remove", "kid": kid }));
    }

    /// How many times the JWKS was served.
    fn jwks_answers(&mut self) -> u64 {
        self.call(json!({ "op": "stats" }))["jwks"]
            .as_u64()
            .unwrap()
    }

    /// The discovery config for this provider.
    fn discovery_config(&self) -> String {
        format!(
            "algorithms = [\"RS256\"]\noidc_discovery_url = \"{}\"\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"",
            self.issuer, self.issuer
        )
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- the server, in process ---

struct App {
    base: String,
    client: reqwest::Client,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<Result<(), StartupError>>,
    reloads: Reloads,
}

/// Starts the app with this `[jwt]` body on the data directory `data`.
async fn start_app(jwt: &str, data: &Path) -> App {
    let toml = format!(
        "[server]\nbind = \"127.0.0.1:0\"\naccess_log = false\n[storage]\npath = \"{}\"\ncache_mb = 8\n[rate_limit]\nmanagement_per_minute = 0\n[jwt]\n{jwt}\n",
        data.display()
    );
    let settings = Settings::load(Sources {
        file: None,
        overlay: Some(Overlay {
            toml,
            replaces: &[],
        }),
        env: Some(HashMap::new()),
    })
    .expect("test settings load");
    let app = Application::build(&settings).expect("app builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let reloads = app.reloads();
    let task = tokio::spawn(app.run_until_stopped());
    App {
        base,
        client: reqwest::Client::new(),
        handle,
        task,
        reloads,
    }
}

impl App {
    /// `GET /api/agent-tokens/me` with this JWT: the status and JSON body.
    async fn me(&self, jwt: &str) -> (u16, Value) {
        common::call(
            &self.client,
            reqwest::Method::GET,
            &format!("{}/api/agent-tokens/me", self.base),
            jwt,
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// What `SIGHUP` does.
    async fn reload(&self) -> ReloadResult {
        let outcomes = self.reloads.run().await;
        assert_eq!(outcomes.len(), 1, "one hook: the JWT keys");
        outcomes.into_iter().next().unwrap().1
    }

    async fn stop(self) {
        self.handle.stop(true).await;
        self.task.await.unwrap().unwrap();
    }
}

/// A counter's value in the metrics text (summed over matching lines).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// --- with the provider ---

#[tokio::test]
async fn tokens_the_provider_issues_are_accepted() {
    let mut idp = Provider::start();
    let data = TempDir::new().unwrap();
    let app = start_app(&idp.discovery_config(), &data.path().join("db")).await;
    assert_eq!(app.get("/readyz").await.0, 200);
    let token = idp.token(&idp.kid.clone(), "alice");
    let (status, body) = app.me(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["has_token"], false, "{body}");

    // Another application's token from the same provider: wrong audience.
    let other = idp.call(json!({ "op": "token", "kid": idp.kid, "sub": "alice", "aud": "wiki" }));
    assert_eq!(app.me(other["token"].as_str().unwrap()).await.0, 401);

    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "agent_tokens_idp_key_fetches_total{result=\"ok\"}"
        ) >= 1.0
    );
    assert!(
        metrics.contains("agent_tokens_jwt_keys_loaded "),
        "{metrics}"
    );
    assert!(
        metrics.contains("agent_tokens_jwt_key_set_age_seconds "),
        "{metrics}"
    );
    // The saved copy holds the public key only.
    let saved = std::fs::read_to_string(data.path().join("db/idp-keys.json")).unwrap();
    assert!(
        saved.contains(&idp.kid) && !saved.contains("\"d\""),
        "{saved}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_new_key_is_used_at_once_without_a_restart_and_unknown_kids_fetch_once_per_cooldown() {
    let mut idp = Provider::start();
    let data = TempDir::new().unwrap();
    let app = start_app(&idp.discovery_config(), &data.path().join("db")).await;
    let at_start = idp.jwks_answers();

    // The provider rotates a second after our start: the first token signed
    // with the new key fetches the set (the start does not begin the
    // cooldown), once for all the requests that arrive together.
    let new_kid = idp.rotate();
    let token = idp.token(&new_kid, "carol");
    let answers = futures::future::join_all((0..8).map(|_| app.me(&token))).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(idp.jwks_answers(), at_start + 1);

    // Within the cooldown, another unknown kid is refused without a fetch.
    let later_kid = idp.rotate();
    let later = idp.token(&later_kid, "dave");
    let (status, body) = app.me(&later).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(idp.jwks_answers(), at_start + 1);

    // A reload fetches whatever the cooldown.
    let summary = app.reload().await.unwrap();
    assert!(summary.contains("3 key(s)"), "{summary}");
    assert_eq!(app.me(&later).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_removed_key_is_refused_after_the_refresh_even_when_remembered() {
    let mut idp = Provider::start();
    let data = TempDir::new().unwrap();
    let app = start_app(&idp.discovery_config(), &data.path().join("db")).await;
    let old_kid = idp.kid.clone();
    let old = idp.token(&old_kid, "erin");
    assert_eq!(app.me(&old).await.0, 200);

    let new_kid = idp.rotate();
    idp.remove(&old_kid);
    // Until the set is fetched again, the key is still ours.
    assert_eq!(app.me(&old).await.0, 200);
    app.reload().await.unwrap();
    let (status, body) = app.me(&old).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(app.me(&idp.token(&new_kid, "frank")).await.0, 200);

    let saved = std::fs::read_to_string(data.path().join("db/idp-keys.json")).unwrap();
    assert!(saved.contains(&new_kid) && !saved.contains(&old_kid));
    app.stop().await;
}

#[tokio::test]
async fn with_the_provider_down_known_keys_pass_and_a_restart_uses_the_saved_set() {
    let mut idp = Provider::start();
    let config = idp.discovery_config();
    let data = TempDir::new().unwrap();
    let db = data.path().join("db");
    let app = start_app(&config, &db).await;
    let kid = idp.kid.clone();
    let (first, second, third) = (
        idp.token(&kid, "gina"),
        idp.token(&kid, "hugo"),
        idp.token(&kid, "ines"),
    );
    assert_eq!(app.me(&first).await.0, 200);
    drop(idp);

    // Down: a token never seen before, signed with a known key, passes;
    // a refetch fails and keeps the set.
    assert_eq!(app.me(&second).await.0, 200);
    let failed = app.reload().await.unwrap_err();
    assert!(failed.contains("cannot be reached"), "{failed}");
    assert_eq!(app.me(&second).await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    app.stop().await;

    // A restart while it is still down verifies with the saved set.
    let started = Instant::now();
    let app = start_app(&config, &db).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(app.get("/readyz").await.0, 200);
    assert_eq!(app.me(&third).await.0, 200);
    app.stop().await;

    // Without a saved copy there is no key set: not ready, and user JWTs
    // get a 503 that says why (not a 401 that blames the token).
    let empty = TempDir::new().unwrap();
    let app = start_app(&config, &empty.path().join("db")).await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_ready"), "{body}");
    let (status, body) = app.me(&third).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "not_ready");
    app.stop().await;
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let mut idp = Provider::start();
    let config = format!(
        "algorithms = [\"RS256\"]\noidc_discovery_url = \"{}\"\nissuer = \"https://sso.example/realms/acme\"\naudience = \"{AUDIENCE}\"",
        idp.issuer
    );
    let data = TempDir::new().unwrap();
    let app = start_app(&config, &data.path().join("db")).await;
    assert_eq!(app.get("/readyz").await.0, 503);
    let token = idp.token(&idp.kid.clone(), "jade");
    assert_eq!(app.me(&token).await.0, 503);
    let refused = app.reload().await.unwrap_err();
    assert!(
        refused.contains(&format!(
            "names the issuer \"{}\", not jwt.issuer \"https://sso.example/realms/acme\"",
            idp.issuer
        )),
        "{refused}"
    );
    assert_eq!(
        idp.jwks_answers(),
        0,
        "the JWKS of a wrong issuer is never fetched"
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "agent_tokens_idp_key_fetches_total{result=\"issuer_mismatch\"}"
        ) >= 2.0
    );
    assert!(!data.path().join("db/idp-keys.json").exists());
    app.stop().await;
}

// --- answers no real provider should give ---

#[derive(Clone, Copy, Debug)]
enum Serve {
    Good,
    Garbage,
    Huge,
    Slow,
    Failing,
}

/// A JWKS endpoint on loopback whose answer the test picks.
struct JwksServer {
    port: u16,
    serve: Arc<Mutex<Serve>>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    fn start() -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let serve = Arc::new(Mutex::new(Serve::Good));
        let stop = Arc::new(AtomicBool::new(false));
        let (mode, stopping) = (Arc::clone(&serve), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let serve = *mode.lock().unwrap();
                std::thread::spawn(move || answer(stream, serve));
            }
        });
        JwksServer { port, serve, stop }
    }

    fn set(&self, serve: Serve) {
        *self.serve.lock().unwrap() = serve;
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks", self.port)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn fixture_rsa_jwks() -> String {
    let set: Value = serde_json::from_slice(
        &std::fs::read(common::repo().join("tests/fixtures/jwks.json")).unwrap(),
    )
    .unwrap();
    let rsa: Vec<&Value> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kid"] == "rsa-1")
        .collect();
    json!({ "keys": rsa }).to_string()
}

fn answer(mut stream: TcpStream, serve: Serve) {
    let mut head = Vec::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push(line);
    }
    let good = fixture_rsa_jwks();
    let _ = match serve {
        Serve::Good => write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=3600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{good}",
            good.len()
        ),
        Serve::Garbage => write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 19\r\nConnection: close\r\n\r\n<html>oops</html>\r\n"
        ),
        Serve::Failing => write!(
            stream,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        // No length announced: only counting what arrives can stop it.
        Serve::Huge => (|| {
            write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{{\"keys\": [")?;
            let filler = [b' '; 64 * 1024];
            for _ in 0..64 {
                stream.write_all(&filler)?;
            }
            write!(stream, "]}}")
        })(),
        Serve::Slow => (|| {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                good.len()
            )?;
            for byte in good.bytes() {
                stream.write_all(&[byte])?;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(())
        })(),
    };
    let mut rest = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.read_to_end(&mut rest);
}

/// An RS256 token signed with the fixture key rsa-1.
fn rsa_token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".to_owned());
    let key = std::fs::read(common::repo().join("tests/fixtures/rsa_private.pem")).unwrap();
    jsonwebtoken::encode(
        &header,
        &json!({ "sub": sub, "exp": now + 600, "aud": AUDIENCE }),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn garbage_huge_slow_and_failing_jwks_answers_keep_the_set_in_use() {
    let server = JwksServer::start();
    let data = TempDir::new().unwrap();
    let config = format!(
        "algorithms = [\"RS256\"]\njwks_url = \"{}\"\naudience = \"{AUDIENCE}\"",
        server.url()
    );
    let app = start_app(&config, &data.path().join("db")).await;
    assert_eq!(app.me(&rsa_token("kim")).await.0, 200);

    for (serve, expected) in [
        (Serve::Garbage, "refused: the answer is not JSON"),
        (Serve::Huge, "answered more than 256 KiB"),
        (Serve::Slow, "did not answer within 5 s"),
        (Serve::Failing, "answered HTTP 500"),
    ] {
        server.set(serve);
        let started = Instant::now();
        let refused = app.reload().await.unwrap_err();
        assert!(refused.contains(expected), "{serve:?}: {refused}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{serve:?} took {:?}",
            started.elapsed()
        );
        // A token not seen before still verifies with the set in use.
        let (status, body) = app.me(&rsa_token(&format!("{serve:?}"))).await;
        assert_eq!(status, 200, "{serve:?}: {body}");
    }
    let (_, metrics) = app.get("/metrics").await;
    for result in ["invalid", "too_large", "timeout", "http_error"] {
        let name = format!("agent_tokens_idp_key_fetches_total{{result=\"{result}\"}}");
        assert!(metric(&metrics, &name) >= 1.0, "{name} in\n{metrics}");
    }
    app.stop().await;
}

// --- the binary: SIGHUP and check-config ---

#[test]
fn sighup_reads_the_key_file_again_and_a_bad_file_keeps_the_old_key() {
    let dir = TempDir::new().unwrap();
    let config = common::write_config(dir.path());
    let mut server = common::Server::start(&config);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let me = |jwt: String| {
        let url = format!("{}/api/agent-tokens/me", server.base());
        runtime
            .block_on(common::call(&client, reqwest::Method::GET, &url, &jwt))
            .0
    };
    let old = common::hs256_jwt("lena");
    assert_eq!(me(old.clone()), 200);

    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, "too-short\n").unwrap();
    server.signal("HUP");
    common::wait_for_line(
        &server.log,
        "reload: JWT keys: jwt.hmac_secret_file must be at least 32 bytes long. The previous keys stay in force.",
        &mut Vec::new(),
    );
    assert_eq!(me(old.clone()), 200);

    let new_secret = "a-new-secret-that-is-at-least-32-bytes";
    std::fs::write(&secret_file, format!("{new_secret}\n")).unwrap();
    server.signal("HUP");
    common::wait_for_line(
        &server.log,
        "reload: JWT keys: an HMAC secret loaded",
        &mut Vec::new(),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let new = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "lena", "exp": now + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(new_secret.as_bytes()),
    )
    .unwrap();
    assert_eq!(me(new), 200);
    assert_eq!(me(old), 401);
    assert!(server.terminate().success());
}

fn check_config(jwt: &str) -> std::process::Output {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\n[jwt]\n{jwt}\n",
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

#[test]
fn check_config_explains_url_sources_without_fetching() {
    let ok = check_config(&format!(
        "algorithms = [\"RS256\"]\noidc_discovery_url = \"https://sso.example/realms/acme\"\naudience = \"{AUDIENCE}\""
    ));
    assert!(ok.status.success(), "{}", common::output_text(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(
        "JWT RS256 with keys fetched as https://sso.example/realms/acme/.well-known/openid-configuration names them"
    ), "{}", common::output_text(&ok));

    for (jwt, sentence) in [
        (
            "algorithms = [\"RS256\"]\njwks_url = \"http://sso.lan/certs\"\naudience = \"a\"".to_owned(),
            "jwt.jwks_url must be an https:// URL (plain http is accepted only to a loopback address such as 127.0.0.1): http://sso.lan/certs is not.".to_owned(),
        ),
        (
            "algorithms = [\"RS256\"]\njwks_url = \"https://sso.lan/certs\"\njwks_file = \"/etc/jwks.json\"\naudience = \"a\"".to_owned(),
            "Set only one JWT key source: jwt.jwks_file, jwt.jwks_url are all set, and jwt.jwks_url brings every key the identity provider publishes; remove the others.".to_owned(),
        ),
        (
            "algorithms = [\"RS256\"]\njwks_url = \"https://sso.lan/certs\"\nca_file = \"/nonexistent/ca.pem\"\naudience = \"a\"".to_owned(),
            "jwt.ca_file /nonexistent/ca.pem cannot be read: No such file or directory (os error 2).".to_owned(),
        ),
        (
            "algorithms = [\"HS256\"]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\nca_file = \"/etc/ssl/ca.pem\"".to_owned(),
            "jwt.ca_file is set but neither jwt.jwks_url nor jwt.oidc_discovery_url is: it only serves those URLs.".to_owned(),
        ),
    ] {
        let out = check_config(&jwt);
        assert_eq!(out.status.code(), Some(78), "{}", common::output_text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&sentence),
            "{sentence}\n{}",
            common::output_text(&out)
        );
    }
}
