//! The command line: `serve`, `check-config`, `export`, `import`. Errors print one plain
//! sentence and exit non-zero; nothing here panics on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Settings, Sources, StorageBackend};
use crate::domain::clock::Clock;
use crate::domain::jwt::JwtVerifier;
use crate::http::app::{Application, StartupError};
use crate::ops::admin::client::Output;
use crate::ops::admin::server::AdminServer;
use crate::ops::admin::Request;
use crate::ops::backup::{self, BackupError};
use crate::ops::dev::DevMode;
use crate::store::error::StoreError;
use crate::store::postgres::{PgOffline, PgSettings};

#[derive(Debug, Parser)]
#[command(
    name = "agent-tokens",
    version,
    about = "One agent API token per user: managed with the user's JWT, verified by gateways and APIs."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve {
        /// TOML config file; environment variables AGENT_TOKENS__SECTION__KEY override it.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Throw-away data directory and a random JWT secret; prints a ready user JWT. Never use in production.
        #[arg(long)]
        dev: bool,
    },
    /// Validate a config file (keys, key files, algorithms) and print a summary.
    CheckConfig {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Check the store offline: every record decodes, the index matches the records, grace bookkeeping is in step. Exit 0 when consistent. Stop the server first.
    Check {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Write every user's token record (hashes and prefixes, never a token) to stdout as JSON Lines. Stop the server first.
    Export {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Compact the store fully now: rewrite its tables into one sorted run per keyspace, dropping removed and overwritten records (the server compacts on its own as it writes; this is for the smallest store at once). Stop the server first.
    Compact {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
    },
    /// Restore an export from stdin into an empty store; checks every line before writing. Stop the server first.
    Import {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        /// Replace the content of a non-empty store (everything in it is removed first).
        #[arg(long)]
        force: bool,
    },
    /// Act on the running server through its admin socket (server.admin_socket; filesystem permissions are the credential). With the server stopped, the verbs work on the store directly.
    Admin {
        #[arg(long, value_name = "PATH")]
        config: PathBuf,
        #[command(subcommand)]
        verb: AdminVerb,
    },
    /// Find agent tokens in files and directories (recursively, skipping .git and binary files), or in stdin when no path is given. Prints path:line:prefix for each token with a valid checksum, never the token. Exit 1 if any is found, 0 if none, 2 on errors.
    Scan {
        /// Files or directories to scan (a symbolic link named here is followed; links inside a directory are not), or - for stdin; stdin when none.
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Also revoke what was found: POST it to this agent-tokens server's revoke route (its base URL, or the route's full URL). Holding a token is all the route asks.
        #[arg(long, value_name = "URL")]
        revoke: Option<String>,
    },
}

/// What `agent-tokens admin` does.
#[derive(Debug, Subcommand)]
pub enum AdminVerb {
    /// One line per user with a token: user id, display prefix, created, last used, expires.
    List {
        /// JSON lines with user_id, token_prefix, created_at, last_used_at, expires_at.
        #[arg(long)]
        json: bool,
        /// Only tokens that expire within this long (e.g. 7d, 12h).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        expiring_within: Option<u64>,
        /// Only tokens not used for this long (never used: since created).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        unused_for: Option<u64>,
    },
    /// The same for one user; exit 1 when the user has no token.
    Show {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// The user(s) whose current or in-grace token has this display prefix (sk_agt_1a2b3c4d, with or without ...).
    Lookup {
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a user's token at once, grace window included; the next verify answers 401.
    Revoke { user: String },
    /// The incident kill switch: revoke every token created before TIME (RFC 3339 with Z or an offset, or Unix seconds), or every token that exists now. Creation times are whole seconds, so a TIME with a fraction is rounded up to the next second: a token created in that second is revoked too, and nothing created before TIME survives.
    RevokeAll {
        #[arg(long, value_name = "TIME|now", value_parser = parse_before)]
        before: Before,
    },
    /// A consistent snapshot while serving, in the format `agent-tokens import` reads (to FILE, made 0600 even if it exists, or stdout).
    Export {
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// The audit trail, oldest first: every event, or one user's.
    Events {
        user: Option<String>,
        /// Only events at or after TIME (RFC 3339 with Z or an offset, Unix seconds, or now); a fraction of a second is rounded down, so the whole second is included.
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

/// `--before`: a time, or `now`.
#[derive(Debug, Clone, Copy)]
pub struct Before(Option<u64>);

fn parse_duration(text: &str) -> Result<u64, String> {
    humantime::parse_duration(text)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{e} (write e.g. 30d, 12h or 90m)"))
}

/// How a TIME with a fraction of a second becomes whole seconds, the unit
/// creation and event times are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    /// `events --since`: an event in that second is included.
    Down,
    /// `revoke-all --before`: a token created in that second, perhaps
    /// before TIME, is revoked too; nothing created before TIME survives.
    Up,
}

const TIME_FORMS: &str = "write a time as RFC 3339 (2026-12-01T10:00:00Z or 2026-12-01T11:00:00+01:00), Unix seconds, or now";

/// A TIME: RFC 3339 with `Z` or an offset, Unix seconds, or `now`; as
/// seconds since the Unix epoch, rounded as `rounding` says.
fn parse_time_rounded(text: &str, rounding: Rounding, now: u64) -> Result<u64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let (secs, nanos) =
        match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
            Ok(t) => (t.unix_timestamp(), t.nanosecond()),
            // Without a zone, as earlier releases took it: UTC.
            Err(_) => humantime::parse_rfc3339_weak(text)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| Some((i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())))
                .ok_or_else(|| TIME_FORMS.to_owned())?,
        };
    let secs = u64::try_from(secs).map_err(|_| format!("{TIME_FORMS}, not before 1970"))?;
    Ok(if rounding == Rounding::Up && nanos > 0 {
        secs.saturating_add(1)
    } else {
        secs
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_since(text: &str) -> Result<u64, String> {
    parse_time_rounded(text, Rounding::Down, unix_now())
}

fn parse_before(text: &str) -> Result<Before, String> {
    if text.trim().eq_ignore_ascii_case("now") {
        return Ok(Before(None));
    }
    parse_time_rounded(text, Rounding::Up, unix_now()).map(|t| Before(Some(t)))
}

/// `scan`'s exit codes, as gitleaks has them: a pre-commit hook or a CI
/// step fails on a finding, and tells an incomplete scan apart.
const EXIT_FOUND: u8 = 1;
const EXIT_SCAN_ERROR: u8 = 2;

/// Exit code for configuration errors (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The store holds token hashes and the audit trail: whatever the
    // caller's umask, everything this process creates (the data directory,
    // the storage engine's own files, temporary files) is 0700/0600 from
    // its creation, with no window a chmod afterwards would leave.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // The storage engine's own info lines (each recovery, flush and
    // compaction) would drown ours; its warnings and errors still show.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,fjall=warn,lsm_tree=warn"),
    )
    .init();
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Serve { config, dev } => serve(config, dev),
        Command::Check { config } => check(config),
        Command::Export { config } => export(config),
        Command::Import { config, force } => import(config, force),
        Command::Compact { config } => compact(config),
        Command::Admin { config, verb } => admin(config, verb),
        Command::Scan { paths, revoke } => scan(&paths, revoke.as_deref()),
    }
}

/// Writes to stdout without panicking: `println!` panics (exit 101) when
/// the reader has gone (`| head -c1`); here that ends the output quietly,
/// as other command-line tools do.
fn print_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => eprintln!("agent-tokens: cannot write to stdout: {e}"),
    }
}

