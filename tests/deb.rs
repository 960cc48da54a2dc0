//! The Debian package, for real on this host: built with cargo-deb from the
//! binary these tests run (the user's `cargo deb` builds a release binary;
//! the package's layout and scripts are the same), then installed, upgraded,
//! removed and purged with apt and dpkg. It changes the host's package
//! database, so it runs as root, one run at a time (a lock file), refuses
//! to touch an agent-tokens it did not install, and purges what it installed
//! even when it fails. ./scripts/test.sh installs cargo-deb.

mod common;

use common::{output_text as text, repo};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_agent-tokens");
const PACKAGE: &str = "agent-tokens";
/// Revisions only this test builds: an installed package with one of them
/// is a leftover of an interrupted run, safe to purge.
const FIRST: &str = "0test1";
const SECOND: &str = "0test2";
const MAX_EXPOSURE: f64 = 1.5;
const UNIT: &str = "/usr/lib/systemd/system/agent-tokens.service";
const CONFIG: &str = "/etc/agent-tokens/config.toml";
const SECRET: &str = "/etc/agent-tokens/jwt-secret";
const STATE: &str = "/var/lib/agent-tokens";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// dpkg does not wait for its lock: retry while another apt or dpkg holds it.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = run("dpkg", args);
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if out.status.success() || !locked || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn installed_version() -> Option<String> {
    let out = run(
        "dpkg-query",
        &["-W", "-f", "${Version} ${db:Status-Status}", PACKAGE],
    );
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    match answer.split_once(' ') {
        Some((version, status)) if out.status.success() && status != "not-installed" => {
            Some(format!("{version} {status}"))
        }
        _ => None,
    }
}

fn user_exists() -> bool {
    run("getent", &["passwd", PACKAGE]).status.success()
}

/// Holds the host for this test; purges the package (and removes the user
/// if this test created it) when dropped, also after a failed assertion.
struct Host {
    _lock: std::fs::File,
    user_existed: bool,
}

impl Host {
    fn take() -> Host {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test installs a package with dpkg: run it as root (CI does)"
        );
        let lock = std::fs::File::create("/run/lock/agent-tokens-deb-test.lock").unwrap();
        lock.lock().unwrap();
        if let Some(installed) = installed_version() {
            assert!(
                installed.contains(FIRST) || installed.contains(SECOND),
                "{PACKAGE} {installed} is installed on this host; this test would purge it"
            );
            let out = dpkg(&["--purge", PACKAGE]);
            assert!(out.status.success(), "{}", text(&out));
        }
        for path in ["/etc/agent-tokens", STATE, "/usr/bin/agent-tokens"] {
            assert!(
                !Path::new(path).exists(),
                "{path} exists outside the package (scripts/install.sh?); this test would remove it"
            );
        }
        Host {
            _lock: lock,
            user_existed: user_exists(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if installed_version().is_some() {
            let _ = dpkg(&["--purge", PACKAGE]);
        }
        if !self.user_existed && user_exists() {
            let _ = run("userdel", &[PACKAGE]);
        }
    }
}

/// Builds the package with `revision` from the test binary into `dir/out`.
fn build_deb(dir: &Path, revision: &str) -> PathBuf {
    // cargo-deb packs `target/release/agent-tokens` of the target directory
    // it is given: that is the binary under test here.
    let target = dir.join(format!("target-{revision}"));
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(BIN, target.join("release/agent-tokens")).unwrap();
    let out_dir = dir.join("out");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--deb-revision",
            revision,
            "-o",
        ])
        .arg(&out_dir)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cannot run cargo");
    assert!(
        out.status.success(),
        "cargo deb failed (./scripts/test.sh installs cargo-deb):\n{}",
        text(&out)
    );
    let deb = out_dir.join(format!(
        "{PACKAGE}_{}-{revision}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.exists(), "no {}:\n{}", deb.display(), text(&out));
    deb
}

fn mode_owner(path: &str) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
}

