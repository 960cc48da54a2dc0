//! The README's nginx `auth_request` recipe, run for real: nginx on loopback
//! in front of a small backend, asking the real app about every request.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::*;

const NGINX: &str = "/usr/sbin/nginx";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Starts nginx with `gateway/nginx.conf`, its addresses pointed at the test's ports.
fn start_nginx(agent_tokens_port: u16) -> Nginx {
    assert!(
        Path::new(NGINX).exists(),
        "nginx is not installed: run ./scripts/test.sh, which installs Debian's nginx-light"
    );
    let recipe_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway/nginx.conf");
    let recipe = std::fs::read_to_string(&recipe_path).unwrap();
    let (front, backend) = (free_port(), free_port());
    for needle in ["127.0.0.1:8080", "127.0.0.1:3000", "listen 80;"] {
        assert!(recipe.contains(needle), "the recipe no longer has {needle}");
    }
    let recipe = recipe
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{agent_tokens_port}"))
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{backend}"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{front};"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("recipe.conf"), recipe).unwrap();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let conf = format!(
        r#"{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # The small backend: echoes the user id nginx passed on.
    server {{
        listen 127.0.0.1:{backend};
        location / {{
            default_type text/plain;
            return 200 "backend saw user=$http_x_agent_user_id\n";
        }}
    }}
    include {d}/recipe.conf;
}}
"#,
        user = if root { "user root;" } else { "" },
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(NGINX)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nginx = Nginx {
        child,
        port: front,
        dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", front)).is_ok() {
            return nginx;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nginx did not start: {}", nginx.error_log());
}

#[tokio::test]
async fn nginx_auth_request_passes_valid_tokens_with_the_user_id_and_refuses_the_rest() {
    let app = spawn_app().await;
    let jwt = user_jwt("alice");
    let token = app.new_token(&jwt).await;
    let nginx = start_nginx(app.port);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/api/orders", nginx.port);

    // A valid token reaches the backend, with the user id header; a client
    // cannot smuggle its own user id past the gateway.
    for _ in 0..3 {
        let resp = client
            .get(&url)
            .bearer_auth(&token)
            .header("X-Agent-User-Id", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{}", nginx.error_log());
        assert_eq!(resp.text().await.unwrap(), "backend saw user=alice\n");
    }

    // No token, a bad token, a user JWT: 401 from nginx, never the backend.
    let mut flipped = token.clone();
    flipped.replace_range(20..21, if &token[20..21] == "0" { "1" } else { "0" });
    let no_token = client.get(&url).send().await.unwrap();
    assert_eq!(no_token.status().as_u16(), 401);
    for credential in [flipped.as_str(), "sk_agt_garbage", jwt.as_str()] {
        let resp = client
            .get(&url)
            .bearer_auth(credential)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "for {}", &credential[..10]);
        assert!(!resp.text().await.unwrap().contains("backend saw"));
    }

    // Revocation is seen by the very next request through the gateway.
    app.revoke(&jwt).await;
    let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        !nginx.error_log().contains("auth request unexpected status"),
        "{}",
        nginx.error_log()
    );
}
