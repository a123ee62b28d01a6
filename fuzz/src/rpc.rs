//! The `rpc` and `rpc_uplink` targets: JSON-RPC requests into the method
//! dispatcher (`rpc::server::handle_line`, what the control socket calls for
//! each line) of a running daemon: no panic on any line, and every answer is
//! a JSON-RPC 2.0 response. After each input the daemon is put back as it
//! started (what the input added is removed), so inputs do not depend on
//! each other.
//!
//! The daemon runs as root and methods name files and interfaces, so before
//! the daemon starts the fuzzing thread moves into network and mount
//! namespaces of its own (no interface but a down `lo`) and chroots into a
//! fresh tmpfs: nothing an input names can reach the machine's files or NICs.
//!
//! Two targets, because attaching an uplink is bound by the kernel, not by
//! us: loading and attaching the XDP program and opening and closing AF_XDP
//! and packet sockets each wait for an RCU grace period, which held the
//! target to about 70 inputs a second (most inputs the fuzzer keeps add an
//! uplink). `rpc` hides `lo` under a name no input can know, so every
//! uplink.add fails at the interface lookup after all its parameters were
//! checked, and everything else runs at full speed; `rpc_uplink` leaves `lo`
//! usable, so the attach, group-tap and removal paths are fuzzed too.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde_json::Value;
use snapnet::control::rpc::server::handle_line;
use snapnet::control::rpc::Context;
use snapnet::control::{Config, Daemon};

/// What the sandbox's network namespace offers an uplink.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Interfaces {
    /// `lo`, down, which an uplink can attach to.
    Loopback,
    /// None an input can name.
    None,
}

/// The daemon as every input finds it.
const BASELINE: &str = r#"{
  "runtime_dir": "/run/snapnet",
  "groups": [ { "name": "default", "policy": "spreading" } ]
}"#;

/// Most request lines one input may send.
const MAX_LINES: usize = 32;

fn die(what: &str) -> ! {
    eprintln!(
        "rpc fuzz target: {what}: {}; it must run as root (it sandboxes itself)",
        std::io::Error::last_os_error()
    );
    std::process::exit(2);
}

/// The sandbox's root, on a tmpfs mounted over /tmp in the sandbox's own
/// mount namespace (so nothing of it is left on the host).
const ROOT: &std::ffi::CStr = c"/tmp/root";

fn mount(
    source: &std::ffi::CStr,
    target: &std::ffi::CStr,
    fstype: &std::ffi::CStr,
    flags: libc::c_ulong,
) {
    // SAFETY: NUL-terminated strings and no filesystem data.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        die(&format!("mount {target:?}"));
    }
}

/// A network and mount namespace of the calling thread's own (every daemon
/// thread is started from it later and inherits them), with a fresh tmpfs as its
/// root, holding only /proc (the daemon reads its threads' CPU time, the
/// sanitizers their threads), /sys (of the empty network namespace) and the
/// runtime directory.
fn sandbox(interfaces: Interfaces) {
    // SAFETY: unshare only moves this thread into new namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) } != 0 {
        die("unshare");
    }
    // Nothing mounted from here on is seen outside.
    mount(c"none", c"/", c"", libc::MS_REC | libc::MS_PRIVATE);
    mount(c"tmpfs", c"/tmp", c"tmpfs", 0);
    let root = std::path::Path::new(ROOT.to_str().expect("ASCII"));
    for d in ["proc", "sys", "run/snapnet"] {
        std::fs::create_dir_all(root.join(d)).unwrap_or_else(|_| die(d));
    }
    mount(c"proc", c"/tmp/root/proc", c"proc", 0);
    mount(c"sysfs", c"/tmp/root/sys", c"sysfs", 0);
    // Hide the kernel's BTF: aya parses all of it (megabytes, under ASAN)
    // whenever an uplink's XDP program loads, which took nine tenths of every
    // exec, and the program needs none of it (no CO-RE relocations).
    mount(c"tmpfs", c"/tmp/root/sys/kernel/btf", c"tmpfs", 0);
    // SAFETY: NUL-terminated paths.
    if unsafe { libc::chroot(ROOT.as_ptr()) } != 0 || unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        die("chroot");
    }
    if interfaces == Interfaces::None {
        hide_loopback();
    }
}

