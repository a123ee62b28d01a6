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
        let cfg = dir.path("c.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"runtime_dir":"{}","vnics":[{{"name":"vnic0","mac":"52:54:00:5a:00:01"}}]}}"#,
                dir.0.display()
            ),
        )
        .unwrap();
        let mut child = snapnet()
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sock = dir.path("vnic0.sock");
        assert!(
            wait_for(Duration::from_secs(10), || sock.exists()),
            "socket never appeared"
        );
        let mut peer = UnixStream::connect(&sock).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let mut buf = [0u8; 16];
        let n = peer.read(&mut buf).expect("peer sees EOF, not a hang");
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

fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
