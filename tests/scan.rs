//! `agent-tokens scan` as users run it: on trees, on stdin, as a pre-commit
//! hook (the real pre-commit, installed by scripts/test.sh), and the rules
//! for gitleaks, GitLab and GitHub against the same tokens.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use agent_tokens::domain::token::PlainToken;
use ring::rand::SystemRandom;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agent-tokens")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn token() -> PlainToken {
    PlainToken::generate(&SystemRandom::new()).unwrap()
}

/// The token with one character of its body changed: the checksum fails.
fn flipped(token: &PlainToken) -> String {
    let mut s = token.expose().to_owned();
    let c = s.remove(20);
    s.insert(20, if c == 'a' { 'b' } else { 'a' });
    s
}

fn scan(args: &[&Path], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin())
        .arg("scan")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn a_tree_scan_finds_exactly_the_real_tokens_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b, c, hidden) = (token(), token(), token(), token());
    fs::create_dir_all(root.join("src/deep")).unwrap();
    fs::write(
        root.join("src/deep/config.env"),
        format!(
            "# settings\nAGENT_TOKEN={}\n\nother={}\n",
            a.expose(),
            flipped(&b)
        ),
    )
    .unwrap();
    fs::write(
        root.join("transcript.md"),
        format!(
            "curl -H 'Authorization: Bearer {}' ...\nlook-alike: {}\ncut short: {}\n{{\"token\":\"{}\"}}\n",
            b.expose(),
            flipped(&a),
            &c.expose()[..60],
            c.expose()
        ),
    )
    .unwrap();
    // Binary files and .git are skipped, even with a token inside.
    let mut binary = b"\x7fELF\x00\x00\x01".to_vec();
    binary.extend_from_slice(hidden.expose().as_bytes());
    fs::write(root.join("agent.bin"), binary).unwrap();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::write(root.join(".git/objects/packed"), hidden.expose()).unwrap();
    // A link is not followed out of the tree.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("elsewhere.txt"), hidden.expose()).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();

    let out = scan(&[root], None);
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let r = root.display();
    assert_eq!(
        stdout(&out),
        format!(
            "{r}/src/deep/config.env:2:{}\n{r}/transcript.md:1:{}\n{r}/transcript.md:4:{}\n",
            a.display_prefix(),
            b.display_prefix(),
            c.display_prefix()
        )
    );
    for t in [&a, &b, &c, &hidden] {
        assert!(!shown.contains(t.expose()), "a token was printed: {shown}");
    }
    assert!(!shown.contains(&hidden.display_prefix()), "{shown}");
}

