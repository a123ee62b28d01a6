//! The `snapnet` binary: config errors name the offending key, and SIGTERM /
//! SIGINT stop the daemon cleanly (sockets removed, connected peers see EOF).

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn snapnet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snapnet"))
}

/// `snapnet serve --config CFG`, its counters (stdout) to `stdout`.
fn serve(cfg: &std::path::Path, stdout: Stdio) -> std::process::Child {
    snapnet()
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn unknown_key_and_bad_value_are_refused_at_start_and_named() {
    let dir = TempDir::new("cli-bad");
    for (doc, needle) in [
        (
            r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","mtuu":1500}]}"#,
            "mtuu",
        ),
        (
            r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","queue_pairs":99}]}"#,
            "vnics[0].queue_pairs",
        ),
        (
            r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01"}], "colour": "blue"}"#,
            "colour",
        ),
    ] {
        let path = dir.path("bad.json");
        std::fs::write(&path, doc).unwrap();
        let out = snapnet()
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{doc}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "stderr should name {needle}: {err}");
    }
    let out = snapnet()
        .args(["serve", "--config", "/nonexistent/snapnet.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/snapnet.json"));
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_peers_see_a_disconnect() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = TempDir::new("cli-sig");
        let cfg = one_vnic_config_file(&dir);
        let mut child = serve(&cfg, Stdio::piped());
        let sock = dir.path("vnic0.sock");
        // The socket's file appears at bind, a moment before the daemon
        // listens on it: wait for a connection, not for the file.
        let mut peer = None;
        assert!(
            wait_for(Duration::from_secs(10), || {
                peer = UnixStream::connect(&sock).ok();
                peer.is_some()
            }),
            "socket never accepted a connection"
        );
        let mut peer = peer.unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let mut buf = [0u8; 16];
        // A signal to this test process (another test's child exiting) may
        // interrupt the read: that is no answer from the daemon.
        let n = loop {
            match peer.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.expect("peer sees EOF, not a hang"),
            }
        };
        assert_eq!(n, 0);
        let status = wait_child(&mut child, Duration::from_secs(5)).expect("daemon exits");
        assert!(status.success(), "exit status {status:?}");
        assert!(!sock.exists(), "socket file left behind");
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(out.contains("vnic0"), "counters printed at exit: {out}");
    }
}

#[test]
fn version_names_the_git_revision() {
    let out = snapnet().arg("--version").output().unwrap();
    assert!(out.status.success());
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("snapnet {} (git {revision})", snapnet::VERSION)
    );
}

#[test]
fn ctl_finds_the_socket_and_fails_with_the_daemons_message() {
    let dir = TempDir::new("cli-ctl");
    let cfg = one_vnic_config_file(&dir);
    let mut child = serve(&cfg, Stdio::null());
    let control = dir.path("control.sock");
    let up = wait_for(Duration::from_secs(10), || control.exists());
    let ctl = |args: &[&str], env: Option<&std::path::Path>| {
        let mut c = snapnet();
        c.arg("ctl").args(args).env_remove("SNAPNET_CONFIG");
        match env {
            Some(p) => c.env("SNAPNET_CONTROL", p),
            None => c.env_remove("SNAPNET_CONTROL"),
        };
        c.output().unwrap()
    };
    let by_config = ctl(&["--config", cfg.to_str().unwrap(), "status"], None);
    let by_env = ctl(&["vnic", "get", "vnic0"], Some(&control));
    let refused = ctl(&["vnic", "remove", "nosuch"], Some(&control));
    let unreachable = ctl(&["--socket", "/nonexistent/ctl.sock", "status"], None);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_child(&mut child, Duration::from_secs(5)).expect("daemon exits");
    assert!(up, "control socket never appeared");
    assert!(by_config.status.success(), "--config: {by_config:?}");
    assert!(by_env.status.success(), "SNAPNET_CONTROL: {by_env:?}");
    assert!(String::from_utf8_lossy(&by_env.stdout).contains("vnic0"));
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("vnic.remove: ") && err.contains("nosuch") && err.contains("(error "),
        "the daemon's message and code: {err}"
    );
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
    assert!(String::from_utf8_lossy(&unreachable.stderr)
        .contains("cannot reach the daemon at /nonexistent/ctl.sock"));
}