/// uid, gid, home, shell of the package's system user.
fn service_user() -> (u32, u32, String, String) {
    let out = run("getent", &["passwd", PACKAGE]);
    assert!(out.status.success(), "no user {PACKAGE}: {}", text(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = line.trim().split(':').collect();
    (
        fields[2].parse().unwrap(),
        fields[3].parse().unwrap(),
        fields[5].to_owned(),
        fields[6].to_owned(),
    )
}

fn exposure(unit: &str) -> f64 {
    let out = run("systemd-analyze", &["security", "--offline=true", unit]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for agent-tokens.service:"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{}", text(&out)));
    println!("{line}");
    line.split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from {line:?}"))
}

/// The installed binary, started as the service's user on the installed
/// config and store (a free port, and a test secret it can read).
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    fn start(secret_file: &Path) -> Service {
        let (uid, gid, _, _) = service_user();
        let mut child = Command::new("/usr/bin/agent-tokens")
            .args(["serve", "--config", CONFIG])
            .env("AGENT_TOKENS__SERVER__BIND", "127.0.0.1:0")
            .env("AGENT_TOKENS__JWT__HMAC_SECRET_FILE", secret_file)
            .env("RUST_LOG", "info")
            .current_dir("/")
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let Some(rest) = seen.split("listening on port ").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    if rest.len() > port.len() {
                        let _ = tx.send(Ok(port.parse::<u16>().unwrap()));
                        seen.clear();
                    }
                }
            }
            let _ = tx.send(Err(seen));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(port)) => Service { child, port },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the installed binary did not start: {other:?}")
            }
        }
    }

    /// One HTTP/1.1 request; returns the status and the whole answer.
    fn request(&self, method: &str, path: &str, bearer: &str) -> (u16, String) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {bearer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not HTTP: {answer:?}"));
        (status, answer)
    }

    fn stop(mut self) {
        // SAFETY: signals the child this struct started.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "stopped with {status}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user_jwt(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": sub, "iat": now, "exp": now + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn assert_verifies_as(service: &Service, token: &str, user: &str) {
    let (status, answer) = service.request("GET", "/api/agent-tokens/verify", token);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("x-agent-user-id: {user}\r\n")),
        "{answer}"
    );
}

