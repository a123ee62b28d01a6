//! `snapnet ctl upgrade` through the real binary: a running daemon hands its
//! vNICs over to a new process while snapnet's frontend sends
//! sequence-numbered frames both ways on two queue pairs. Nothing is lost,
//! duplicated or reordered, the frontends never reconnect, and the counters
//! go on. An upgrade to a binary that does not answer is refused and the
//! daemon serves on.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snapnet::control::rpc::client::{Client, ClientError};
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

const QPS: u16 = 2;
/// Frames per (direction, queue pair) not yet received, at most: they fit
/// the receiving ring, so none waits in snapnet for a descheduled thread.
const IN_FLIGHT: u32 = 8;
/// vnic0's egress limit: far below what the unshaped direction reaches
/// even on a busy CI machine (4 kpps seen), so the check that it binds holds.
const SHAPED_PPS: u64 = 500;

/// A snapnet process, killed if the test ends early.
struct Process(Option<Child>, Option<u32>);

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.1 {
            // SAFETY: a signal to a pid this test started (through the old
            // process); at worst it is gone already.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn call(control: &Path, method: &str, params: Value) -> Result<Value, ClientError> {
    Client::connect(control)?.call(method, params)
}

/// Who sent a frame: its direction and queue pair, and its number there.
fn tag(dir: usize, qp: u16, n: u32) -> u32 {
    (dir as u32) << 28 | u32::from(qp) << 24 | n
}

/// Both guests: each sends on every queue pair to the other, and checks
/// that what it receives from each (direction, queue pair) comes in order.
struct Guests {
    fes: [Frontend; 2],
    sent: [[u32; QPS as usize]; 2],
    got: [[u32; QPS as usize]; 2],
}

impl Guests {
    fn step(&mut self, sending: bool) {
        let macs = [MAC0, MAC1];
        for dir in 0..2 {
            for qp in 0..QPS {
                let q = usize::from(qp);
                if sending && self.sent[dir][q] < self.got[dir][q] + IN_FLIGHT {
                    let f = frame(
                        macs[1 - dir],
                        macs[dir],
                        80,
                        tag(dir, qp, self.sent[dir][q]),
                    );
                    self.sent[dir][q] +=
                        self.fes[dir].send(qp, &[&f], &VirtioNetHdr::default()) as u32;
                }
            }
        }
        for dir in 0..2 {
            let from = 1 - dir;
            let got = &mut self.got;
            for qp in 0..QPS {
                self.fes[dir].recv(qp, |_, p| {
                    let t = u32::from_be_bytes(p[14..18].try_into().unwrap());
                    let (d, q, n) = (
                        (t >> 28) as usize,
                        ((t >> 24) & 0xf) as usize,
                        t & 0xff_ffff,
                    );
                    assert_eq!(d, from, "a frame came back to its sender");
                    assert_eq!(
                        n, got[d][q],
                        "direction {d} queue pair {q}: frame {n} out of order"
                    );
                    got[d][q] += 1;
                });
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.step(true);
        }
    }

    /// Receives what is still on its way; every frame sent must arrive.
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.got != self.sent {
            assert!(
                Instant::now() < deadline,
                "frames lost: sent {:?}, received {:?}",
                self.sent,
                self.got
            );
            self.step(false);
        }
    }

    fn total_from(&self, dir: usize) -> u64 {
        self.sent[dir].iter().map(|n| u64::from(*n)).sum()
    }
}

