//! Real consumers, configured as docs/verifiers.md says, against the real
//! app: an MCP server built with FastMCP (PyPI) using its
//! `IntrospectionTokenVerifier`, Apache httpd with mod_oauth2 (Debian)
//! using `OAuth2TokenVerify introspect`, and curl with the token as a
//! Basic password through the nginx recipe. `scripts/test.sh` installs
//! them all; a missing one fails the test, naming the script.
//!
//! Each starts in its own process group, stopped (workers included) when
//! the test ends, on loopback ports of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::gateway::{echoed, free_port, point, recipe, EchoBackend, Gateway};
use crate::helpers::*;
use crate::oauth2::{clients_file, with_introspection, CLIENT_ID, CLIENT_SECRET};

const APACHE: &str = "/usr/sbin/apache2";
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The venv `scripts/test.sh` makes with the pinned FastMCP.
fn consumers_python() -> PathBuf {
    let python = repo("target/consumers-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/test.sh, which installs FastMCP into it",
        python.display()
    );
    python
}

/// Runs a blocking command off the runtime's thread.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the command starts"))
        .await
        .unwrap()
}

async fn introspecting_app(tokens: &str) -> (TestApp, tempfile::TempDir) {
    let (dir, path) = clients_file();
    let config = TestConfig::hs256().with(&format!("[tokens]\n{tokens}"));
    (spawn_app_with(with_introspection(config, &path)).await, dir)
}

