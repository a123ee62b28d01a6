//! Build-time inputs of `snapnet --version`: the version (the package's, or
//! `SNAPNET_VERSION`, see `src/lib.rs`) and the git revision it was built
//! from (`SNAPNET_GIT_REVISION`, else `git`, else "unknown", as from a
//! source tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SNAPNET_VERSION");
    println!("cargo:rerun-if-env-changed=SNAPNET_GIT_REVISION");
    // A commit or a checkout moves HEAD's log; the revision is read again then.
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/logs/HEAD");
    let version = std::env::var("SNAPNET_VERSION")
        .unwrap_or_else(|_| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    let revision = std::env::var("SNAPNET_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SNAPNET_GIT_REVISION={revision}");
    println!("cargo:rustc-env=SNAPNET_VERSION_LINE={version} (git {revision})");
}

fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!rev.is_empty()).then_some(rev)
}
