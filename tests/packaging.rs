//! Packaging: the hardened systemd unit, its example config, scripts/install.sh
//! and the offline bundle, checked with the real tools (systemd-analyze, bash,
//! tar, cargo). Nothing here skips: ./scripts/test.sh installs the tools.

mod common;

use common::{output_text as text, repo};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Instant, SystemTime};

const BIN: &str = env!("CARGO_BIN_EXE_agent-tokens");
const UNIT: &str = "systemd/agent-tokens.service";
const SYSTEMD_CONFIG: &str = "config/agent-tokens.systemd.toml";
/// The exposure `systemd-analyze security` may report at most (0 = fully
/// sandboxed, 10 = not at all).
const MAX_EXPOSURE: f64 = 1.5;

fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}); ./scripts/test.sh installs it (Debian package systemd)"
            )
        })
}

/// `Key=value` lines of the unit's [Service] section; repeated keys keep every value.
fn unit_settings() -> BTreeMap<String, Vec<String>> {
    let unit = std::fs::read_to_string(repo().join(UNIT)).unwrap();
    let mut section = String::new();
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section == "[Service]" && !line.starts_with('#') {
            if let Some((key, value)) = line.split_once('=') {
                settings
                    .entry(key.to_owned())
                    .or_default()
                    .push(value.to_owned());
            }
        }
    }
    settings
}

#[test]
fn the_unit_is_sandboxed_to_an_exposure_of_at_most_1_5() {
    let out = systemd_analyze(&["security", "--offline=true", UNIT]);
    let report = text(&out);
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("Overall exposure level for agent-tokens.service:"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{report}"))
        .to_owned();
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from {line:?}"));
    println!("{line}");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{report}"
    );
}

#[test]
fn the_unit_has_no_unknown_settings_and_runs_the_service_as_documented() {
    // verify needs the ExecStart binary to exist: point a copy at the built one.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join(UNIT)).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/agent-tokens serve --config "));
    let copy = dir.path().join("agent-tokens.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/agent-tokens", BIN)).unwrap();
    let out = systemd_analyze(&["verify", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        out.stderr.is_empty(),
        "systemd-analyze verify complained:\n{}",
        text(&out)
    );

    let settings = unit_settings();
    let one = |key: &str| -> &str {
        match settings.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{key}= should be set once, found {other:?}"),
        }
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("StateDirectory"), "agent-tokens");
    assert_eq!(one("ConfigurationDirectory"), "agent-tokens");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/agent-tokens serve --config %E/agent-tokens/config.toml"
    );
    assert_eq!(
        one("LoadCredential"),
        "jwt-secret:/etc/agent-tokens/jwt-secret"
    );
    let env = &settings["Environment"];
    assert!(env.contains(&"AGENT_TOKENS__JWT__HMAC_SECRET_FILE=%d/jwt-secret".to_owned()));
    assert!(env.contains(&"AGENT_TOKENS__STORAGE__PATH=%S/agent-tokens/db".to_owned()));
}

#[test]
fn the_systemd_example_config_is_valid_and_agrees_with_the_unit() {
    let config = std::fs::read_to_string(repo().join(SYSTEMD_CONFIG)).unwrap();
    // For a system unit %S is /var/lib and %d is /run/credentials/<unit name>:
    // commands run by hand with this file must find what the service uses.
    assert!(
        config.contains("path = \"/var/lib/agent-tokens/db\""),
        "{config}"
    );
    assert!(
        config.contains("hmac_secret_file = \"/run/credentials/agent-tokens.service/jwt-secret\""),
        "{config}"
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, format!("{}\n", "ab".repeat(32))).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(repo().join(SYSTEMD_CONFIG))
        .env("AGENT_TOKENS__JWT__HMAC_SECRET_FILE", &secret)
        .env_remove("AGENT_TOKENS__STORAGE__PATH")
        .env_remove("AGENT_TOKENS__SERVER__BIND")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("storage /var/lib/agent-tokens/db"),
        "{summary}"
    );
    assert!(summary.contains("listen 127.0.0.1:8080"), "{summary}");
}

/// Every file below `root`: relative path → (mode, modification time, content).
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, SystemTime, Vec<u8>)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_dir() {
                stack.push(path.clone());
                Vec::new()
            } else {
                std::fs::read(&path).unwrap()
            };
            files.insert(
                path.strip_prefix(root).unwrap().to_owned(),
                (
                    meta.permissions().mode() & 0o7777,
                    meta.modified().unwrap(),
                    content,
                ),
            );
        }
    }
    files
}

fn install(script: &Path, destdir: &Path, binary: Option<&Path>) -> Output {
    let mut command = Command::new("bash");
    command.arg(script).env("DESTDIR", destdir);
    if let Some(binary) = binary {
        command.arg(binary);
    }
    command.output().unwrap()
}

