//! What an operator meets first: the first user's password without a terminal (given in a file
//! or the environment, or generated into a file only the service user can read, and never
//! logged), `ringport version`, log colours only on a terminal, and a prompt exit on SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Reply, Server};

fn auth_works(server: &Server, user: &str, password: &str) -> bool {
    let mut conn = server.raw();
    conn.cmd(&[b"AUTH", user.as_bytes(), password.as_bytes()]) == Reply::ok()
}

#[test]
fn the_first_password_comes_from_the_file_given_and_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("first");
    std::fs::write(&file, "correct horse battery\nsecond line ignored\n").unwrap();
    let server = Server::builder()
        .no_users()
        .flag("--admin-password-file", file.to_str().unwrap())
        .start();
    assert!(auth_works(&server, "admin", "correct horse battery"));
    assert!(!auth_works(&server, "admin", "second line ignored"));
    assert!(!server.data_path().join("admin-password").exists());
    let log = server.log();
    assert!(
        log.contains("created user 'admin' with the password given"),
        "{log}"
    );
    assert!(!log.contains("correct horse"), "{log}");
    assert!(!server.stdout().join("\n").contains("correct horse"));
}

#[test]
fn the_first_password_comes_from_the_environment() {
    let server = Server::builder()
        .no_users()
        .env("RINGPORT_ADMIN_PASSWORD", "from-the-env")
        .start();
    assert!(auth_works(&server, "admin", "from-the-env"));
    assert!(!server.log().contains("from-the-env"));
}

#[test]
fn without_a_password_given_one_is_generated_into_a_private_file() {
    let server = Server::builder().no_users().start();
    let file = server.data_path().join("admin-password");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is readable by others", file.display());
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(password.len(), 24);
    assert!(auth_works(&server, "admin", &password));
    let log = server.log();
    assert!(log.contains("admin-password"), "the log says where: {log}");
    assert!(!log.contains(&password), "the password is in the log");
    // stdout is not a terminal here (as under systemd): the password is not printed.
    assert!(!server.stdout().join("\n").contains(&password));
}

#[test]
fn a_missing_or_empty_password_file_stops_the_first_start_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (file, reason) in [
        (dir.path().join("absent"), "cannot read"),
        (empty, "the first line is empty"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringport"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--admin-password-file")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--admin-password-file") && stderr.contains(reason),
            "{stderr}"
        );
    }
}

#[test]
fn version_names_the_commit_and_what_is_built_in() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ringport"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let long = run(&["version"]);
    let commit = long
        .lines()
        .find_map(|l| l.strip_prefix("commit: "))
        .unwrap_or_else(|| panic!("no commit line in {long}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    assert!(long.starts_with(&format!("ringport {}\n", env!("CARGO_PKG_VERSION"))));
    for feature in [
        "io_uring",
        "epoll",
        "tls",
        "store-postgres",
        "store-embedded",
    ] {
        assert!(long.contains(feature), "{feature} missing from {long}");
    }
    let short = run(&["--version"]);
    assert_eq!(
        short.trim(),
        format!("ringport {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn logs_have_colour_codes_only_when_asked_or_on_a_terminal() {
    // The harness reads stderr through a pipe, as a journal or a redirect would.
    let plain = Server::start();
    assert!(
        !plain.log().contains('\u{1b}'),
        "colour codes in a redirected log"
    );
    let coloured = Server::builder().flag("--log-color", "always").start();
    assert!(coloured.log().contains("\u{1b}["));
    let never = Server::builder().flag("--log-color", "never").start();
    assert!(!never.log().contains('\u{1b}'));
}

#[test]
fn an_idle_server_exits_on_sigterm() {
    let mut server = Server::start();
    let started = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    // How long it took is a figure for bench/exit-time.sh, not an assertion.
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
}
