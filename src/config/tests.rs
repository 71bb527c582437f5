use std::path::PathBuf;

use super::*;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn every_shipped_config_loads() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            loaded += 1;
        }
    }
    assert!(loaded >= 2, "expected the default and the example config");
}

#[test]
fn every_broken_config_fails_with_its_expected_message() {
    let mut checked = 0;
    for entry in std::fs::read_dir(config_dir().join("broken")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect: ' first line", path.display()));
        let err = Config::load(&path)
            .expect_err("broken config must not load")
            .to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(
            err.contains(expected),
            "{}: got {err:?}, want {expected:?}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn built_in_config_runs_the_demo_origin() {
    let config = Config::built_in().unwrap();
    assert!(config.demo_listen.is_some());
    assert!(config.sites[0].default);
}

#[test]
fn hosts_are_normalized() {
    let text = "[[site]]\nhosts = [\"Example.COM:8080\"]\norigins = [\"127.0.0.1:1\"]\n";
    let config = Config::parse(text, Path::new("t.toml")).unwrap();
    assert_eq!(config.sites[0].hosts, vec!["example.com"]);
}

#[test]
fn the_admin_token_can_come_from_the_environment() {
    let text = "[admin]\ntoken_env = \"EDGECACHE_TEST_ADMIN_TOKEN\"\n[[site]]\nhosts = [\"a\"]\norigins = [\"127.0.0.1:1\"]\n";
    let missing = Config::parse(text, Path::new("t.toml")).unwrap_err().to_string();
    assert!(missing.contains("admin.token_env"), "{missing}");
    std::env::set_var("EDGECACHE_TEST_ADMIN_TOKEN", "from-the-environment");
    let config = Config::parse(text, Path::new("t.toml")).unwrap();
    let admin = config.admin.unwrap();
    assert_eq!(admin.token, "from-the-environment");
    assert!(
        !format!("{admin:?}").contains("from-the-environment"),
        "the token is never printed"
    );
}

#[test]
fn runtime_files_default_to_one_per_config_file() {
    let text = "[[site]]\nhosts = [\"a.test\"]\norigins = [\"127.0.0.1:9\"]\n";
    let one = Config::parse(text, Path::new("/etc/edgecache/one.toml")).unwrap();
    let again = Config::parse(text, Path::new("/etc/edgecache/one.toml")).unwrap();
    let two = Config::parse(text, Path::new("/etc/edgecache/two.toml")).unwrap();
    assert_eq!(one.server.upgrade_sock, again.server.upgrade_sock);
    assert_ne!(one.server.upgrade_sock, two.server.upgrade_sock);
    assert_ne!(one.server.pid_file, two.server.pid_file);
    assert!(one.server.pid_file.ends_with(".pid"), "{}", one.server.pid_file);
}
