//! The command line: `serve`, `check-config`. Errors print one plain
//! sentence and exit non-zero; nothing here panics on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{Application, StartupError};
use crate::config::{Settings, Sources};
use crate::dev::DevMode;
use crate::jwt::JwtVerifier;

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
}

/// Exit code for configuration errors (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Serve { config, dev } => serve(config, dev),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("agent-tokens: {message}");
    ExitCode::from(code)
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
    println!(
        "config OK: listen {}, storage {} (cache {} MiB), JWT {} with {}, user claim {:?}",
        settings.server.bind,
        settings.storage.path.display(),
        settings.storage.cache_mb,
        settings.jwt.algorithms.join("/"),
        jwt.describe_keys(),
        settings.jwt.user_claim,
    );
    ExitCode::SUCCESS
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
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(&settings)?;
        match &dev_mode {
            Some(dev) => dev.announce(&settings, app.port()),
            None => log::info!(
                "agent-tokens {} listening on port {} with storage at {}",
                env!("CARGO_PKG_VERSION"),
                app.port(),
                settings.storage.path.display()
            ),
        }
        app.run_until_stopped().await?;
        log::info!("stopped");
        Ok::<(), StartupError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartupError::Config(e)) => fail(EXIT_CONFIG, e),
        Err(e) => fail(1, e),
    }
}
