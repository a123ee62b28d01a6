//! JSON-RPC requests into the method dispatcher (`rpc::server::handle_line`,
//! what the control socket calls for each line) of a running daemon: no
//! panic on any line, and every answer is a JSON-RPC 2.0 response. After
//! each input the daemon is put back as it started (what the input added is
//! removed), so inputs do not depend on each other.
//!
//! The daemon runs as root and methods name files and interfaces, so before
//! the daemon starts the process moves into a network namespace of its own
//! (no interface but a down `lo`) and chroots into a fresh empty directory:
//! nothing an input names can reach the machine's files or NICs.
#![no_main]
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use snapnet::control::rpc::server::handle_line;
use snapnet::control::rpc::Context;
use snapnet::control::{Config, Daemon};

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

/// A network namespace and a chroot of this process's own.
fn sandbox() {
    // SAFETY: unshare only changes this thread's namespace; every daemon
    // thread is started from this thread afterwards and inherits it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        die("unshare(CLONE_NEWNET)");
    }
    let mut template = *b"/tmp/snapnet-fuzz-rpc-XXXXXX\0";
    // SAFETY: a NUL-terminated, writable template, as mkdtemp requires.
    if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
        die("mkdtemp");
    }
    // SAFETY: `template` now holds the NUL-terminated directory name; "/" is
    // a NUL-terminated literal.
    if unsafe { libc::chroot(template.as_ptr().cast()) } != 0
        || unsafe { libc::chdir(c"/".as_ptr()) } != 0
    {
        die("chroot");
    }
    std::fs::create_dir_all("/run/snapnet").unwrap_or_else(|_| die("mkdir /run/snapnet"));
}

fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        sandbox();
        let cfg = Config::from_json(BASELINE).expect("baseline config");
        let daemon = Daemon::start(&cfg).expect("daemon");
        Context {
            daemon: Mutex::new(Some(daemon)),
            started: Instant::now(),
            // daemon.shutdown is answered; the process stays.
            request_shutdown: Box::new(|| {}),
        }
    })
}

/// Takes out whatever an input added to the daemon.
fn reset(ctx: &Context) {
    let mut guard = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner());
    let d = guard.as_mut().expect("the daemon is never taken out");
    let vnics: Vec<String> = d.config().vnics.iter().map(|v| v.name.clone()).collect();
    for name in vnics {
        d.remove_vnic(&name).expect("remove a vNIC the daemon lists");
    }
    let uplinks: Vec<String> = d.config().uplinks.iter().map(|u| u.name.clone()).collect();
    for name in uplinks {
        d.remove_uplink(&name).expect("remove an uplink the daemon lists");
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

fuzz_target!(|data: &[u8]| {
    let ctx = context();
    for line in data.split(|b| *b == b'\n').take(MAX_LINES) {
        if let Some(answer) = handle_line(line, ctx) {
            assert_response(&answer);
        }
    }
    reset(ctx);
});
