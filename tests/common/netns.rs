//! A lab of network namespaces for uplink tests: `host` (where snapnet runs,
//! with one end of a veth pair standing for the NIC) and `peer` (another host
//! on the wire). Everything is named after the test process and removed on
//! drop, also when the test fails.

use std::process::{Child, Command, Stdio};

pub struct Lab {
    pub host_ns: String,
    pub peer_ns: String,
    /// The uplink interface, in `host_ns`.
    pub uplink: String,
    /// Its peer, in `peer_ns`.
    pub wire: String,
    pub subnet: u8,
    children: Vec<Child>,
}

/// True when this process may create namespaces and attach XDP (root).
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root for network namespaces and XDP");
    }
    root
}

pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// `snapnet serve --config <config>` inside namespace `ns`, its log on the
/// test's stderr.
pub fn serve_in(ns: &str, config: &std::path::Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_snapnet")])
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("snapnet serve in {ns}: {e}"))
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// `tag` keeps labs of different tests in one process apart.
    pub fn new(tag: &str) -> Lab {
        let id = format!("{}{tag}", std::process::id() % 100_000);
        let subnet = (std::process::id() % 200) as u8 + 20;
        let lab = Lab {
            host_ns: format!("snxh{id}"),
            peer_ns: format!("snxp{id}"),
            uplink: format!("snxu{id}"),
            wire: format!("snxw{id}"),
            subnet,
            children: Vec::new(),
        };
        must(&["ip", "netns", "add", &lab.host_ns]);
        must(&["ip", "netns", "add", &lab.peer_ns]);
        must(&[
            "ip",
            "link",
            "add",
            &lab.uplink,
            "netns",
            &lab.host_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.wire,
            "netns",
            &lab.peer_ns,
        ]);
        for (ns, dev, ip) in [
            (&lab.host_ns, &lab.uplink, lab.host_ip()),
            (&lab.peer_ns, &lab.wire, lab.peer_ip()),
        ] {
            must(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// The host's own address on the uplink.
    pub fn host_ip(&self) -> String {
        format!("10.{}.0.1", self.subnet)
    }

    /// The other host on the wire.
    pub fn peer_ip(&self) -> String {
        format!("10.{}.0.2", self.subnet)
    }

    /// An address for a guest.
    pub fn guest_ip(&self, n: u8) -> [u8; 4] {
        [10, self.subnet, 0, 10 + n]
    }

    pub fn peer_ip_bytes(&self) -> [u8; 4] {
        [10, self.subnet, 0, 2]
    }

    /// Runs a command in namespace `ns` and waits for it.
    pub fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Starts a command in namespace `ns`; it is killed when the lab drops.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Sends SIGKILL to a child started with `spawn` and reaps it.
    pub fn kill9(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True when an XDP program is attached to the uplink.
    pub fn uplink_has_xdp(&self) -> bool {
        let out = run(&["ip", "-n", &self.host_ns, "link", "show", &self.uplink]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespaces deletes the veth pair with them.
        let _ = run(&["ip", "netns", "del", &self.host_ns]);
        let _ = run(&["ip", "netns", "del", &self.peer_ns]);
    }
}

/// The process that serves after an upgrade: a child of the daemon it
/// replaced, so no lab or fabric reaps it. Killed when the test ends, even
/// when it fails.
pub struct Successor(pub Option<u32>);

impl Successor {
    /// Follows an upgrade's answer (its `pid`).
    pub fn follow(&mut self, report: &serde_json::Value) {
        if let Some(pid) = report["pid"].as_u64() {
            self.0 = Some(pid as u32);
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: a signal to a pid this test's daemon started; at worst
            // it is gone already.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