/// Calls the FastMCP server's `whoami` tool with `token`: the tool's
/// answer, or `None` when the server refused the call.
async fn call_whoami(url: &str, token: &str) -> Option<String> {
    let mut command = Command::new(consumers_python());
    command
        .arg(repo("tests/consumers/fastmcp_call.py"))
        .arg(url)
        .env("AGENT_TOKEN", token);
    let output = run(command).await;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[tokio::test]
async fn a_fastmcp_server_takes_live_agent_tokens_and_refuses_the_next_call_after_a_revoke() {
    let (app, _clients) = introspecting_app("").await;
    let port = free_port();
    let mut command = Command::new(consumers_python());
    command
        .arg(repo("tests/consumers/fastmcp_server.py"))
        .arg(port.to_string())
        .env(
            "AGENT_TOKENS_INTROSPECTION_URL",
            app.url("/oauth2/introspect"),
        )
        .env("AGENT_TOKENS_CLIENT_ID", CLIENT_ID)
        .env("AGENT_TOKENS_CLIENT_SECRET", CLIENT_SECRET);
    let server = Gateway::spawn(command, port, tempfile::tempdir().unwrap());
    let url = format!("http://127.0.0.1:{port}/mcp");

    let jwt = user_jwt("alice");
    let token = app.new_token(&jwt).await;
    assert_eq!(
        call_whoami(&url, &token).await.as_deref(),
        Some("alice"),
        "{}",
        server.log()
    );
    // Revoked through the OAuth route a resource server would use: the
    // very next call is refused (the verifier caches nothing).
    let resp = app
        .client
        .post(app.url("/oauth2/revoke"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(call_whoami(&url, &token).await, None);
    assert!(
        server.log().contains("\"POST /mcp HTTP/1.1\" 401"),
        "refused as unauthorized: {}",
        server.log()
    );
    // A new token works at once; one revoked by its user is refused next.
    let token = app.new_token(&jwt).await;
    assert_eq!(call_whoami(&url, &token).await.as_deref(), Some("alice"));
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    assert_eq!(call_whoami(&url, &token).await, None);
}

/// Apache httpd in the foreground with its own config in a temp dir: a
/// static file under `/protected`, guarded by mod_oauth2's introspection
/// with `options` (docs/verifiers.md). Access log lines are `%u %>s`.
fn start_apache(introspect_url: &str, options: &str) -> (Gateway, PathBuf) {
    assert!(
        Path::new(APACHE).exists() && Path::new(APACHE_MODULES).join("mod_oauth2.so").exists(),
        "apache2 with mod_oauth2 is not installed: run ./scripts/test.sh, which installs Debian's apache2 and libapache2-mod-oauth2"
    );
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("www/protected")).unwrap();
    std::fs::write(root.join("www/protected/hello.txt"), "hello\n").unwrap();
    let r = root.display();
    let m = APACHE_MODULES;
    // As root, Apache's children run as www-data: they must read the files.
    let user = if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::fs::PermissionsExt;
        for path in [
            root.to_path_buf(),
            root.join("www"),
            root.join("www/protected"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        "User www-data\nGroup www-data"
    } else {
        ""
    };
    let conf = format!(
        r#"ServerRoot {r}
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {r}/httpd.pid
ErrorLog {r}/error.log
Mutex file:{r}
{user}
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authz_user_module {m}/mod_authz_user.so
LoadModule oauth2_module {m}/mod_oauth2.so
CustomLog {r}/access.log "%u %>s"
DocumentRoot {r}/www
<Location /protected>
    AuthType oauth2
    OAuth2TokenVerify introspect {introspect_url} {options}
    Require valid-user
</Location>
"#
    );
    let conf_path = root.join("httpd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut command = Command::new(APACHE);
    command
        .arg("-d")
        .arg(root)
        .arg("-f")
        .arg(&conf_path)
        .arg("-DFOREGROUND");
    let access_log = root.join("access.log");
    (Gateway::spawn(command, port, dir), access_log)
}

/// The status Apache answers for `/protected/hello.txt` with `token`.
async fn through_apache(port: u16, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/protected/hello.txt"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The access log's lines once `count` are written (Apache writes after the answer).
async fn access_lines(log: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn apache_mod_oauth2_with_expiry_0_refuses_a_revoked_token_on_the_next_request() {
    let (app, _clients) = introspecting_app("").await;
    let options = format!(
        "introspect.auth=client_secret_basic&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}&expiry=0"
    );
    let (apache, access_log) = start_apache(&app.url("/oauth2/introspect"), &options);
    let jwt = user_jwt("bob");
    let token = app.new_token(&jwt).await;
    assert_eq!(
        through_apache(apache.port, &token).await,
        200,
        "{}",
        apache.log()
    );
    assert_eq!(through_apache(apache.port, "sk_agt_nope").await, 401);
    assert_eq!(app.revoke(&jwt).await.status().as_u16(), 204);
    assert_eq!(through_apache(apache.port, &token).await, 401);
    // Apache's user is the token's user (`sub`).
    let lines = access_lines(&access_log, 3).await;
    assert_eq!(lines, ["bob 200", "- 401", "- 401"], "{}", apache.log());
}

/// What docs/verifiers.md warns about: mod_oauth2's default cache keeps a
/// revoked token passing (300 s), which `expiry=0` turns off.
#[tokio::test]
async fn apache_mod_oauth2_with_its_default_cache_keeps_passing_a_revoked_token() {
    let (app, _clients) = introspecting_app("").await;
    let options = format!(
        "introspect.auth=client_secret_basic&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
    );
    let (apache, _) = start_apache(&app.url("/oauth2/introspect"), &options);
    let jwt = user_jwt("carol");
    let token = app.new_token(&jwt).await;
    assert_eq!(
        through_apache(apache.port, &token).await,
        200,
        "{}",
        apache.log()
    );
    app.revoke(&jwt).await;
    assert_eq!(app.verify_status(&token).await, 401);
    assert_eq!(through_apache(apache.port, &token).await, 200, "cached");
}

/// Runs curl against the nginx front; returns its status line's code and output.
async fn curl(args: &[&str]) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args);
    let output = run(command).await;
    assert!(output.status.success(), "curl failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

#[tokio::test]
async fn curl_with_the_token_as_a_basic_password_passes_the_nginx_recipe() {
    let app =
        spawn_app_with(TestConfig::hs256().with("[verify]\napi_key_header = \"X-API-Key\"")).await;
    let backend = EchoBackend::start();
    let front = free_port();
    let mut text = recipe("nginx.conf");
    text = point(text, "127.0.0.1:8080", &format!("127.0.0.1:{}", app.port));
    text = point(
        text,
        "127.0.0.1:3000",
        &format!("127.0.0.1:{}", backend.port),
    );
    text = point(text, "listen 80;", &format!("listen 127.0.0.1:{front};"));
    // The recipe's own line for verify.api_key_header, switched on.
    text = point(
        text,
        "# proxy_set_header X-API-Key $http_x_api_key;",
        "proxy_set_header X-API-Key $http_x_api_key;",
    );
    let nginx = crate::gateway::start_nginx_text(&text, front);
    let url = format!("http://127.0.0.1:{front}/api/repo.git/info/refs");
    let jwt = user_jwt("dave");
    let token = app.new_token(&jwt).await;

    // `curl -u user:TOKEN`, as git and registries send it.
    let (status, body) = curl(&["-u", &format!("git:{token}"), &url]).await;
    assert_eq!(status, 200, "{}", nginx.log());
    assert_eq!(echoed(&body, "x-agent-user-id"), ["dave"]);
    // `curl -u TOKEN:` (the token as the user name).
    let (status, body) = curl(&["-u", &format!("{token}:"), &url]).await;
    assert_eq!(
        (status, echoed(&body, "x-agent-user-id")),
        (200, vec!["dave".to_owned()])
    );
    // The bare token in the configured header.
    let (status, body) = curl(&["-H", &format!("X-API-Key: {token}"), &url]).await;
    assert_eq!(
        (status, echoed(&body, "x-agent-user-id")),
        (200, vec!["dave".to_owned()])
    );
    // A client that waits for a challenge (as git does) is offered Basic
    // through nginx, and then succeeds.
    let (status, _) = curl(&["--anyauth", "-u", &format!("git:{token}"), &url]).await;
    assert_eq!(status, 200, "{}", nginx.log());
    // A wrong password is refused; a revoked token is refused next time.
    let (status, _) = curl(&["-u", "git:not-a-token", &url]).await;
    assert_eq!(status, 401);
    app.revoke(&jwt).await;
    let (status, body) = curl(&["-u", &format!("git:{token}"), &url]).await;
    assert_eq!(status, 401);
    assert!(!body.contains("x-agent-user-id"));
}