/// Renames the namespace's `lo` to a name no input can know: the lookup is
/// the kernel's, so libFuzzer's comparison tracing never sees it.
fn hide_loopback() {
    let name = format!("h{:x}", std::process::id() ^ 0x5a5a_5a5a);
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        die("socket");
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: writing the union's newname member, which the ioctl reads.
    let newname = unsafe { &mut req.ifr_ifru.ifru_newname };
    for (dst, src) in newname
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCSIFNAME reads one ifreq, which outlives the call.
    let r = unsafe { libc::ioctl(fd, libc::SIOCSIFNAME, &req) };
    // SAFETY: fd is ours and used no more.
    unsafe { libc::close(fd) };
    if r != 0 {
        die("rename lo");
    }
}

/// Inputs to the sandbox thread, and its "done" for each.
type Worker = Mutex<(Sender<Vec<u8>>, Receiver<()>)>;

/// The thread that owns the sandboxed daemon: it takes each input's bytes
/// and answers when it has handled them. Only this thread (and the daemon's
/// threads, which it starts) enters the sandbox; libFuzzer's own thread
/// keeps the real filesystem for its corpus and artifacts.
fn worker(interfaces: Interfaces) -> &'static Worker {
    static WORKER: OnceLock<Worker> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (input_tx, input_rx) = channel::<Vec<u8>>();
        let (done_tx, done_rx) = channel();
        std::thread::Builder::new()
            .name("rpc-sandbox".into())
            .spawn(move || {
                sandbox(interfaces);
                let cfg = Config::from_json(BASELINE).expect("baseline config");
                let ctx = Context {
                    daemon: Mutex::new(Some(Daemon::start(&cfg).expect("daemon"))),
                    started: Instant::now(),
                    // daemon.shutdown is answered; the process stays.
                    request_shutdown: Box::new(|| {}),
                    upgrade: None,
                    accept_paused: Default::default(),
                    directory: Default::default(),
                };
                for data in input_rx {
                    run_input(&data, &ctx);
                    if done_tx.send(()).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the sandbox thread");
        Mutex::new((input_tx, done_rx))
    })
}

fn run_input(data: &[u8], ctx: &Context) {
    for line in data.split(|b| *b == b'\n').take(MAX_LINES) {
        if let Some(answer) = handle_line(line, ctx) {
            assert_response(&answer);
        }
    }
    reset(ctx);
}

/// Takes out whatever an input added to the daemon.
fn reset(ctx: &Context) {
    let mut guard = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner());
    let d = guard.as_mut().expect("the daemon is never taken out");
    let vnics: Vec<String> = d.config().vnics.iter().map(|v| v.name.clone()).collect();
    for name in vnics {
        d.remove_vnic(&name)
            .expect("remove a vNIC the daemon lists");
    }
    let uplinks: Vec<String> = d.config().uplinks.iter().map(|u| u.name.clone()).collect();
    for name in uplinks {
        d.remove_uplink(&name)
            .expect("remove an uplink the daemon lists");
    }
    let groups: Vec<String> = d.config().groups.iter().map(|g| g.name.clone()).collect();
    for name in groups.into_iter().filter(|n| n != "default") {
        d.remove_group(&name).expect("remove an empty group");
    }
}

fn assert_response(v: &Value) {
    match v {
        Value::Array(items) => items.iter().for_each(assert_response),
        Value::Object(o) => {
            assert_eq!(o.get("jsonrpc"), Some(&Value::from("2.0")), "{v}");
            assert!(o.contains_key("id"), "{v}");
            assert!(o.contains_key("result") ^ o.contains_key("error"), "{v}");
        }
        other => panic!("not a response: {other}"),
    }
}

/// Runs one input: its lines go to the sandboxed daemon, which is put back
/// as it started afterwards. The first call chooses the sandbox for good.
pub fn run(data: &[u8], interfaces: Interfaces) {
    let w = worker(interfaces).lock().unwrap_or_else(|e| e.into_inner());
    w.0.send(data.to_vec()).expect("sandbox thread alive");
    w.1.recv().expect("sandbox thread alive");
}
