//! Tests of `config.rs`.
use super::*;

fn err(doc: &str) -> String {
    Config::from_json(doc).unwrap_err().to_string()
}

#[test]
fn embedded_default_is_two_vnics_one_dedicated_thread() {
    let c = Config::embedded_default();
    assert_eq!(c.vnics.len(), 2);
    assert_eq!(c.groups.len(), 1);
    assert_eq!(c.groups[0].threads, 1);
    assert_eq!(
        c.socket_path(&c.vnics[1]),
        PathBuf::from("/run/snapnet/vnic1.sock")
    );
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let e = err(r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","mtuu":1500}]}"#);
    assert!(e.contains("vnics[0]") && e.contains("mtuu"), "{e}");
    let e = err(r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","mtu":70000}]}"#);
    assert!(e.contains("vnics[0].mtu"), "{e}");
    let e = err(r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","mtu":10}]}"#);
    assert!(e.contains("vnics[0].mtu") && e.contains("68"), "{e}");
    let e = err(r#"{"vnics":[{"name":"a","mac":"nope"}]}"#);
    assert!(e.contains("vnics[0].mac") && e.contains("nope"), "{e}");
    let e = err(r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","role":"peer"}]}"#);
    assert!(e.contains("vnics[0].role"), "{e}");
    let e = err(
        r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01"},{"name":"b","mac":"02:00:00:00:00:01"}]}"#,
    );
    assert!(e.contains("vnics[1].mac") && e.contains("twice"), "{e}");
    let e = err(r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","group":"fast"}]}"#);
    assert!(e.contains("vnics[0].group") && e.contains("fast"), "{e}");
    let e = err(r#"{"groups":[{"name":"g","policy":"dedicated","threads":0}]}"#);
    assert!(e.contains("groups[0].threads"), "{e}");
    let e =
        err(r#"{"switch_shards":2,"vnics":[{"name":"a","mac":"02:00:00:00:00:01","shard":2}]}"#);
    assert!(e.contains("vnics[0].shard"), "{e}");
    for cpu in [1024, 5000, usize::MAX] {
        let e = err(&format!(
            r#"{{"groups":[{{"name":"g","policy":"dedicated","cpus":[0,{cpu}]}}]}}"#
        ));
        assert!(e.contains("groups[0].cpus") && e.contains("0..1024"), "{e}");
    }
    let e = err(r#"{"fdb":{"max_age_s":0}}"#);
    assert!(e.contains("fdb.max_age_s"), "{e}");
    let e = err(r#"{"fdb":{"max_learned_per_port":0}}"#);
    assert!(e.contains("fdb.max_learned_per_port"), "{e}");
    let e = err(r#"{"switch_shards":0}"#);
    assert!(e.contains("switch_shards"), "{e}");
    let e = err(r#"{"bogus":1}"#);
    assert!(e.contains("bogus"), "{e}");
    let e = err(r#"{"vnics":[{"name":"a","mac":"01:00:00:00:00:01"}]}"#);
    assert!(e.contains("unicast"), "{e}");
}

#[test]
fn a_migrations_destination_shares_its_sources_mac_and_nothing_else_does() {
    let m = "02:00:00:00:00:01";
    let doc = |vnics: &str| format!(r#"{{"vnics":[{vnics}]}}"#);
    let src = format!(r#"{{"name":"a","mac":"{m}"}}"#);
    let dst = |name: &str, of: &str, mac: &str| {
        format!(r#"{{"name":"{name}","mac":"{mac}","incoming_for":"{of}"}}"#)
    };
    let c = Config::from_json(&doc(&format!("{src},{}", dst("a-in", "a", m)))).unwrap();
    assert!(c.vnics[1].migrates_with(&c.vnics[0]) && c.vnics[0].migrates_with(&c.vnics[1]));
    // The source may be gone already (the migration's end).
    assert!(Config::from_json(&doc(&dst("a-in", "a", m))).is_ok());
    let e = err(&doc(&format!(
        "{src},{}",
        dst("a-in", "a", "02:00:00:00:00:02")
    )));
    assert!(
        e.contains("vnics[1].incoming_for") && e.contains("MAC"),
        "{e}"
    );
    let e = err(&doc(&dst("a", "a", m)));
    assert!(
        e.contains("vnics[0].incoming_for") && e.contains("own"),
        "{e}"
    );
    // Two destinations for one source (gone already, so their MACs
    // are not checked against it).
    let e = err(&doc(&format!(
        "{},{}",
        dst("a-in", "a", m),
        dst("a-in2", "a", "02:00:00:00:00:02")
    )));
    assert!(e.contains("already the destination"), "{e}");
    // A chain: b is a's destination and c's source.
    let e = err(&doc(&format!("{},{}", dst("b", "a", m), dst("c", "b", m))));
    assert!(e.contains("'b' is itself a migration's destination"), "{e}");
    // A third vNIC with the MAC and no migration is still refused.
    let e = err(&doc(&format!(
        r#"{src},{},{{"name":"x","mac":"{m}"}}"#,
        dst("a-in", "a", m)
    )));
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn sockets_stay_inside_the_runtime_dir_or_socket_dirs() {
    let vnic = |socket: &str, role: &str| {
        format!(
            r#"{{"runtime_dir":"/run/snapnet","socket_dirs":["/var/lib/vms"],
            "vnics":[{{"name":"a","mac":"02:00:00:00:00:01","socket":"{socket}","role":"{role}"}}]}}"#
        )
    };
    assert!(Config::from_json(&vnic("/run/snapnet/a.sock", "server")).is_ok());
    assert!(Config::from_json(&vnic("/var/lib/vms/vm0/net0.sock", "client")).is_ok());
    for (socket, role) in [
        ("/etc/shadow", "server"),
        ("/etc/shadow", "client"),
        ("/run/snapnet/../../etc/shadow", "server"),
        ("a.sock", "server"),
    ] {
        let e = err(&vnic(socket, role));
        assert!(e.contains("vnics[0].socket"), "{socket}: {e}");
    }
    let e = err(r#"{"runtime_dir":"run"}"#);
    assert!(e.contains("runtime_dir"), "{e}");
    let e = err(r#"{"socket_dirs":["/"]}"#);
    assert!(e.contains("socket_dirs[0]"), "{e}");
    let e = err(r#"{"socket_dirs":["/var/../etc"]}"#);
    assert!(e.contains("socket_dirs[0]"), "{e}");
    let e = err(r#"{"control_socket":"ctl.sock"}"#);
    assert!(e.contains("control_socket"), "{e}");
}

#[test]
fn address_pairs_are_unicast_unique_and_nobody_elses() {
    let pairs = |p: &str| {
        format!(
            r#"{{"vnics":[{{"name":"a","mac":"02:00:00:00:00:01","allowed_address_pairs":[{p}]}},
            {{"name":"b","mac":"02:00:00:00:00:02"}}]}}"#
        )
    };
    let c = Config::from_json(&pairs(
        r#"{"mac":"00:00:5e:00:01:07","ips":["10.0.0.100"]},{"mac":"02:00:00:00:00:09"}"#,
    ))
    .unwrap();
    let v = &c.vnics[0];
    assert!(v.port_security);
    assert_eq!(v.macs().count(), 3);
    for (p, what) in [
        (r#"{"mac":"01:00:5e:00:00:01"}"#, "unicast"),
        (r#"{"mac":"02:00:00:00:00:01"}"#, "own MAC"),
        (r#"{"mac":"02:00:00:00:00:02"}"#, "own MAC"),
        (
            r#"{"mac":"00:00:5e:00:01:07"},{"mac":"00:00:5e:00:01:07"}"#,
            "twice",
        ),
        (r#"{"mac":"00:00:5e:00:01:07","ip":"10.0.0.1"}"#, "ip"),
    ] {
        let e = err(&pairs(p));
        assert!(
            e.contains("vnics[0].allowed_address_pairs") && e.contains(what),
            "{p}: {e}"
        );
    }
}

#[test]
fn the_guard_follows_the_config() {
    use crate::vnic::DropReason;
    let c = Config::from_json(
        r#"{"vnics":[{"name":"a","mac":"02:00:00:00:00:01","allowed_ips":["10.0.0.5"],
          "allowed_address_pairs":[{"mac":"00:00:5e:00:01:07"},
                                   {"mac":"00:00:5e:00:01:08","ips":["10.0.0.100"]}]},
          {"name":"fw","mac":"02:00:00:00:00:02","port_security":false}]}"#,
    )
    .unwrap();
    let ipv4 = |src_mac: [u8; 6], src: [u8; 4]| {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[10, 0, 0, 99]);
        f
    };
    let mut g = c.vnics[0].spoof_guard();
    let vmac7 = [0, 0, 0x5e, 0, 1, 7];
    let vmac8 = [0, 0, 0x5e, 0, 1, 8];
    // A pair without its own list takes the vNIC's.
    assert_eq!(g.check(&ipv4(vmac7, [10, 0, 0, 5])), Ok(()));
    assert_eq!(
        g.check(&ipv4(vmac7, [10, 0, 0, 100])),
        Err(DropReason::SpoofedIp)
    );
    assert_eq!(g.check(&ipv4(vmac8, [10, 0, 0, 100])), Ok(()));
    assert_eq!(
        g.check(&ipv4(vmac8, [10, 0, 0, 5])),
        Err(DropReason::SpoofedIp)
    );
    assert_eq!(
        g.check(&ipv4([2, 0, 0, 0, 0, 3], [10, 0, 0, 5])),
        Err(DropReason::SpoofedMac)
    );
    let mut fw = c.vnics[1].spoof_guard();
    assert_eq!(fw.check(&ipv4([2, 0, 0, 0, 0, 3], [192, 0, 2, 1])), Ok(()));
}

#[test]
fn a_directory_names_an_overlay_uplink_with_its_underlay_address() {
    let doc = |uplink: &str, dir_extra: &str| {
        format!(
            r#"{{"uplinks":[{uplink}],
                "directory":{{"endpoints":["http://10.0.0.9:2379"],"host_id":"h1",
                              "underlay_ip":"10.0.0.1","uplink":"fabric"{dir_extra}}}}}"#
        )
    };
    // Without an overlay section the uplink gets one with the underlay address.
    let c = Config::from_json(&doc(r#"{"name":"fabric","interface":"eth1"}"#, "")).unwrap();
    let o = c.directory_uplink().unwrap().overlay.as_ref().unwrap();
    assert_eq!(o.local_ip.to_string(), "10.0.0.1");
    assert!(o.remotes.is_empty() && o.macs.is_empty());
    let e = err(&doc(r#"{"name":"other","interface":"eth1"}"#, ""));
    assert!(
        e.contains("directory.uplink") && e.contains("fabric"),
        "{e}"
    );
    let e = err(&doc(
        r#"{"name":"fabric","interface":"eth1","overlay":{"local_ip":"10.0.0.2"}}"#,
        "",
    ));
    assert!(e.contains("directory.underlay_ip"), "{e}");
    let e = err(&doc(
        r#"{"name":"fabric","interface":"eth1"}"#,
        r#","lease_ttl_seconds":0"#,
    ));
    assert!(e.contains("directory.lease_ttl_seconds"), "{e}");
    let e = err(&doc(
        r#"{"name":"fabric","interface":"eth1"}"#,
        r#","bogus":1"#,
    ));
    assert!(e.contains("directory") && e.contains("bogus"), "{e}");
}
