//! Disk full, for real: the store on a small tmpfs that the test fills up.
//! Writes fail with 500 and the page's messages, reads keep answering,
//! nothing stored is damaged, and once space is freed writes work again
//! without an operator. Needs permission to mount (root in CI); without it
//! the test says so and skips.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.to_owned()))
}

/// Fills the filesystem holding `dir` until writing fails.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_fails_writes_cleanly_keeps_reads_and_recovers_by_itself() {
    let root = tempfile::tempdir().unwrap();
    let mnt = root.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mount) = mount_tmpfs(&mnt, "24m") else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here (needs root); disk-full behaviour was not tested");
        return;
    };
    let config = write_config_with(&mnt, "");
    let mut server = Server::start(&config);
    let base = server.base();
    let client = reqwest::Client::new();
    use reqwest::Method;

    // Tokens stored before the disk fills.
    let mut issued = Vec::new();
    for i in 0..5 {
        let jwt = hs256_jwt(&format!("user-{i}"));
        let (status, body) = call(
            &client,
            Method::POST,
            &format!("{base}/api/agent-tokens/me"),
            &jwt,
        )
        .await;
        assert_eq!(status, 200);
        issued.push((jwt, body["token"].as_str().unwrap().to_owned()));
    }

    let filler = fill(&mnt);
    // Writes fail with the page's messages; keep writing until the store notices
    // (the journal's buffer may absorb a little first).
    let jwt0 = issued[0].0.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed_body = loop {
        let (status, body) = call(
            &client,
            Method::POST,
            &format!("{base}/api/agent-tokens/me"),
            &jwt0,
        )
        .await;
        if status == 500 {
            break body;
        }
        assert_eq!(status, 200);
        // An acknowledged rotation is the user's token now.
        let token = body["token"].as_str().unwrap().to_owned();
        issued[0].1 = token;
        assert!(
            Instant::now() < deadline,
            "writes never failed on a full disk"
        );
    };
    assert_eq!(failed_body["message"], "Failed to store agent token.");
    let (status, body) = call(
        &client,
        Method::POST,
        &format!("{base}/api/agent-tokens/me/get-or-create"),
        &hs256_jwt("newcomer"),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["message"], "Failed to check or store token.");
    let (status, body) = call(
        &client,
        Method::DELETE,
        &format!("{base}/api/agent-tokens/me"),
        &issued[1].0,
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["message"], "Failed to revoke token.");
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    // Reads keep answering: status and verify for tokens stored before.
    for (jwt, token) in &issued[1..] {
        let (status, body) = call(
            &client,
            Method::GET,
            &format!("{base}/api/agent-tokens/me"),
            jwt,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["token_prefix"], format!("{}...", &token[..15]));
        let (status, _) = call(
            &client,
            Method::GET,
            &format!("{base}/api/agent-tokens/verify"),
            token,
        )
        .await;
        assert_eq!(status, 200);
    }

    // Free the space: writes come back without anyone touching the server.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_token = loop {
        let (status, body) = call(
            &client,
            Method::POST,
            &format!("{base}/api/agent-tokens/me/get-or-create"),
            &hs256_jwt("newcomer"),
        )
        .await;
        if status == 200 {
            break body["token"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "writes did not recover after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    // Nothing stored was damaged: every acknowledged token still verifies,
    // also after a restart, and the offline check finds no problem.
    assert!(server.terminate().success());
    let log: String = server
        .drain_log()
        .into_iter()
        .filter(|l| !l.contains("HTTP/1.1"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(log.contains("storage recovered"), "{log}");
    // The refused rotation's bytes never reached the journal: below, after a
    // restart, user-0 still has the last acknowledged token.
    assert!(!log.contains("panicked"), "{log}");
    let server = Server::start(&config);
    let base = server.base();
    for (jwt, token) in issued.iter().skip(1).chain(std::iter::once(&issued[0])) {
        let (status, body) = call(
            &client,
            Method::GET,
            &format!("{base}/api/agent-tokens/verify"),
            token,
        )
        .await;
        assert_eq!(status, 200, "{body} for {}:\n{log}", &token[..15]);
        let (_, me) = call(
            &client,
            Method::GET,
            &format!("{base}/api/agent-tokens/me"),
            jwt,
        )
        .await;
        assert_eq!(me["token_prefix"], format!("{}...", &token[..15]));
    }
    let (status, _) = call(
        &client,
        Method::GET,
        &format!("{base}/api/agent-tokens/verify"),
        &new_token,
    )
    .await;
    assert_eq!(status, 200);
    drop(server);
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}