#[test]
fn install_sh_lays_out_every_file_and_a_second_run_changes_nothing() {
    let dest = tempfile::tempdir().unwrap();
    let script = repo().join("scripts/install.sh");
    // A private copy: another build may replace target/'s binary meanwhile.
    let scratch = tempfile::tempdir().unwrap();
    let binary = scratch.path().join("agent-tokens");
    std::fs::copy(BIN, &binary).unwrap();
    let binary = binary.as_path();
    let out = install(&script, dest.path(), Some(binary));
    assert!(out.status.success(), "{}", text(&out));
    let first = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{first}");
    assert!(first.contains("systemctl not called"), "{first}");

    let files = tree(dest.path());
    let expect = [
        ("usr/local/bin/agent-tokens", 0o755, Some(binary.to_owned())),
        (
            "etc/systemd/system/agent-tokens.service",
            0o644,
            Some(repo().join(UNIT)),
        ),
        (
            "etc/agent-tokens/config.toml",
            0o644,
            Some(repo().join(SYSTEMD_CONFIG)),
        ),
        ("etc/agent-tokens/jwt-secret", 0o600, None),
        (
            "usr/local/share/doc/agent-tokens/README.md",
            0o644,
            Some(repo().join("README.md")),
        ),
        (
            "usr/local/share/doc/agent-tokens/examples/agent-tokens.systemd.toml",
            0o644,
            Some(repo().join(SYSTEMD_CONFIG)),
        ),
    ];
    for (path, mode, source) in &expect {
        let (actual_mode, _, content) = files
            .get(Path::new(path))
            .unwrap_or_else(|| panic!("{path} was not installed:\n{first}"));
        assert_eq!(*actual_mode, *mode, "{path} has mode {actual_mode:o}");
        if let Some(source) = source {
            assert!(
                *content == std::fs::read(source).unwrap(),
                "{path} differs from {}",
                source.display()
            );
        }
    }
    assert_eq!(files[Path::new("etc/agent-tokens")].0, 0o755);
    let secret =
        String::from_utf8(files[Path::new("etc/agent-tokens/jwt-secret")].2.clone()).unwrap();
    let secret = secret.trim_end();
    assert_eq!(secret.len(), 64, "32 random bytes as hex");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!first.contains(secret), "the secret was printed");
    // The installed binary runs.
    let out = Command::new(dest.path().join("usr/local/bin/agent-tokens"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // A second run: success, and not one byte, mode or timestamp changes.
    let out = install(&script, dest.path(), Some(binary));
    assert!(out.status.success(), "{}", text(&out));
    let second = String::from_utf8_lossy(&out.stdout);
    assert!(second.contains("nothing changed"), "{second}");
    assert!(
        tree(dest.path()) == files,
        "the second run changed files:\n{second}"
    );

    // An operator's edits to the config are kept, and a too-open secret is tightened.
    let config = dest.path().join("etc/agent-tokens/config.toml");
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    let secret_path = dest.path().join("etc/agent-tokens/jwt-secret");
    std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = install(&script, dest.path(), Some(binary));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n"
    );
    let meta = std::fs::metadata(&secret_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&secret_path).unwrap().trim_end(),
        secret
    );
}

#[test]
fn install_sh_refuses_a_missing_binary_and_changes_nothing() {
    let dest = tempfile::tempdir().unwrap();
    let out = install(
        &repo().join("scripts/install.sh"),
        dest.path(),
        Some(&dest.path().join("no-such-binary")),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an executable file"));
    assert!(std::fs::read_dir(dest.path()).unwrap().next().is_none());
}

/// The toolchain's cargo (not the rustup proxy), so an empty CARGO_HOME is fine.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned())
}

