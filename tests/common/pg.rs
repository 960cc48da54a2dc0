//! A real PostgreSQL for tests, from Debian's `postgresql` package
//! (scripts/test.sh installs it): a cluster in a temporary directory,
//! run as an unprivileged system user when the tests run as root (the
//! server refuses root), listening on 127.0.0.1 and a free port.
//!
//! [`shared`] is one cluster per test binary, stopped when the binary
//! exits: its supervisor shell stops the server once its stdin (a pipe
//! this process holds) closes. [`Cluster::start`] is a cluster of one's own
//! that a test can stop and start again; it is stopped when dropped.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The unprivileged user the server runs as when the tests run as root.
const PG_USER: &str = "agent-tokens-test-pg";

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL is not installed: run scripts/test.sh (it installs Debian's postgresql)",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: run scripts/test.sh")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command run as [`PG_USER`] when root, else as is.
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", PG_USER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn ensure_user() {
    if !is_root() {
        return;
    }
    let exists = Command::new("id")
        .arg(PG_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ])
            .status()
            .expect("cannot run useradd (Debian's passwd package; scripts/test.sh runs on Debian)");
        // Another test binary may have created it meanwhile.
        assert!(
            status.success() || Command::new("id").arg(PG_USER).status().unwrap().success(),
            "cannot create the user {PG_USER}"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL cluster in a temporary directory.
pub struct Cluster {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    server: Mutex<Option<(Child, ChildStdin)>>,
    databases: AtomicUsize,
    /// The shared cluster's directory outlives this process's destructors:
    /// the supervisor removes it after the server stops.
    remove_dir_after_stop: bool,
}

impl Cluster {
    /// Creates and starts a cluster.
    pub fn start() -> Cluster {
        Self::start_with(false)
    }

    fn start_with(remove_dir_after_stop: bool) -> Cluster {
        ensure_user();
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("agent-tokens-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", PG_USER])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let out = as_pg_user(&bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
                "-D",
            ])
            .arg(dir.path().join("data"))
            .output()
            .expect("cannot run initdb (or runuser, when root): run scripts/test.sh, which installs postgresql and util-linux");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            port: free_port(),
            dir,
            bin,
            server: Mutex::new(None),
            databases: AtomicUsize::new(0),
            remove_dir_after_stop,
        };
        cluster.start_server();
        cluster
    }

    /// Starts the server (again) on the cluster's port; waits until it answers.
    pub fn start_server(&self) {
        let mut server = self.server.lock().unwrap();
        assert!(server.is_none(), "the server is already running");
        let data = self.dir.path().join("data");
        // The supervisor stops the server (a fast shutdown) when its stdin
        // closes: at stop_server, or when this process ends however it ends.
        let script = format!(
            "{} -D {} -p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c shared_buffers=32MB & pid=$!; read _; kill -INT $pid; wait $pid{}",
            self.bin.join("postgres").display(),
            data.display(),
            self.port,
            self.dir.path().display(),
            if self.remove_dir_after_stop {
                format!("; rm -rf {}", self.dir.path().display())
            } else {
                String::new()
            },
        );
        let mut child = as_pg_user(Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start postgres (or runuser, when root): run scripts/test.sh, which installs postgresql and util-linux");
        let stdin = child.stdin.take().unwrap();
        *server = Some((child, stdin));
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.psql("postgres", "SELECT 1").status.success() {
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (a fast shutdown: clients are disconnected) and
    /// waits until it is gone.
    pub fn stop_server(&self) {
        if let Some((mut child, mut stdin)) = self.server.lock().unwrap().take() {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }

    pub fn psql(&self, database: &str, sql: &str) -> std::process::Output {
        Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .output()
            .expect("cannot run psql: run scripts/test.sh, which installs postgresql")
    }

    /// One query's output, trimmed; panics on an error.
    pub fn query(&self, database: &str, sql: &str) -> String {
        let out = self.psql(database, sql);
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A new empty database; returns its name.
    pub fn new_database(&self) -> String {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::SeqCst)
        );
        self.query("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// One cluster for the whole test binary, started on first use.
pub fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start_with(true))
}
