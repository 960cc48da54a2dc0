//! The admin socket of a running server: a Unix socket whose permissions
//! are the credential. It is created 0600 (0660 and owned by
//! `server.admin_group` when that is set) under a temporary name and
//! renamed into place, so it never exists at its path with looser
//! permissions. Without `server.admin_group`, a peer whose user is neither
//! the server's nor root is also refused by its credentials (`SO_PEERCRED`).
//! A stale socket file (a crashed server) is replaced; a live one (another
//! server answers there) stops the start.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::{execute, Reply, Request, EXIT_DATAERR, EXIT_FAILED};
use crate::config::{ConfigError, Settings};
use crate::http::state::AppState;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code the client shows for a refused peer (EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;

/// The listening socket; dropping it stops listening and removes the file.
pub struct AdminServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Creates the socket (see the module) and serves it on the current
    /// runtime until dropped. Errors are one sentence naming the key.
    pub fn start(settings: &Settings, state: Weak<AppState>) -> Result<Self, ConfigError> {
        let path = settings.admin_socket_path();
        let group = admin_group(settings)?;
        let listener = bind(&path, group.as_ref())?;
        let only_our_user = group.is_none();
        let task = tokio::spawn(accept(listener, state, only_our_user));
        log::info!("admin socket listening at {}", path.display());
        Ok(Self { path, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn socket_error(path: &Path, what: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(format!(
        "server.admin_socket: {what} ({}); set server.admin_socket to another path.",
        path.display()
    ))
}

/// `server.admin_group` as its name and id: `None` when unset, an error
/// naming the key when no such group exists (`serve` and `check-config`).
pub fn admin_group(settings: &Settings) -> Result<Option<(String, u32)>, ConfigError> {
    match settings.server.admin_group.trim() {
        "" => Ok(None),
        name => Ok(Some((name.to_owned(), group_id(name)?))),
    }
}

/// Why the socket could not be given to `server.admin_group`: an
/// unprivileged server can only give a file to a group it is a member of.
fn group_error(path: &Path, name: &str, gid: u32, e: &std::io::Error) -> ConfigError {
    let cause = if matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::PERM.raw_os_error()
            || code == rustix::io::Errno::INVAL.raw_os_error()
    ) {
        format!(
            "the server's user must be a member of group {name:?} (gid {gid}): under systemd, add SupplementaryGroups={name} to the unit, and PrivateUsers=no (a private user namespace does not map the group); see \"Admin commands\" in docs/operations.md"
        )
    } else {
        "check that the group exists and the server's user is a member".to_owned()
    };
    ConfigError::new(format!(
        "server.admin_group: cannot give the admin socket {} to group {name:?}: {e}; {cause}.",
        path.display()
    ))
}

fn bind(path: &Path, group: Option<&(String, u32)>) -> Result<UnixListener, ConfigError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(socket_error(path, "the path exists and is not a socket"));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(socket_error(
                    path,
                    "another agent-tokens server answers on this admin socket",
                ))
            }
            // Nobody listens: a crashed server's leftover.
            Err(_) => std::fs::remove_file(path)
                .map_err(|e| socket_error(path, format!("cannot remove the stale socket: {e}")))?,
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(path, e)),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = std::os::unix::net::UnixListener::bind(&temporary)
        .map_err(|e| socket_error(path, format!("cannot create the socket: {e}")))?;
    if let Some((name, gid)) = group {
        if let Err(e) = std::os::unix::fs::chown(&temporary, None, Some(*gid)) {
            let _ = std::fs::remove_file(&temporary);
            return Err(group_error(path, name, *gid, &e));
        }
    }
    let placed = (|| {
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(socket_error(path, format!("cannot set up the socket: {e}")));
    }
    listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(|e| socket_error(path, e))
}

/// A group's id from its name or number, as `/etc/group` has it.
fn group_id(name: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let group = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            ConfigError::new(format!(
                "server.admin_group: there is no group named {name:?} in /etc/group; give an existing group's name or number."
            ))
        })
}

async fn accept(listener: UnixListener, state: Weak<AppState>, only_our_user: bool) {
    let ours = rustix::process::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("admin socket: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = !only_our_user
            || stream
                .peer_cred()
                .is_ok_and(|cred| cred.uid() == ours || cred.uid() == 0);
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, state, allowed).await {
                log::debug!("admin socket: a client went away: {e}");
            }
        });
    }
}

async fn write_reply(
    stream: &mut (impl AsyncWriteExt + Unpin),
    reply: &Reply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn serve(stream: UnixStream, state: Weak<AppState>, allowed: bool) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    if !allowed {
        log::warn!("admin socket: refused a connection from another user");
        let refused = Reply::Failed {
            message: "permission denied: the admin socket is for the server's user".to_owned(),
            code: EXIT_NOPERM,
        };
        return write_reply(&mut write, &refused).await;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let request = match read {
        Ok(Ok(_)) => serde_json::from_str::<Request>(&line).map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no request within 10 seconds".to_owned()),
    };
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            let reply = Reply::Failed {
                message: format!("not an admin request: {e}"),
                code: EXIT_DATAERR,
            };
            return write_reply(&mut write, &reply).await;
        }
    };
    let Some(app) = state.upgrade() else {
        let reply = Reply::Failed {
            message: "the server is stopping".to_owned(),
            code: EXIT_FAILED,
        };
        return write_reply(&mut write, &reply).await;
    };
    let (tx, mut rx) = mpsc::channel(256);
    let work = tokio::spawn(async move {
        let now = app.clock.now();
        execute(request, &app.store, app.policy, now, &tx).await;
    });
    while let Some(reply) = rx.recv().await {
        let last = matches!(reply, Reply::Done(_) | Reply::Failed { .. });
        write_reply(&mut write, &reply).await?;
        if last {
            break;
        }
    }
    write.shutdown().await?;
    let _ = work.await;
    Ok(())
}