/// A write refused because the reader went away, also when it surfaced
/// through the JSON encoder.
fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<serde_json::Error>())
            .and_then(serde_json::Error::io_error_kind)
            == Some(std::io::ErrorKind::BrokenPipe)
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("agent-tokens: {message}");
    ExitCode::from(code)
}

fn warn_obsolete(settings: &Settings) {
    for key in settings.obsolete_keys() {
        log::warn!("{key} no longer has an effect (the store compacts itself since 0.2); remove it from the configuration");
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    let settings = match Settings::load(Sources {
        file: Some(&path),
        ..Default::default()
    }) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    if let Err(e) = settings.validate() {
        return fail(EXIT_CONFIG, e);
    }
    let jwt = match JwtVerifier::from_settings(&settings.jwt) {
        Ok(j) => j,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    // Offline: the URL and jwt.ca_file are checked, nothing is fetched.
    let keys = match crate::idp::Plan::from_settings(&settings) {
        Ok(Some(plan)) => plan.describe(),
        Ok(None) => jwt.describe_keys(),
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    // As `serve` resolves it; whether the server's user may use the group
    // is only known when it gives the socket to it.
    if let Err(e) = crate::ops::admin::server::admin_group(&settings) {
        return fail(EXIT_CONFIG, e);
    }
    let storage = match settings.storage.backend {
        StorageBackend::Embedded => format!(
            "storage {} (cache {} MiB)",
            settings.storage.path.display(),
            settings.storage.cache_mb
        ),
        // The one setting checked by using it: the server must answer.
        StorageBackend::Postgres => match postgres_settings(&settings) {
            Ok(pg) => match crate::store::postgres::check_connection(&pg) {
                Ok(answered) => format!("storage {answered}, pool of {}", pg.pool_size),
                Err(e) => return fail(EXIT_CONFIG, format!("storage.url: {e}")),
            },
            Err(code) => return code,
        },
    };
    warn_obsolete(&settings);
    print_stdout(format_args!(
        "config OK: listen {}, {storage}, JWT {} with {}, user claim {:?}\n",
        settings.server.bind,
        settings.jwt.algorithms.join("/"),
        keys,
        settings.jwt.user_claim,
    ));
    ExitCode::SUCCESS
}

/// `[storage]`'s PostgreSQL settings; the URL read from `url_file` if so.
fn postgres_settings(settings: &Settings) -> Result<PgSettings, ExitCode> {
    Ok(PgSettings {
        url: settings
            .storage
            .postgres_url()
            .map_err(|e| fail(EXIT_CONFIG, e))?,
        pool_size: settings.storage.pool_size,
    })
}

fn serve(config: Option<PathBuf>, dev: bool) -> ExitCode {
    let dev_mode = if dev {
        match DevMode::new() {
            Ok(d) => Some(d),
            Err(e) => return fail(1, format!("cannot prepare dev mode: {e}")),
        }
    } else {
        None
    };
    let settings = match Settings::load(Sources {
        file: config.as_deref(),
        overlay: dev_mode.as_ref().map(DevMode::overlay),
        env: None,
    }) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    warn_obsolete(&settings);
    crate::http::conn::raise_open_file_limit();
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(&settings)?;
        let metrics_port = app.metrics_port();
        // Dropped when serving ends: the socket file goes with it.
        let _admin = AdminServer::start(&settings, app.state())?;
        app.run_until_signalled(|port| {
            match &dev_mode {
                Some(dev) => dev.announce(&settings, port),
                None => log::info!(
                    "agent-tokens {} listening on port {port} with storage at {}",
                    env!("CARGO_PKG_VERSION"),
                    settings.storage.path.display()
                ),
            }
            if let Some(port) = metrics_port {
                log::info!("/metrics and the health routes listening privately on port {port}");
            }
        })
        .await?;
        log::info!("stopped");
        Ok::<(), StartupError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartupError::Config(e)) => fail(EXIT_CONFIG, e),
        Err(e) => fail(1, e),
    }
}

/// Exit codes of the offline commands (sysexits.h).
const EXIT_DATAERR: u8 = 65;
const EXIT_NOINPUT: u8 = 66;
const EXIT_CANTCREAT: u8 = 73;
const EXIT_IOERR: u8 = 74;
const EXIT_TEMPFAIL: u8 = 75;

fn backup_failure(prefix: &str, e: BackupError) -> ExitCode {
    let code = match &e {
        BackupError::Invalid { .. } | BackupError::Store(StoreError::Corrupt { .. }) => {
            EXIT_DATAERR
        }
        BackupError::NoStore { .. } => EXIT_NOINPUT,
        BackupError::NotEmpty { .. } | BackupError::NotEmptyDatabase { .. } => EXIT_CANTCREAT,
        BackupError::InUse { .. } => EXIT_TEMPFAIL,
        BackupError::Store(_) | BackupError::Read(_) | BackupError::Write(_) => EXIT_IOERR,
    };
    fail(code, format!("{prefix}{e}"))
}

/// Settings for the offline commands: the file and the environment, checked
/// without reading key files (the JWT secret may be a systemd credential).
fn offline_settings(path: &std::path::Path) -> Result<Settings, ExitCode> {
    let settings = Settings::load(Sources {
        file: Some(path),
        ..Default::default()
    })
    .map_err(|e| fail(EXIT_CONFIG, e))?;
    settings.validate().map_err(|e| fail(EXIT_CONFIG, e))?;
    Ok(settings)
}

fn export(config: PathBuf) -> ExitCode {
    let settings = match offline_settings(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let path = &settings.storage.path;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let now = Clock::system().now();
    let (result, from) = match settings.storage.backend {
        StorageBackend::Embedded => (
            backup::open_offline(path, settings.storage.cache_mb, true)
                .and_then(|store| backup::export(&store, &mut out, now)),
            path.display().to_string(),
        ),
        // One consistent snapshot; replicas may serve meanwhile.
        StorageBackend::Postgres => {
            let pg = match postgres_settings(&settings) {
                Ok(pg) => pg,
                Err(code) => return code,
            };
            match PgOffline::open(&pg) {
                Ok(store) => (
                    store
                        .snapshot()
                        .map_err(BackupError::Store)
                        .and_then(|snapshot| backup::export(&snapshot, &mut out, now)),
                    format!("PostgreSQL at {}", store.target()),
                ),
                Err(e) => return backup_failure("", BackupError::Store(e)),
            }
        }
    };
    match result {
        Ok(s) => {
            eprintln!(
                "agent-tokens: exported {} users ({} in grace) from {from}",
                s.users, s.in_grace,
            );
            ExitCode::SUCCESS
        }
        // The reader went away (`| head`): the export is incomplete, and
        // whoever closed the pipe needs no message about it.
        Err(BackupError::Write(e)) if is_broken_pipe(&e) => ExitCode::from(EXIT_IOERR),
        Err(e) => backup_failure("", e),
    }
}

fn import(config: PathBuf, force: bool) -> ExitCode {
    let settings = match offline_settings(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Every line is checked before the store is even opened: a bad file
    // leaves the target exactly as it was.
    let parsed = backup::Backup::parse(std::io::stdin().lock());
    let backup = match parsed {
        Ok(b) => b,
        Err(e) => return backup_failure("nothing was imported: ", e),
    };
    let path = &settings.storage.path;
    let (result, into) = match settings.storage.backend {
        StorageBackend::Embedded => (
            backup::open_offline(path, settings.storage.cache_mb, false)
                .and_then(|mut store| backup::import(&mut store, &backup, force)),
            path.display().to_string(),
        ),
        StorageBackend::Postgres => {
            let pg = match postgres_settings(&settings) {
                Ok(pg) => pg,
                Err(code) => return code,
            };
            match PgOffline::open(&pg) {
                Ok(store) => (
                    backup::import_postgres(&store, &backup, force),
                    format!("PostgreSQL at {}", store.target()),
                ),
                Err(e) => return backup_failure("", BackupError::Store(e)),
            }
        }
    };
    match result {
        Ok(s) => {
            eprintln!(
                "agent-tokens: imported {} users ({} in grace) into {into}",
                s.users, s.in_grace,
            );
            ExitCode::SUCCESS
        }
        Err(e) => backup_failure("", e),
    }
}

fn compact(config: PathBuf) -> ExitCode {
    let settings = match offline_settings(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let path = &settings.storage.path;
    let cache_mb = settings.storage.cache_mb;
    let result = backup::open_offline(path, cache_mb, true)
        .and_then(|store| crate::ops::compact::compact_offline(store).map_err(BackupError::Store));
    match result {
        Ok((before, after)) => {
            eprintln!(
                "agent-tokens: compacted {}: {before} -> {after} bytes on disk",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => backup_failure("", e),
    }
}

fn check(config: PathBuf) -> ExitCode {
    let settings = match offline_settings(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if settings.storage.backend == StorageBackend::Postgres {
        return check_postgres(&settings);
    }
    match crate::ops::check::check_store(&settings.storage.path) {
        // The verdict is the exit code, whether or not the reader of the
        // report stayed (`| head`).
        Ok(report) if report.is_consistent() => {
            print_stdout(format_args!("{report}\n"));
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print_stdout(format_args!("{report}"));
            ExitCode::from(1)
        }
        Err(e @ crate::ops::check::CheckError::InUse(_)) => fail(EXIT_TEMPFAIL, e),
        Err(e @ crate::ops::check::CheckError::Missing(_)) => fail(EXIT_NOINPUT, e),
        Err(e) => fail(EXIT_IOERR, e),
    }
}

/// `check` on PostgreSQL: its constraints keep most of what the embedded
/// check verifies; what is left is read from one consistent snapshot.
fn check_postgres(settings: &Settings) -> ExitCode {
    let pg = match postgres_settings(settings) {
        Ok(pg) => pg,
        Err(code) => return code,
    };
    let snapshot = match PgOffline::open(&pg).and_then(|store| {
        let snapshot = store.snapshot()?;
        Ok((store.target().to_owned(), snapshot))
    }) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_IOERR, e),
    };
    let (target, snapshot) = snapshot;
    let in_grace = snapshot
        .users
        .iter()
        .filter(|(_, r)| r.previous.is_some())
        .count();
    print_stdout(format_args!(
        "PostgreSQL at {target}, schema version {}: {} users with a token ({in_grace} in grace), {} tokens, {} audit events\n",
        snapshot.schema_version,
        snapshot.users.len(),
        snapshot.index.len(),
        snapshot.audit_events,
    ));
    if snapshot.orphans.is_empty() {
        print_stdout(format_args!("consistent\n"));
        return ExitCode::SUCCESS;
    }
    for (user, prefix) in &snapshot.orphans {
        print_stdout(format_args!(
            "user {user:?}: the token {prefix} is in grace but the user has no current token\n"
        ));
    }
    ExitCode::from(1)
}

fn scan(paths: &[PathBuf], revoke: Option<&str>) -> ExitCode {
    use crate::ops::scan;
    let stdin = [PathBuf::from("-")];
    let report = scan::scan_paths(if paths.is_empty() { &stdin } else { paths });
    for finding in &report.findings {
        print_stdout(format_args!("{}\n", finding.describe()));
    }
    for error in &report.errors {
        eprintln!("agent-tokens scan: {error}");
    }
    let files: std::collections::HashSet<&str> =
        report.findings.iter().map(|f| f.path.as_str()).collect();
    eprintln!(
        "agent-tokens scan: {} agent token(s) ({} distinct) in {} of {} file(s) scanned",
        report.findings.len(),
        report.distinct_tokens().len(),
        files.len(),
        report.files,
    );
    let mut failed = !report.errors.is_empty();
    if let Some(url) = revoke {
        let tokens = report.distinct_tokens();
        if !tokens.is_empty() {
            match scan::revoke(url, &tokens) {
                Ok(endpoint) => eprintln!(
                    "agent-tokens scan: sent {} token(s) to {endpoint}: every one that was live is revoked",
                    tokens.len()
                ),
                Err(e) => {
                    eprintln!("agent-tokens scan: could not revoke what was found: {e}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_SCAN_ERROR)
    } else if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FOUND)
    }
}

fn admin(config: PathBuf, verb: AdminVerb) -> ExitCode {
    let settings = match offline_settings(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut output = Output::default();
    let request = match verb {
        AdminVerb::List {
            json,
            expiring_within,
            unused_for,
        } => {
            output.json = json;
            Request::List {
                expiring_within,
                unused_for,
            }
        }
        AdminVerb::Show { user, json } => {
            output.json = json;
            Request::Show { user }
        }
        AdminVerb::Lookup { prefix, json } => {
            output.json = json;
            Request::Lookup { prefix }
        }
        AdminVerb::Revoke { user } => Request::Revoke { user },
        AdminVerb::RevokeAll { before } => Request::RevokeAll { before: before.0 },
        AdminVerb::Export { file } => {
            output.file = file;
            Request::Export
        }
        AdminVerb::Events { user, since, json } => {
            output.json = json;
            Request::Events { user, since }
        }
    };
    crate::ops::admin::client::run(&settings, request, &output)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn down(text: &str) -> Result<u64, String> {
        parse_time_rounded(text, Rounding::Down, NOW)
    }

    fn up(text: &str) -> Result<u64, String> {
        parse_time_rounded(text, Rounding::Up, NOW)
    }

    /// 2026-12-03T04:00:00Z.
    const T: u64 = 1_796_270_400;

    #[test]
    fn rfc3339_with_z_or_any_offset_is_the_same_instant() {
        for text in [
            "2026-12-03T04:00:00Z",
            "2026-12-03T05:00:00+01:00",
            "2026-12-02T23:00:00-05:00",
            "2026-12-03T04:00:00+00:00",
            "2026-12-03t04:00:00z",
            "2026-12-03T04:00:00",
            "2026-12-03 04:00:00",
        ] {
            assert_eq!(down(text), Ok(T), "{text}");
            assert_eq!(up(text), Ok(T), "{text}");
        }
    }

    #[test]
    fn unix_seconds_and_now_are_taken_as_they_are() {
        assert_eq!(down("1796270400"), Ok(T));
        assert_eq!(up("1796270400"), Ok(T));
        assert_eq!(down("now"), Ok(NOW));
        assert_eq!(up("NOW"), Ok(NOW));
    }

    #[test]
    fn a_fraction_rounds_up_for_before_and_down_for_since() {
        for text in [
            "2026-12-03T04:00:00.5Z",
            "2026-12-03T05:00:00.000000001+01:00",
            "2026-12-03T04:00:00.999Z",
        ] {
            assert_eq!(up(text), Ok(T + 1), "{text}");
            assert_eq!(down(text), Ok(T), "{text}");
        }
        // A zero fraction is a whole second.
        assert_eq!(up("2026-12-03T04:00:00.000Z"), Ok(T));
    }

    #[test]
    fn before_now_means_every_token_that_exists() {
        assert!(matches!(parse_before("now"), Ok(Before(None))));
        assert!(matches!(
            parse_before("2026-12-03T05:00:00.25+01:00"),
            Ok(Before(Some(t))) if t == T + 1
        ));
    }

    #[test]
    fn anything_else_is_refused_with_the_forms_it_takes() {
        for text in [
            "",
            "yesterday",
            "2026-12-03",
            "2026-13-03T04:00:00Z",
            "2026-12-03T04:00:00+25:00",
            "1969-12-31T23:59:59Z",
            "-5",
        ] {
            let err = down(text).unwrap_err();
            assert!(err.contains("RFC 3339"), "{text}: {err}");
        }
    }
}