#[test]
fn the_debian_package_installs_upgrades_removes_and_purges_with_dpkg() {
    let host = Host::take();
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| build_deb(work.path(), FIRST));
        let second = s.spawn(|| build_deb(work.path(), SECOND));
        (first.join().unwrap(), second.join().unwrap())
    });
    println!(
        "two packages built in {:.0?} ({} bytes each)",
        started.elapsed(),
        std::fs::metadata(&first).unwrap().len()
    );

    // Install as the README says: apt installs a local file with its dependencies.
    let out = run(
        "apt-get",
        &[
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=300",
            first.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    if !host.user_existed {
        assert!(
            said.contains("created the system user agent-tokens"),
            "{said}"
        );
    }
    assert!(
        said.contains("generated /etc/agent-tokens/jwt-secret"),
        "{said}"
    );
    assert!(
        said.contains("systemctl enable --now agent-tokens"),
        "{said}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        installed_version().unwrap(),
        format!("{version}-{FIRST} installed")
    );

    // The files, their owners and modes.
    assert_eq!(mode_owner("/usr/bin/agent-tokens"), (0o755, 0, 0));
    let out = run("/usr/bin/agent-tokens", &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("agent-tokens {version}")
    );
    assert_eq!(mode_owner(UNIT), (0o644, 0, 0));
    assert_eq!(
        std::fs::read_to_string(UNIT).unwrap(),
        std::fs::read_to_string(repo().join("debian/agent-tokens.service")).unwrap()
    );
    assert_eq!(mode_owner(CONFIG), (0o644, 0, 0));
    assert_eq!(
        std::fs::read_to_string(CONFIG).unwrap(),
        std::fs::read_to_string(repo().join("config/agent-tokens.systemd.toml")).unwrap()
    );
    let out = run("dpkg-query", &["-W", "-f", "${Conffiles}", PACKAGE]);
    let conffiles = String::from_utf8_lossy(&out.stdout);
    assert!(conffiles.contains(CONFIG), "conffiles: {conffiles}");
    assert!(
        !conffiles.contains(SECRET),
        "the secret is not the package's: {conffiles}"
    );
    assert_eq!(mode_owner(SECRET), (0o600, 0, 0));
    let secret = std::fs::read_to_string(SECRET).unwrap();
    assert!(
        secret.len() == 65 && secret.trim_end().bytes().all(|b| b.is_ascii_hexdigit()),
        "32 random bytes as hex and a newline"
    );
    assert!(!said.contains(secret.trim_end()), "the secret was printed");
    let (uid, gid, home, shell) = service_user();
    assert!(uid > 0 && uid < 1000, "a system user: uid {uid}");
    assert_eq!(
        (home.as_str(), shell.as_str()),
        (STATE, "/usr/sbin/nologin")
    );
    assert!(run("getent", &["group", PACKAGE]).status.success());
    assert_eq!(mode_owner(STATE), (0o700, uid, gid));

    // systemd accepts the installed unit, sandboxed as the tested one.
    let out = run("systemd-analyze", &["verify", UNIT]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    let score = exposure(UNIT);
    assert!(score <= MAX_EXPOSURE, "exposure {score} > {MAX_EXPOSURE}");

    // Data, written by the installed binary as the service's user.
    let secret_dir = work.path().join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let test_secret = "deb-test-secret-of-at-least-32-bytes!!";
    let secret_file = secret_dir.join("jwt-secret");
    std::fs::write(&secret_file, format!("{test_secret}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let service = Service::start(&secret_file);
    let (status, answer) = service.request(
        "POST",
        "/api/agent-tokens/me",
        &user_jwt(test_secret, "alice"),
    );
    assert_eq!(status, 200, "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let token = json["token"].as_str().unwrap().to_owned();
    assert_verifies_as(&service, &token, "alice");
    service.stop();
    assert!(Path::new(STATE).join("db").is_dir());

    // The operator edits the config; an upgrade keeps it, the secret and the data.
    let edited = format!(
        "{}# edited by the operator\n",
        std::fs::read_to_string(CONFIG).unwrap()
    );
    std::fs::write(CONFIG, &edited).unwrap();
    let out = dpkg(&["-i", second.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        installed_version().unwrap(),
        format!("{version}-{SECOND} installed")
    );
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    assert!(!Path::new("/etc/agent-tokens/config.toml.dpkg-dist").exists());
    assert_eq!(std::fs::read_to_string(SECRET).unwrap(), secret);
    assert_eq!(mode_owner(STATE), (0o700, uid, gid));
    let service = Service::start(&secret_file);
    assert_verifies_as(&service, &token, "alice");
    service.stop();

    // dpkg -r: the program goes, the data and the config stay.
    let out = dpkg(&["-r", PACKAGE]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("kept the token store /var/lib/agent-tokens"),
        "{said}"
    );
    assert!(!Path::new("/usr/bin/agent-tokens").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(
        Path::new(STATE).join("db").is_dir(),
        "dpkg -r removed the data"
    );
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    assert_eq!(std::fs::read_to_string(SECRET).unwrap(), secret);
    assert_eq!(
        installed_version().unwrap(),
        format!("{version}-{SECOND} config-files")
    );

    // dpkg --purge: says what it removes, and removes it.
    let out = dpkg(&["--purge", PACKAGE]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{said}");
    for line in [
        "removing /var/lib/agent-tokens (the token store",
        "removing /etc/agent-tokens/jwt-secret",
        "removing /etc/agent-tokens",
    ] {
        assert!(said.contains(line), "purge did not say {line:?}:\n{said}");
    }
    for path in [STATE, SECRET, CONFIG, "/etc/agent-tokens"] {
        assert!(!Path::new(path).exists(), "{path} survived the purge");
    }
    assert_eq!(installed_version(), None);
    drop(host);
    if !user_exists() {
        println!("the test's system user was removed again");
    }
}
