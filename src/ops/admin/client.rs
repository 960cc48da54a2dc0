//! The `agent-tokens admin` command: sends one request to the server's
//! admin socket and prints the answer; with the server stopped, runs the
//! same verb on the store directly (holding its lock meanwhile).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::server::EXIT_NOPERM;
use super::{execute, Reply, Request, EXIT_FAILED};
use crate::config::{Settings, StorageBackend};
use crate::domain::clock::Clock;
use crate::domain::policy::TokenPolicy;
use crate::http::audit::AuditFile;
use crate::store::error::StoreError;
use crate::store::offline::Offline;
use crate::store::postgres::PgSettings;
use crate::store::records::{ChangeListener, NoListener};
use crate::store::Store;

/// How an answer is printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// JSON lines instead of one readable line per record.
    pub json: bool,
    /// Where an export goes (stdout when `None`).
    pub file: Option<PathBuf>,
}

/// The export file cannot be created or written (EX_IOERR). Not 73: that
/// is "the target store is not empty" for `import`.
const EXIT_IOERR: u8 = 74;
/// Bad configuration (EX_CONFIG), as `serve` exits for it.
const EXIT_CONFIG: u8 = 78;

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("agent-tokens: {message}");
    ExitCode::from(code)
}

/// Runs `request` against the server of `settings` (or its stopped store).
pub fn run(settings: &Settings, request: Request, output: &Output) -> ExitCode {
    let path = settings.admin_socket_path();
    let mut printer = match Printer::new(output) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_IOERR, format!("cannot create the export file: {e}")),
    };
    match UnixStream::connect(&path) {
        Ok(stream) => over_socket(stream, &request, &mut printer),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => fail(
            EXIT_NOPERM,
            format!(
                "permission denied on the admin socket {}: it is for the server's user (and the members of server.admin_group)",
                path.display()
            ),
        ),
        // Nobody listens: the server is stopped; act on the store itself.
        Err(_) => offline(settings, request, &mut printer),
    }
}

fn over_socket(mut stream: UnixStream, request: &Request, printer: &mut Printer) -> ExitCode {
    let sent = serde_json::to_vec(request)
        .map_err(std::io::Error::other)
        .and_then(|mut line| {
            line.push(b'\n');
            stream.write_all(&line)
        });
    if let Err(e) = sent {
        return fail(
            EXIT_FAILED,
            format!("cannot send the request to the server: {e}"),
        );
    }
    for line in BufReader::new(stream).lines() {
        let reply = line
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str::<Reply>(&l).map_err(|e| e.to_string()));
        match reply {
            Ok(reply) => {
                if let Some(code) = printer.print(request, reply) {
                    return code;
                }
            }
            Err(e) => return fail(EXIT_FAILED, format!("the server's answer broke off: {e}")),
        }
    }
    fail(
        EXIT_FAILED,
        "the server closed the connection without an answer",
    )
}

fn offline(settings: &Settings, request: Request, printer: &mut Printer) -> ExitCode {
    let path = &settings.storage.path;
    let postgres = settings.storage.backend == StorageBackend::Postgres;
    if !postgres && !Offline::exists(path) {
        return fail(
            66,
            format!(
                "the server is not running (nothing answers at {}) and there is no store at {}",
                settings.admin_socket_path().display(),
                path.display()
            ),
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILED, e),
    };
    // Changes made here reach `audit.file` as the server's do; a file that
    // cannot be opened stops the change before it is made, as it stops the
    // server from starting.
    let listener: Arc<dyn ChangeListener> = match (&settings.audit.file, changes(&request)) {
        (Some(file), true) => match AuditFile::open(file) {
            Ok(file) => Arc::new(file),
            Err(e) => return fail(EXIT_CONFIG, e),
        },
        _ => Arc::new(NoListener),
    };
    // On PostgreSQL no server needs to be stopped: the verbs act on the
    // shared database, as any replica's socket would.
    let opened = if postgres {
        match settings.storage.postgres_url() {
            Ok(url) => Store::open_postgres(&PgSettings { url, pool_size: 2 }, listener),
            Err(e) => return fail(EXIT_CONFIG, e),
        }
    } else {
        Store::open(path, settings.storage.cache_mb, listener)
    };
    let store = match opened {
        Ok(store) => store,
        Err(StoreError::InUse { .. }) => {
            return fail(
                75,
                format!(
                    "the store at {} is in use, but no server answers at the admin socket {} (check server.admin_socket)",
                    path.display(),
                    settings.admin_socket_path().display()
                ),
            )
        }
        Err(e) => return fail(EXIT_FAILED, e),
    };
    let policy = TokenPolicy::from_settings(&settings.tokens);
    let code = runtime.block_on(async {
        let (tx, mut rx) = mpsc::channel(256);
        let (store, asked) = (&store, request.clone());
        let work = async move {
            execute(asked, store, policy, Clock::system().now(), &tx).await;
        };
        let print = async {
            while let Some(reply) = rx.recv().await {
                if let Some(code) = printer.print(&request, reply) {
                    return code;
                }
            }
            fail(EXIT_FAILED, "no answer")
        };
        let ((), code) = tokio::join!(work, print);
        code
    });
    drop(store);
    code
}

