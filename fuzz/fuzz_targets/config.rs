//! Config files: any text either parses into a valid config or is refused
//! with an error; what parses survives a round trip through its own JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use snapnet::control::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_json(text) else {
        return;
    };
    let again = serde_json::to_string(&cfg).expect("a parsed config serializes");
    let back = Config::from_json(&again).expect("a config's own JSON parses");
    assert_eq!(cfg, back, "config changed through a round trip");
    // What the daemon derives from it must not panic either.
    for v in &cfg.vnics {
        let _ = cfg.socket_path(v);
        let _ = cfg.group_of(v);
    }
    for u in &cfg.uplinks {
        let _ = cfg.uplink_group_of(u);
    }
    let _ = cfg.control_socket_path();
});
