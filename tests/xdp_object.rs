//! The committed XDP object is what `xdp/build.sh` makes from the committed
//! source (the build is deterministic for the Debian 12 clang). Skipped where
//! clang is missing; `scripts/test-all.sh` installs it.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_xdp_object_matches_its_source() {
    if Command::new("clang").arg("--version").output().is_err() {
        eprintln!("skipped: clang is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("snapnet-xdp-{}.o", std::process::id()));
    let status = Command::new("bash")
        .arg(root.join("xdp/build.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "xdp/build.sh failed");
    let built = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let committed = std::fs::read(root.join("xdp/snapnet_uplink.bpf.o")).unwrap();
    assert!(
        built == committed,
        "xdp/snapnet_uplink.bpf.o is stale: run xdp/build.sh and commit the object"
    );
}