/// Whether the verb writes audit events.
fn changes(request: &Request) -> bool {
    match request {
        Request::Revoke { .. } | Request::RevokeAll { .. } | Request::Export => true,
        Request::List { .. }
        | Request::Show { .. }
        | Request::Lookup { .. }
        | Request::Events { .. } => false,
    }
}

struct Printer {
    json: bool,
    export: Box<dyn Write>,
    out: std::io::Stdout,
}

impl Printer {
    fn new(output: &Output) -> std::io::Result<Self> {
        let export: Box<dyn Write> = match &output.file {
            Some(path) => Box::new(std::io::BufWriter::new(create_private(path)?)),
            None => Box::new(std::io::stdout()),
        };
        Ok(Self {
            json: output.json,
            export,
            out: std::io::stdout(),
        })
    }

    /// Prints one reply; the exit code once the answer is complete.
    fn print(&mut self, request: &Request, reply: Reply) -> Option<ExitCode> {
        let written = match reply {
            Reply::Item(item) if self.json => writeln!(self.out, "{item}"),
            Reply::Item(item) => writeln!(self.out, "{}", readable(request, &item)),
            Reply::Line(line) => writeln!(self.export, "{line}"),
            Reply::Done(message) => {
                if let Err(e) = self.export.flush() {
                    return Some(fail(EXIT_IOERR, format!("cannot write the export: {e}")));
                }
                if !message.is_empty() {
                    eprintln!("agent-tokens: {message}");
                }
                return Some(ExitCode::SUCCESS);
            }
            Reply::Failed { message, code } => return Some(fail(code, message)),
        };
        match written {
            Ok(()) => None,
            // The reader went away (`| head`).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                Some(ExitCode::from(EXIT_IOERR))
            }
            Err(e) => Some(fail(EXIT_IOERR, format!("cannot write: {e}"))),
        }
    }
}

/// An export file holds token hashes: 0600 from its creation, and an
/// existing file is made 0600 before its old content is dropped (a file
/// that cannot be made private is left as it was).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    // Not a FIFO or a device such as /dev/stdout: only a regular file
    // keeps what is written in it.
    if file.metadata()?.is_file() {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.set_len(0)?;
    }
    Ok(file)
}

/// One record as a line for people: the values, tab-separated.
fn readable(request: &Request, item: &serde_json::Value) -> String {
    let keys: &[&str] = match request {
        Request::Lookup { .. } => &["user_id", "token_prefix", "state", "grace_until"],
        Request::Events { .. } => &[
            "at",
            "type",
            "user_id",
            "token_prefix",
            "previous_prefix",
            "actor",
            "request_id",
            "address",
            "detail",
        ],
        _ => &[
            "user_id",
            "token_prefix",
            "created_at",
            "last_used_at",
            "expires_at",
        ],
    };
    keys.iter()
        .filter_map(|key| match item.get(*key) {
            Some(serde_json::Value::String(s)) => Some(match *key {
                "previous_prefix" => format!("(was {s})"),
                "actor" => format!("by {s}"),
                "request_id" => format!("request {s}"),
                "address" => format!("from {s}"),
                _ => s.clone(),
            }),
            Some(serde_json::Value::Null) | None => match *key {
                "last_used_at" => Some("never used".to_owned()),
                "expires_at" => Some("no expiry".to_owned()),
                _ => None,
            },
            Some(other) => Some(other.to_string()),
        })
        .collect::<Vec<_>>()
        .join("\t")
}
