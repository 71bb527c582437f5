//! The command line: `--check` validates configs and reports errors with file, line and key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::Command;

fn edgecache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgecache"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_example_and_the_built_in_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/edgecache.example.toml");
    let out = edgecache(&["--check", "--config", example]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("config is valid"));
    assert!(edgecache(&["--check"]).status.success());
}

#[test]
fn check_rejects_a_broken_config_naming_file_line_and_key() {
    let broken = concat!(env!("CARGO_MANIFEST_DIR"), "/config/broken/bad-size.toml");
    let out = edgecache(&["--check", "--config", broken]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{broken}:3: cache.max_memory: invalid size")),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = edgecache(&["--check", "--config", "/nonexistent/edgecache.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/edgecache.toml: cannot read config"));
}

#[test]
fn a_taken_listen_address_is_reported_at_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("edgecache-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("taken.toml");
    let text = format!(
        "[server]\nlisten = [\"{addr}\"]\n[[site]]\nhosts = [\"a.test\"]\norigins = [\"127.0.0.1:1\"]\n"
    );
    std::fs::write(&config, text).unwrap();
    let started = std::time::Instant::now();
    let out = edgecache(&["--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn systemctl_reload_sends_sighup_and_keeps_the_cache() {
    let unit = include_str!("../config/edgecache.service");
    let reloads: Vec<&str> = unit.lines().filter(|l| l.starts_with("ExecReload=")).collect();
    assert!(reloads.iter().any(|l| l.contains("--check")), "{reloads:?}");
    assert_eq!(
        reloads.last().copied(),
        Some("ExecReload=/bin/kill -HUP $MAINPID")
    );
    assert!(
        !unit.contains("-QUIT $MAINPID"),
        "reload must not upgrade (and empty the cache)"
    );
}

#[test]
fn pingoras_own_config_flag_is_refused_not_silently_ignored() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/edgecache.example.toml");
    let out = edgecache(&["--check", "-c", example]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("use --config FILE"), "{stderr}");
    let help = String::from_utf8_lossy(&edgecache(&["--help"]).stdout).to_string();
    assert!(!help.contains("--conf "), "{help}");
}