#[test]
fn the_offline_bundle_builds_with_no_registry_access() {
    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo().join("scripts/offline-bundle.sh"))
        .args(["--binary", BIN, "--out"])
        .arg(work.path())
        .env("CARGO", cargo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("agent-tokens-{version}");
    let tarball = work.path().join(format!("{name}-offline.tar.gz"));
    let size = std::fs::metadata(&tarball).unwrap().len();
    println!(
        "bundle: {} ({:.1} MiB), made in {:.0?}",
        tarball.display(),
        size as f64 / 1048576.0,
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("wrote {}", tarball.display())),
        "{stdout}"
    );

    let unpacked = work.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let bundle = unpacked.join(&name);
    for path in [
        "bin/agent-tokens",
        "systemd/agent-tokens.service",
        "config/agent-tokens.systemd.toml",
        "config/agent-tokens.example.toml",
        "scripts/install.sh",
        "scripts/offline-bundle.sh",
        "README.md",
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "src/ops/backup.rs",
        "tests/packaging.rs",
        ".cargo/config.toml",
        "vendor",
    ] {
        assert!(
            bundle.join(path).exists(),
            "{path} is missing from the bundle"
        );
    }
    assert!(!bundle.join("target").exists(), "build output was bundled");
    // The Debian package of the shipped binary.
    let deb = bundle.join(format!("deb/agent-tokens_{version}-1_amd64.deb"));
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(&deb)
        .args(["Package", "Version"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", deb.display(), text(&out));
    let fields = String::from_utf8_lossy(&out.stdout);
    assert!(
        fields.contains(&format!("Version: {version}-1")),
        "{fields}"
    );
    let mode = std::fs::metadata(bundle.join("bin/agent-tokens"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    // The shipped binary is the one given (compared by what it says: another
    // build may replace the file under target/ while this test runs).
    assert_eq!(
        version_of(&bundle.join("bin/agent-tokens")),
        version_of(Path::new(BIN))
    );
    let cargo_config = std::fs::read_to_string(bundle.join(".cargo/config.toml")).unwrap();
    assert!(
        cargo_config.contains("replace-with = \"vendored-sources\"")
            && cargo_config.contains("directory = \"vendor\""),
        "{cargo_config}"
    );

    // Build it as on an air-gapped host: an empty cargo home (no registry
    // cache, no index), cargo told to stay offline, and any network attempt
    // sent to a closed port. Without debug info, to keep the test short.
    let empty_home = work.path().join("cargo-home");
    std::fs::create_dir(&empty_home).unwrap();
    let started = Instant::now();
    let dead_proxy = "http://127.0.0.1:9";
    let out = Command::new(cargo())
        .args(["build", "--offline", "--frozen"])
        .current_dir(&bundle)
        .env("CARGO_HOME", &empty_home)
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO_TARGET_DIR", work.path().join("target"))
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_INCREMENTAL", "0")
        .env("HTTP_PROXY", dead_proxy)
        .env("HTTPS_PROXY", dead_proxy)
        .env("ALL_PROXY", dead_proxy)
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTC_WRAPPER")
        .output()
        .unwrap();
    println!("offline build: {:.0?}", started.elapsed());
    assert!(out.status.success(), "{}", text(&out));
    let built = work.path().join("target/debug/agent-tokens");
    assert_eq!(version_of(&built), format!("agent-tokens {version}"));
    // The registry was never consulted.
    assert!(
        !empty_home.join("registry").exists(),
        "cargo fetched into the empty CARGO_HOME"
    );

    // install.sh from the bundle picks up the shipped binary by default.
    let dest = work.path().join("root");
    let out = install(&bundle.join("scripts/install.sh"), &dest, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read(dest.join("usr/local/bin/agent-tokens")).unwrap()
            == std::fs::read(bundle.join("bin/agent-tokens")).unwrap(),
        "install.sh did not install the bundled binary"
    );
}

fn version_of(binary: &Path) -> String {
    let out = Command::new(binary).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `[Service]` lines of a unit file, comments and blank lines left out.
fn service_lines(unit: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .skip_while(|l| *l != "[Service]")
        .take_while(|l| *l != "[Install]")
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn both_units_allow_more_files_than_the_default_max_connections_and_reload_on_sighup() {
    for unit in [UNIT, "debian/agent-tokens.service"] {
        let lines = service_lines(&std::fs::read_to_string(repo().join(unit)).unwrap());
        let limit: u64 = lines
            .iter()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .unwrap_or_else(|| panic!("{unit} sets no LimitNOFILE="))
            .parse()
            .unwrap();
        // limits.max_connections defaults to 10000; the store, the admin
        // socket and outgoing fetches need descriptors too.
        assert!(limit >= 10_000 + 1024, "{unit}: LimitNOFILE={limit}");
        // SIGHUP re-reads the key and client files (tests/idp.rs, tests/reload.rs).
        assert!(
            lines
                .iter()
                .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
            "{unit}: systemctl reload must send SIGHUP"
        );
    }
}

#[test]
fn the_package_unit_differs_from_the_install_sh_unit_only_in_paths_and_user() {
    let ours = service_lines(&std::fs::read_to_string(repo().join(UNIT)).unwrap());
    let package = service_lines(
        &std::fs::read_to_string(repo().join("debian/agent-tokens.service")).unwrap(),
    );
    let expected: Vec<String> = ours
        .iter()
        .flat_map(|l| match l.as_str() {
            "DynamicUser=yes" => vec![
                "User=agent-tokens".to_owned(),
                "Group=agent-tokens".to_owned(),
            ],
            _ => vec![l.replace("/usr/local/bin/agent-tokens", "/usr/bin/agent-tokens")],
        })
        .collect();
    assert_eq!(package, expected);
}
