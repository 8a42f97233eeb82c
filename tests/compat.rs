//! Kernel compatibility, black-box: the probe explains what it found, every kernel profile and
//! the epoll backend serve, a refused buffer ring falls back instead of aborting, and under a
//! seccomp filter that denies io_uring (as Docker 25+'s default profile does) the server says
//! why and serves on epoll.

mod common;

use std::process::Command;

use common::{Reply, Server};

fn ringport(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringport"))
        .args(args)
        .output()
        .expect("run ringport");
    assert!(
        out.status.success(),
        "ringport {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn probe_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ringport(args)).expect("probe --json prints JSON")
}

fn info_server(server: &Server) -> String {
    let mut conn = server.raw_authed();
    let Reply::Bulk(info) = conn.cmd(&[b"INFO", b"server"]) else {
        panic!("INFO is a bulk string")
    };
    String::from_utf8(info).unwrap()
}

fn field<'a>(info: &'a str, name: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO:\n{info}"))
        .trim()
}

fn serves(server: &Server) {
    let mut conn = server.raw_authed();
    assert_eq!(conn.cmd(&[b"PING"]), Reply::Simple("PONG".into()));
    assert_eq!(
        conn.cmd(&[b"HASH", b"3", b"abc"]),
        Reply::bulk(common::sha256_rounds(b"abc", 3))
    );
    assert_eq!(conn.cmd(&[b"SET", b"k", b"v"]), Reply::ok());
    assert_eq!(conn.cmd(&[b"GET", b"k"]), Reply::bulk("v"));
}

#[test]
fn probe_names_the_paths_for_each_profile() {
    let newest = probe_json(&["probe", "--json"]);
    assert_eq!(newest["io_uring"]["available"], true);
    assert_eq!(newest["paths"]["backend"], "io_uring");
    assert!(newest["kernel_release"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    let old = probe_json(&["probe", "--json", "--kernel-profile", "5.10"]);
    assert_eq!(old["paths"]["accept"], "single-shot");
    assert_eq!(old["paths"]["recv"], "poll then recv");
    assert_eq!(old["setup_flags"]["defer_taskrun"], false);
    assert_eq!(old["paths"]["sessions"], "plain descriptors");
    // Direct descriptors need 6.13 (they release a closed socket at once only there).
    let release = newest["kernel_release"].as_str().unwrap_or_default();
    let version = ringport_ring::probe::parse_version(release);
    let expected = if version >= (6, 13) {
        "direct descriptors"
    } else {
        "plain descriptors"
    };
    assert_eq!(newest["paths"]["sessions"], expected, "kernel {release}");
    // Incremental consumption of receive buffers needs 6.12.
    let expected = if version >= (6, 12) {
        "incremental"
    } else {
        "whole"
    };
    assert_eq!(
        newest["paths"]["recv_buffers"], expected,
        "kernel {release}"
    );
    assert_eq!(old["paths"]["recv_buffers"], "none");
    let six_one = probe_json(&["probe", "--json", "--kernel-profile", "6.1"]);
    assert_eq!(six_one["paths"]["sessions"], "plain descriptors");
    assert_eq!(six_one["paths"]["recv"], "multishot + buffer ring");
    assert_eq!(six_one["paths"]["recv_buffers"], "whole");
    let forced = probe_json(&["probe", "--json", "--uring-disable", "incremental-buffers"]);
    assert_eq!(forced["paths"]["recv_buffers"], "whole");
    // The busy tick is a multishot timeout (6.4); the 6.1 profile and the switch turn it off.
    let expected = if version >= (6, 4) {
        "counted by the wait (busy tick)"
    } else {
        "reaped on their own"
    };
    assert_eq!(newest["paths"]["send"], expected, "kernel {release}");
    assert_eq!(six_one["paths"]["send"], "reaped on their own");
    let forced = probe_json(&["probe", "--json", "--uring-disable", "busy-tick"]);
    assert_eq!(forced["paths"]["send"], "reaped on their own");
    let forced = probe_json(&["probe", "--json", "--uring-disable", "multishot-accept"]);
    assert_eq!(forced["paths"]["accept"], "single-shot");
    let forced = probe_json(&["probe", "--json", "--uring-disable", "direct-descriptors"]);
    assert_eq!(forced["paths"]["sessions"], "plain descriptors");
    let text = ringport(&["probe"]);
    assert!(
        text.contains("accept:") && text.contains("recv:") && text.contains("recv buffers:"),
        "{text}"
    );
}

#[test]
fn every_profile_and_the_epoll_backend_serve() {
    for (flags, accept, recv, backend) in [
        (
            vec!["--kernel-profile", "6.1"],
            "Multishot",
            "MultishotBufRing",
            "io_uring",
        ),
        (
            vec!["--kernel-profile", "5.15"],
            "SingleShot",
            "PollThenRecv",
            "io_uring",
        ),
        (
            vec!["--kernel-profile", "5.10"],
            "SingleShot",
            "PollThenRecv",
            "io_uring",
        ),
        (vec!["--backend", "epoll"], "epoll", "epoll", "epoll"),
    ] {
        let mut builder = Server::builder();
        for pair in flags.chunks(2) {
            builder = builder.flag(pair[0], pair[1]);
        }
        let server = builder.start();
        serves(&server);
        let info = info_server(&server);
        assert_eq!(field(&info, "backend"), backend, "{flags:?}");
        assert_eq!(field(&info, "accept_path"), accept, "{flags:?}");
        assert_eq!(field(&info, "recv_path"), recv, "{flags:?}");
        // None of these kernels (nor epoll) has the busy tick's multishot timeout.
        assert_eq!(field(&info, "busy_tick"), "no", "{flags:?}");
    }
}

#[test]
fn a_refused_buffer_ring_falls_back_to_poll_then_recv() {
    let server = Server::builder().switch("--inject-bufring-einval").start();
    serves(&server);
    let info = info_server(&server);
    assert!(
        field(&info, "recv_path").starts_with("PollThenRecv"),
        "{info}"
    );
    assert!(server.log().contains("refused the provided-buffer ring"));
}

#[test]
fn denied_io_uring_serves_on_epoll_and_probe_says_why() {
    let probe = ringport(&[
        "deny-io-uring",
        "--",
        env!("CARGO_BIN_EXE_ringport"),
        "probe",
        "--json",
    ]);
    let probe: serde_json::Value = serde_json::from_str(&probe).unwrap();
    assert_eq!(probe["io_uring"]["available"], false);
    assert_eq!(probe["paths"]["backend"], "epoll");
    let advice = probe["io_uring"]["advice"].as_str().unwrap();
    assert!(
        advice.contains("EPERM") && advice.contains("seccomp"),
        "{advice}"
    );

    let server = Server::builder().deny_io_uring().start();
    serves(&server);
    assert_eq!(field(&info_server(&server), "backend"), "epoll");
    let log = server.log();
    assert!(
        log.contains("io_uring is not available; serving on the epoll backend")
            && log.contains("EPERM"),
        "{log}"
    );
}
