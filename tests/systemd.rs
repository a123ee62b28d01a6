//! The `snapnet` binary under systemd's protocols, without systemd as init:
//! this test plays the notify socket (`READY=1`, `STATUS=`, `WATCHDOG=1`),
//! and `systemd-socket-activate` passes the control socket as a socket unit
//! would (`LISTEN_FDS`).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use snapnet::control::rpc::client::Client;

/// Stops the daemon (SIGTERM) when dropped, also when an assertion failed.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        wait_child(&mut self.0, Duration::from_secs(5));
    }
}

/// The notify messages received until `until` matches one, or the timeout.
fn messages_until(sock: &UnixDatagram, timeout: Duration, until: &str) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == until);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn ready_status_and_watchdog_reach_the_notify_socket() {
    let dir = TempDir::new("sd-notify");
    let notify_path = dir.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let daemon = Stopped(
        Command::new(env!("CARGO_BIN_EXE_snapnet"))
            .args(["serve", "--config"])
            .arg(one_vnic_config_file(&dir))
            .env("NOTIFY_SOCKET", &notify_path)
            // WatchdogSec=0.4s: the daemon reports every 0.2 s.
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = messages_until(&notify, Duration::from_secs(10), "READY=1");
    let first = ready.last().cloned().unwrap_or_default();
    assert!(first.contains("READY=1"), "no READY=1: {ready:?}");
    assert!(
        first.contains("STATUS=serving 1 vNIC(s), 0 with a guest attached"),
        "READY comes with the status: {first:?}"
    );
    let started = Instant::now();
    let beats = messages_until(&notify, Duration::from_secs(5), "WATCHDOG=1");
    assert!(
        beats.iter().any(|m| m.lines().any(|l| l == "WATCHDOG=1")),
        "no WATCHDOG=1 within 5 s: {beats:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "the first WATCHDOG=1 came after {:?}, later than WatchdogSec",
        started.elapsed()
    );
    drop(daemon);
}

fn status_through(path: &Path) -> Result<serde_json::Value, String> {
    Client::connect(path)
        .and_then(|mut c| c.call("daemon.status", serde_json::json!({})))
        .map_err(|e| e.to_string())
}

#[test]
fn socket_activation_passes_the_control_socket() {
    let dir = TempDir::new("sd-activate");
    let activated = dir.path("activated.sock");
    let daemon = Stopped(
        activate(&[], &activated, &dir)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(10), || {
        match status_through(&activated) {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    assert!(ok, "no answer on the activated socket: {last}");
    // The daemon served the socket it was given, not its config's own.
    assert!(
        !dir.path("control.sock").exists(),
        "the daemon bound its config's control socket as well"
    );
    drop(daemon);
    // The path is the socket unit's: stopping leaves it.
    assert!(
        activated.exists(),
        "the daemon removed the activated socket's path"
    );
}

#[test]
fn socket_activation_refuses_a_socket_that_is_not_a_unix_stream_listener() {
    let dir = TempDir::new("sd-bad-fd");
    let dgram = dir.path("dgram.sock");
    // A datagram socket as fd 3; the program starts on the first datagram.
    let mut child = activate(&["--datagram"], &dgram, &dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sender = UnixDatagram::unbound().unwrap();
    let sent = wait_for(Duration::from_secs(10), || {
        sender.send_to(b"go", &dgram).is_ok()
    });
    let status = wait_child(&mut child, Duration::from_secs(10));
    assert!(
        sent,
        "systemd-socket-activate never listened on {}",
        dgram.display()
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    assert!(
        err.contains("not a stream socket"),
        "the refusal says why: {err}"
    );
}

/// `systemd-socket-activate OPTIONS --listen SOCKET snapnet serve` with a
/// one-vNIC config in `dir`.
fn activate(options: &[&str], socket: &Path, dir: &TempDir) -> Command {
    let tool = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file())
    .expect("systemd-socket-activate is missing (apt install systemd; scripts/test-all.sh does)");
    let mut c = Command::new(tool);
    c.args(options)
        .arg("--listen")
        .arg(socket)
        .arg(env!("CARGO_BIN_EXE_snapnet"))
        .args(["serve", "--config"])
        .arg(one_vnic_config_file(dir))
        .stdout(Stdio::null());
    c
}