#[test]
fn a_clean_tree_exits_0_and_a_missing_path_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("README"), "sk_agt_ is our token prefix\n").unwrap();
    fs::write(dir.path().join("typo"), flipped(&token())).unwrap();
    let out = scan(&[dir.path()], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");

    let missing = dir.path().join("no-such-file");
    let out = scan(&[dir.path(), &missing], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("cannot read {}", missing.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn without_a_path_it_scans_stdin() {
    let t = token();
    let out = scan(
        &[],
        Some(&format!("log line\nagent said {} ok\n", t.expose())),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("stdin:2:{}\n", t.display_prefix()));
    let out = scan(&[], Some("nothing here\n"));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_symlink_named_on_the_command_line_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let t = token();
    let target = dir.path().join("a.txt");
    fs::write(&target, format!("TOKEN={}\n", t.expose())).unwrap();
    let link = dir.path().join("link.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = scan(&[&link], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{}:1:{}\n", link.display(), t.display_prefix())
    );
    assert!(
        stderr(&out).contains("in 1 of 1 file(s) scanned"),
        "{}",
        stderr(&out)
    );

    // Inside a directory a link is still skipped: the token is found once,
    // through the real file.
    let out = scan(&[dir.path()], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{}:1:{}\n", target.display(), t.display_prefix())
    );

    // A named link that leads nowhere is an error, never "clean".
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
    let out = scan(&[&dangling], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot read {}", dangling.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_named_path_that_is_not_a_file_or_directory_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let out = scan(&[&socket], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file or a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_lone_dash_reads_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (token(), token());
    let file = dir.path().join("f.txt");
    fs::write(&file, format!("{}\n", a.expose())).unwrap();
    let out = scan(
        &[Path::new("-"), &file],
        Some(&format!("x\n{}\n", b.expose())),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "stdin:2:{}\n{}:1:{}\n",
            b.display_prefix(),
            file.display(),
            a.display_prefix()
        )
    );
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// The hook definition in .pre-commit-hooks.yaml, run by pre-commit itself.
#[test]
fn the_pre_commit_hook_refuses_a_file_with_a_token() {
    let pre_commit = repo_root().join("target/tools/pre-commit/bin/pre-commit");
    assert!(
        pre_commit.exists(),
        "pre-commit is missing at {}: ./scripts/test.sh installs it",
        pre_commit.display()
    );
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    fs::create_dir(&project).unwrap();
    git(&project, &["init", "-q"]);
    let t = token();
    fs::write(project.join("leak.txt"), format!("key = {}\n", t.expose())).unwrap();
    fs::write(project.join("clean.txt"), "nothing to see\n").unwrap();
    git(&project, &["add", "leak.txt", "clean.txt"]);
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |files: &[&str]| {
        Command::new(&pre_commit)
            .current_dir(&project)
            .env("PATH", &path)
            .env("PRE_COMMIT_HOME", work.path().join("cache"))
            .env("GIT_AUTHOR_NAME", "test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
            .arg("try-repo")
            .arg(repo_root())
            .arg("agent-tokens-scan")
            .arg("--files")
            .args(files)
            .output()
            .unwrap()
    };
    let out = run(&["leak.txt", "clean.txt"]);
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!("leak.txt:1:{}", t.display_prefix())),
        "{shown}"
    );
    assert!(!shown.contains(t.expose()), "{shown}");
    let out = run(&["clean.txt"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn rule_file(name: &str) -> toml::Table {
    let path = repo_root().join("docs/scanning").join(name);
    toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap()
}

/// The gitleaks rule's regex and the capture group holding the secret.
fn gitleaks_rule(config: &toml::Table) -> (regex::Regex, usize) {
    let rules = config["rules"].as_array().unwrap();
    let rule = rules
        .iter()
        .find(|r| r["id"].as_str() == Some("agent-tokens-agent-token"))
        .unwrap();
    assert_eq!(
        rule["keywords"].as_array().unwrap()[0].as_str(),
        Some("sk_agt_")
    );
    let group = usize::try_from(rule["secretGroup"].as_integer().unwrap()).unwrap();
    (
        regex::Regex::new(rule["regex"].as_str().unwrap()).unwrap(),
        group,
    )
}

/// What a rule must and must not find, as (text, the secret it reports).
fn cases() -> Vec<(String, Option<String>)> {
    let t = token();
    let s = t.expose().to_owned();
    vec![
        (s.clone(), Some(s.clone())),
        (format!("export AGENT_TOKEN={s}"), Some(s.clone())),
        (format!("Authorization: Bearer {s}\r\n"), Some(s.clone())),
        (format!("{{\"token\":\"{s}\"}}"), Some(s.clone())),
        // Not a token: too short, too long, upper case, glued to a word.
        (s[..70].to_owned(), None),
        (format!("{s}0"), None),
        (s.to_uppercase(), None),
        (format!("my{s}"), None),
        ("sk_agt_ is the prefix".to_owned(), None),
    ]
}

fn check_rule(re: &regex::Regex, group: usize) {
    for (text, want) in cases() {
        let got = re
            .captures(&text)
            .and_then(|c| c.get(group))
            .map(|m| m.as_str().to_owned());
        assert_eq!(got, want, "on {text:?}");
    }
}

#[test]
fn the_gitleaks_rule_finds_tokens_and_not_look_alikes() {
    let (re, group) = gitleaks_rule(&rule_file("gitleaks.toml"));
    check_rule(&re, group);
}

#[test]
fn the_gitlab_ruleset_passes_the_same_rule_through() {
    let ruleset = rule_file("gitlab-secret-detection-ruleset.toml");
    let passthrough = &ruleset["secrets"]["passthrough"].as_array().unwrap()[0];
    assert_eq!(passthrough["type"].as_str(), Some("raw"));
    assert_eq!(passthrough["target"].as_str(), Some("gitleaks.toml"));
    let inner: toml::Table = toml::from_str(passthrough["value"].as_str().unwrap()).unwrap();
    let (re, group) = gitleaks_rule(&inner);
    check_rule(&re, group);
    let (ours, _) = gitleaks_rule(&rule_file("gitleaks.toml"));
    assert_eq!(re.as_str(), ours.as_str(), "the two rules drifted apart");
}

#[test]
fn the_github_custom_pattern_finds_tokens_and_its_test_string() {
    let pattern = rule_file("github-custom-pattern.toml");
    let field = |k: &str| pattern[k].as_str().unwrap().to_owned();
    // GitHub matches before_secret, secret_format and after_secret in turn.
    let re = regex::Regex::new(&format!(
        "(?:{})({})(?:{})",
        field("before_secret"),
        field("secret_format"),
        field("after_secret")
    ))
    .unwrap();
    check_rule(&re, 1);
    // The form's test string holds a token with a valid checksum.
    let sample = field("test_string");
    let secret = re.captures(&sample).unwrap()[1].to_owned();
    assert!(PlainToken::parse(&secret).is_ok());
    let out = scan(&[], Some(&sample));
    assert_eq!(out.status.code(), Some(1));
}