/// A daemon of two vNICs (two queue pairs each) started from the real
/// binary, with both guests connected: vnic0 serves its socket and is
/// shaped, vnic1 connects to its frontend's (socket client, as with QEMU's
/// `server=on`).
fn start_daemon(dir: &TempDir, policy: &str) -> (Process, PathBuf, u32, Guests, UnixDatagram) {
    let control = dir.path("control.sock");
    let notify = UnixDatagram::bind(dir.path("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = json!({
        "runtime_dir": dir.0,
        "control_socket": control,
        "vnics": [
            { "name": "vnic0", "mac": "52:54:00:5a:00:01", "queue_pairs": QPS,
              "tx_limit": { "packets_per_sec": SHAPED_PPS, "burst_packets": 200 } },
            { "name": "vnic1", "mac": "52:54:00:5a:00:02", "queue_pairs": QPS,
              "role": "client", "socket": dir.path("vm1.sock") }
        ],
        "groups": [ { "name": "default", "policy": policy, "threads": 1 } ]
    });
    std::fs::write(dir.path("snapnet.json"), cfg.to_string()).unwrap();
    let log = std::fs::File::create(dir.path("snapnet.log")).unwrap();
    let old = Command::new(env!("CARGO_BIN_EXE_snapnet"))
        .args(["serve", "--metrics-listen", "127.0.0.1:0", "--config"])
        .arg(dir.path("snapnet.json"))
        // systemd's notify socket, played by the test (see `notified`).
        .env("NOTIFY_SOCKET", dir.path("notify.sock"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let old_pid = old.id();
    let old = Process(Some(old), None);
    wait_until("the control socket", || {
        call(&control, "daemon.status", json!({})).is_ok()
    });

    let fc = FrontendConfig {
        queue_pairs: QPS,
        ..Default::default()
    };
    let served = Frontend::connect(&dir.path("vnic0.sock"), &fc, Duration::from_secs(10)).unwrap();
    let serving = Frontend::accept(&dir.path("vm1.sock"), &fc, Duration::from_secs(10)).unwrap();
    let guests = Guests {
        fes: [served, serving],
        sent: Default::default(),
        got: Default::default(),
    };
    (old, control, old_pid, guests, notify)
}

/// The messages sent to systemd's notify socket (which the test binds
/// before the daemon starts) until one holds `want`.
fn notified(socket: &UnixDatagram, want: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while !seen.contains(want) {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want} on the notify socket ({e}); got {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    seen
}

/// Where the daemon serves metrics (from its log).
fn metrics_addr(dir: &TempDir) -> String {
    let log = std::fs::read_to_string(dir.path("snapnet.log")).unwrap();
    log.lines()
        .find_map(|l| l.split_once("metrics at http://"))
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(addr, _)| addr.to_string())
        .expect("the daemon logs its metrics address")
}

/// The guest TX frames the metrics count for `vnic`, summed over its queues.
fn scraped_tx_packets(addr: &str, vnic: &str) -> u64 {
    let out = scrape(addr);
    let label = format!("vnic=\"{vnic}\"");
    out.lines()
        .filter(|l| {
            l.starts_with("snapnet_vnic_packets")
                && l.contains(&label)
                && l.contains("direction=\"tx\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// What the metrics endpoint answers (status line included).
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// Asks for an upgrade while the guests keep sending (the call blocks for
/// the blackout).
fn upgrade_under_traffic(
    control: &Path,
    params: Value,
    guests: &mut Guests,
) -> Result<Value, ClientError> {
    let upgrade = {
        let control = control.to_path_buf();
        std::thread::spawn(move || call(&control, "daemon.upgrade", params))
    };
    while !upgrade.is_finished() {
        guests.step(true);
    }
    upgrade.join().unwrap()
}

/// The counters of both vNICs, and of their switch ports, match what the
/// guests sent.
fn counters_match(control: &Path, guests: &Guests) {
    for (i, name) in ["vnic0", "vnic1"].iter().enumerate() {
        let stats = call(control, "vnic.stats", json!({ "name": name })).unwrap();
        assert_eq!(stats["tx_packets"], guests.total_from(i), "{name}: {stats}");
        assert_eq!(
            stats["rx_packets"],
            guests.total_from(1 - i),
            "{name}: {stats}"
        );
        // The switch counts what the port sent into it as rx.
        let port = &stats["switch_port"];
        assert_eq!(port["rx_packets"], guests.total_from(i), "{name}: {port}");
        assert_eq!(
            port["tx_packets"],
            guests.total_from(1 - i),
            "{name}: {port}"
        );
    }
}

/// Drains what is in flight, checks the counters, and stops the daemon that
/// serves now (not this test's child: its control socket going away shows
/// it stopped).
fn finish(control: &Path, guests: &mut Guests, old: &mut Process) {
    guests.drain();
    counters_match(control, guests);
    call(control, "daemon.shutdown", json!({})).unwrap();
    wait_until("the serving process to stop", || !control.exists());
    old.1 = None;
}

/// What the new process logs for a vNIC whose preview was stale.
const REPLAYED_AGAIN: &str = "changed since its preview: replayed again";

/// Every (direction, queue pair) received more than `before`.
fn flowed_since(guests: &Guests, before: [[u32; QPS as usize]; 2]) -> bool {
    guests
        .got
        .iter()
        .flatten()
        .zip(before.iter().flatten())
        .all(|(a, b)| a > b)
}

#[test]
fn an_upgrade_moves_every_vnic_to_a_new_process_losing_nothing() {
    let dir = TempDir::new("upgrade");
    let (mut old, control, old_pid, mut guests, notify) = start_daemon(&dir, "dedicated");
    notified(&notify, "READY=1");
    let metrics = metrics_addr(&dir);
    guests.run_for(Duration::from_millis(300));
    assert!(
        guests.got.iter().flatten().all(|n| *n > 0),
        "traffic flows: {:?}",
        guests.got
    );

    // A binary that exits at once: refused, and nothing stopped.
    let e = call(&control, "daemon.upgrade", json!({ "binary": "/bin/true" }))
        .expect_err("an upgrade to /bin/true must fail");
    assert!(e.to_string().contains("not started"), "{e}");
    let before = guests.got;
    guests.run_for(Duration::from_millis(200));
    assert!(
        flowed_since(&guests, before),
        "the daemon serves on after a refused upgrade"
    );

    // A vNIC added at run time (the pool was sized without it), with no
    // frontend: it moves too, its socket with it.
    call(
        &control,
        "vnic.add",
        json!({ "name": "spare", "mac": "52:54:00:5a:00:03", "socket": dir.path("spare.sock") }),
    )
    .unwrap();
    let fdb = |control: &Path| {
        let mut v: Vec<String> = call(control, "switch.fdb.list", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect();
        v.sort();
        v
    };
    let fdb_before = fdb(&control);

    let report =
        upgrade_under_traffic(&control, json!({}), &mut guests).expect("the upgrade succeeds");
    let new_pid = report["pid"].as_u64().expect("a pid") as u32;
    old.1 = Some(new_pid);
    assert_ne!(new_pid, old_pid);
    assert_eq!(report["vnics"], 3, "{report}");
    // Each vNIC went on from its preview (protocol 6), none replayed again.
    let log = std::fs::read_to_string(dir.path("snapnet.log")).unwrap();
    assert!(log.contains("every vNIC prepared"), "a brownout ran");
    assert!(!log.contains(REPLAYED_AGAIN), "no preview was stale");
    // Each vNIC's own blackout, none longer than the daemon's.
    let each = report["vnic_blackouts_ms"].as_object().expect("per vNIC");
    assert_eq!(each.len(), 3, "{report}");
    let whole = report["blackout_ms"].as_f64().unwrap();
    assert!(
        each.values().all(|ms| ms.as_f64().unwrap() <= whole + 1.0),
        "{report}"
    );
    // Under systemd the new process is the main pid before the old exits.
    notified(&notify, &format!("MAINPID={new_pid}"));
    eprintln!("upgrade: {report}");

    // The old process exits by itself, successfully.
    let mut child = old.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        guests.step(true);
    };
    assert!(status.success(), "old process: {status}");

    guests.run_for(Duration::from_millis(300));
    guests.drain();
    assert!(
        guests.got.iter().flatten().all(|n| *n > 100),
        "{:?}",
        guests.got
    );

    // The new process answers on the same control socket, and its counters
    // go on from the old one's.
    let status = call(&control, "daemon.status", json!({})).unwrap();
    assert_eq!(status["vnics"], 3);
    assert!(
        dir.path("spare.sock").exists(),
        "the spare vNIC's socket stays"
    );
    assert_eq!(fdb(&control), fdb_before, "the FDB crossed");
    counters_match(&control, &guests);
    // The metrics listener crossed too: same address, counters going on,
    // and each vNIC's blackout there.
    assert!(
        scrape(&metrics).contains("snapnet_vnic_upgrade_blackout_seconds{vnic=\"vnic0\"}"),
        "the blackout gauge"
    );
    assert_eq!(
        scraped_tx_packets(&metrics, "vnic1"),
        guests.total_from(1),
        "the new process serves metrics on the old address"
    );
    // vnic0's limit holds for the vNIC as a whole (two queue pairs) in the
    // new process, and binds: the unshaped direction goes much faster.
    let arrived = |g: &Guests, dir: usize| g.got[dir].iter().map(|n| f64::from(*n)).sum::<f64>();
    let (shaped0, free0, t0) = (arrived(&guests, 0), arrived(&guests, 1), Instant::now());
    guests.run_for(Duration::from_millis(500));
    let secs = t0.elapsed().as_secs_f64();
    let shaped = arrived(&guests, 0) - shaped0;
    let free = arrived(&guests, 1) - free0;
    // The burst (200) and the frames that were already in flight.
    let limit = SHAPED_PPS as f64 * secs + 200.0 + f64::from(IN_FLIGHT * u32::from(QPS));
    eprintln!("in {secs:.2} s: shaped {shaped} frames (limit {limit:.0}), unshaped {free}");
    assert!(
        shaped <= limit,
        "vnic0 sent {shaped} frames, above its limit {limit:.0}"
    );
    assert!(
        free > 2.0 * shaped,
        "the shaper did not bind: {shaped} against {free}"
    );
    guests.drain();
    call(&control, "daemon.shutdown", json!({})).unwrap();
    // The new process is not this one's child (the old one started it):
    // its stop shows as the control socket going away.
    wait_until("the new process to stop", || !control.exists());
    old.1 = None;
}

/// A script `name` in `dir` that runs this build's snapnet with `env` set:
/// an upgrade's new binary that behaves as a test asks.
fn wrapper(dir: &TempDir, name: &str, env: &str) -> PathBuf {
    let path = dir.path(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n{env} exec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_snapnet")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// The rollback tier: a new binary that dies at each step of the protocol
/// (`SNAPNET_UPGRADE_FAIL_AT`). Before the vNICs stop the upgrade is not
/// started; after, the old process takes its own export back. Either way it
/// serves on with nothing lost, duplicated or reordered, the frontends never
/// reconnect, the counters go on, and a real upgrade still works after.
/// The daemon's group is compacting: its engines sleep until kicked, so
/// this also shows that a resumed engine serves what the guest posted
/// during the blackout without waiting for a kick.
#[test]
fn a_new_process_that_dies_at_any_step_is_rolled_back() {
    let dir = TempDir::new("upgrade-rollback");
    // Compacting: its engines sleep between kicks, so the new process's
    // engines must look at what the guests posted without waiting for one.
    let (mut old, control, old_pid, mut guests, _notify) = start_daemon(&dir, "compacting");
    guests.run_for(Duration::from_millis(200));
    for (step, outcome) in [
        ("hello", "not started"),
        ("ready", "not started"),
        // Protocol 6: the vNICs are previewed before any stops, so a new
        // process that dies before it prepared them all started nothing.
        ("state", "not started"),
        ("prepared", "not started"),
        ("vnic", "rolled back"),
        ("adopted", "rolled back"),
        // Every connection replayed, then an error rather than a crash.
        ("adopted-error", "rolled back"),
    ] {
        let wrapper = wrapper(
            &dir,
            &format!("fail-at-{step}"),
            &format!("SNAPNET_UPGRADE_FAIL_AT={step}"),
        );
        let e = upgrade_under_traffic(&control, json!({ "binary": wrapper }), &mut guests)
            .expect_err("a new process that dies must not take over");
        assert!(e.to_string().contains(outcome), "{step}: {e}");
        eprintln!("{step}: {e}");
        let child = old.0.as_mut().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "{step}: the old process serves on"
        );
        let before = guests.got;
        guests.run_for(Duration::from_millis(200));
        assert!(
            flowed_since(&guests, before),
            "{step}: frames flow after the rollback: {:?} then {:?}",
            before,
            guests.got
        );
        guests.drain();
        counters_match(&control, &guests);
    }

    // Every preview taken for stale, as when a frontend changed something
    // during the brownout: each step replays its vNIC again, on the
    // engines it prepared.
    let stale = wrapper(&dir, "stale-previews", "SNAPNET_UPGRADE_STALE_PREVIEWS=1");
    let report = upgrade_under_traffic(&control, json!({ "binary": stale }), &mut guests)
        .expect("an upgrade whose previews are all stale succeeds");
    let stale_pid = report["pid"].as_u64().expect("a pid") as u32;
    // Only here, once per vNIC: the upgrades the fail points ended found
    // their previews right.
    let log = std::fs::read_to_string(dir.path("snapnet.log")).unwrap();
    assert_eq!(log.matches(REPLAYED_AGAIN).count(), 2, "each vNIC once");
    old.1 = Some(stale_pid);
    let before = guests.got;
    guests.run_for(Duration::from_millis(200));
    assert!(
        flowed_since(&guests, before),
        "frames flow after the stale previews' upgrade"
    );
    guests.drain();
    counters_match(&control, &guests);

    // A guest being live-migrated: its dirty log marks what this process
    // writes, so no upgrade starts; the guests keep their network.
    let log = guests.fes[1].start_dirty_log().expect("logging starts");
    let e = upgrade_under_traffic(&control, json!({}), &mut guests)
        .expect_err("no upgrade while a guest migrates");
    assert!(e.to_string().contains("live-migrat"), "{e}");
    let before = guests.got;
    guests.run_for(Duration::from_millis(200));
    assert!(
        flowed_since(&guests, before),
        "frames flow while it migrates"
    );
    assert!(
        !log.dirty_pages().is_empty(),
        "the old process marks the log"
    );
    guests.fes[1].stop_dirty_log().expect("logging stops");
    guests.drain();

    let report =
        upgrade_under_traffic(&control, json!({}), &mut guests).expect("the upgrade succeeds");
    let new_pid = report["pid"].as_u64().expect("a pid") as u32;
    old.1 = Some(new_pid);
    assert_ne!(new_pid, old_pid);
    assert_ne!(new_pid, stale_pid);
    guests.run_for(Duration::from_millis(200));
    finish(&control, &mut guests, &mut old);
}

/// Hand-over protocol 5: once the new process has answered for a vNIC's
/// step it serves that vNIC, so a new process that dies then cannot be
/// rolled back; the old one says so and exits with status 1, for its
/// supervisor to start a fresh daemon, rather than serve rings the new one
/// may have moved on.
#[test]
fn a_new_process_that_dies_once_it_answered_ends_the_old_one() {
    let dir = TempDir::new("upgrade-answered");
    let (mut old, control, _old_pid, mut guests, _notify) = start_daemon(&dir, "dedicated");
    guests.run_for(Duration::from_millis(200));
    let wrapper = wrapper(&dir, "fail-at-answered", "SNAPNET_UPGRADE_FAIL_AT=answered");
    let e = upgrade_under_traffic(&control, json!({ "binary": wrapper }), &mut guests)
        .expect_err("a new process that dies must not take over");
    let e = e.to_string();
    assert!(e.contains("after the hand-over began"), "{e}");
    let child = old.0.as_mut().unwrap();
    wait_until("the old process to exit", || {
        child.try_wait().unwrap().is_some()
    });
    assert_eq!(child.try_wait().unwrap().and_then(|s| s.code()), Some(1));
}

/// An upgrade to a build with another version string and back: the same
/// code, but nothing may depend on the two versions being equal. The second
/// build comes from scripts/test-all.sh (`SNAPNET_VERSION=... cargo build`,
/// in `SNAPNET_NEXT_BINARY`); without it the test says so and passes, unless
/// `SNAPNET_NEXT_BINARY` names a file that is missing.
#[test]
fn an_upgrade_to_another_version_and_back_loses_nothing() {
    let Some(next) = std::env::var_os("SNAPNET_NEXT_BINARY").map(PathBuf::from) else {
        eprintln!("SNAPNET_NEXT_BINARY is not set: build it as scripts/test-all.sh does");
        return;
    };
    assert!(next.exists(), "{} is missing", next.display());
    let dir = TempDir::new("upgrade-version");
    let (mut old, control, old_pid, mut guests, _notify) = start_daemon(&dir, "dedicated");
    let version = |control: &Path| {
        call(control, "daemon.status", json!({})).unwrap()["version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = version(&control);
    guests.run_for(Duration::from_millis(200));
    let report = upgrade_under_traffic(&control, json!({ "binary": next }), &mut guests)
        .expect("the upgrade to the other version succeeds");
    old.1 = report["pid"].as_u64().map(|p| p as u32);
    assert_ne!(old.1, Some(old_pid));
    let other = version(&control);
    assert_ne!(other, first, "{report}");
    assert_eq!(report["version"], other.as_str());
    assert!(
        report["switch_blackout_ms"].is_number(),
        "one vNIC at a time: {report}"
    );
    guests.run_for(Duration::from_millis(200));
    // And back to this build, as a binary of hand-over protocol 3 (before
    // vNICs moved one at a time) would take it: every vNIC at once.
    let wrapper = wrapper(&dir, "protocol-3", "SNAPNET_UPGRADE_PROTOCOL=3");
    let back = upgrade_under_traffic(&control, json!({ "binary": wrapper }), &mut guests)
        .expect("the upgrade back succeeds");
    assert!(
        back["switch_blackout_ms"].is_null(),
        "every vNIC at once: {back}"
    );
    old.1 = back["pid"].as_u64().map(|p| p as u32);
    assert_eq!(version(&control), first);
    guests.run_for(Duration::from_millis(200));
    finish(&control, &mut guests, &mut old);
}
