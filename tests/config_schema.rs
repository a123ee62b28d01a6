//! The shipped configs against `schemas/config.schema.json`, and the schema
//! against the serde types: every object in the schema must have exactly the
//! keys the Rust types read and write.

use std::path::Path;

use serde_json::Value;
use snapnet::control::config::{Config, EMBEDDED_DEFAULT};

fn schema() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/config.schema.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validate(doc: &Value) -> Result<(), String> {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn shipped_configs() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = vec![("embedded default".to_string(), EMBEDDED_DEFAULT.to_string())];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
    assert!(out.len() >= 3, "examples/ should ship configs");
    out
}

#[test]
fn shipped_configs_match_schema_and_parse() {
    for (name, text) in shipped_configs() {
        let doc: Value = serde_json::from_str(&text).unwrap();
        validate(&doc).unwrap_or_else(|e| panic!("{name}: {e}"));
        Config::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Keys the serde types leave out while unset, so that a config written by
/// this version (an upgrade's state) still reads in an older snapnet that
/// never knew them (a downgrade).
const OMITTED_WHEN_UNSET: &[&str] = &[
    "incoming_for",
    "vnic_socket_group",
    "directory",
    "next_hop_mac",
    "pony",
];

/// Compares the keys of every object the schema describes with the keys the
/// serde types produce for a config that sets every field.
fn compare_keys(schema: &Value, root: &Value, doc: &Value, at: &str) {
    let schema = resolve(schema, root);
    match doc {
        Value::Object(map) => {
            let props = schema["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{at}: schema has no properties"));
            let mut in_schema: Vec<&String> = props
                .keys()
                .filter(|k| map.contains_key(*k) || !OMITTED_WHEN_UNSET.contains(&k.as_str()))
                .collect();
            let mut in_types: Vec<&String> = map.keys().collect();
            in_schema.sort();
            in_types.sort();
            assert_eq!(in_schema, in_types, "{at}: schema keys vs serde keys");
            assert_eq!(
                schema["additionalProperties"],
                Value::Bool(false),
                "{at}: schema must refuse unknown keys"
            );
            for (k, v) in map {
                compare_keys(&props[k], root, v, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                compare_keys(&schema["items"], root, v, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/").expect("local refs only");
            resolve(&root["$defs"][name], root)
        }
        None => schema,
    }
}

#[test]
fn schema_and_serde_types_have_the_same_keys() {
    let full =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/full.json"))
            .unwrap();
    let cfg = Config::from_json(&full).unwrap();
    // Serialising writes every field, defaults included.
    let doc = serde_json::to_value(&cfg).unwrap();
    let root = schema();
    compare_keys(&root, &root, &doc, "config");
    validate(&doc).unwrap();
}

#[test]
fn keys_omitted_while_unset_are_written_once_set() {
    let set = Config::from_json(
        r#"{"vnic_socket_group": "kvm",
            "vnics": [{"name": "a", "mac": "02:00:00:00:00:01"},
                      {"name": "a-in", "mac": "02:00:00:00:00:01", "incoming_for": "a"}],
            "uplinks": [{"name": "fabric", "interface": "eth1", "overlay": {"local_ip": "10.0.0.1",
                "remotes": [{"ip": "10.0.0.2", "mac": "02:00:00:00:00:02", "networks": [0]}],
                "macs": [{"network": 0, "mac": "52:54:00:00:00:09", "remote": "10.0.0.2",
                          "ips": ["10.9.0.9"]}]}}],
            "directory": {"endpoints": ["http://10.0.0.9:2379"], "host_id": "a",
                          "underlay_ip": "10.0.0.1", "uplink": "fabric",
                          "next_hop_mac": "02:00:00:00:00:fe"},
            "pony": {"socket": "/run/snapnet/pony.sock", "uplink": "fabric",
                     "address": "10.0.0.1"}}"#,
    )
    .unwrap();
    let unset = Config::from_json(
        r#"{"vnics": [{"name": "a", "mac": "02:00:00:00:00:01"}],
            "uplinks": [{"name": "fabric", "interface": "eth1", "overlay": {"local_ip": "10.0.0.1",
                "remotes": [{"ip": "10.0.0.2", "mac": "02:00:00:00:00:02", "networks": [0]}],
                "macs": [{"network": 0, "mac": "52:54:00:00:00:09", "remote": "10.0.0.2"}]}}]}"#,
    )
    .unwrap();
    let set = serde_json::to_value(&set).unwrap();
    let unset = serde_json::to_value(&unset).unwrap();
    // Written at the top, in the directory, in an overlay's MAC or in some
    // vNIC.
    let written = |doc: &Value, key: &str| {
        doc.get(key).is_some()
            || doc.get("directory").is_some_and(|d| d.get(key).is_some())
            || doc["uplinks"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|u| u["overlay"]["macs"].as_array().into_iter().flatten())
                .any(|m| m.get(key).is_some())
            || doc["vnics"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v.get(key).is_some())
    };
    for key in OMITTED_WHEN_UNSET {
        assert!(written(&set, key), "{key} set but not written");
        assert!(!written(&unset, key), "{key} unset but written");
    }
    validate(&set).unwrap();
}

#[test]
fn schema_refuses_what_serde_refuses() {
    for bad in [
        r#"{"bogus": 1}"#,
        r#"{"vnics": [{"name": "a", "mac": "02:00:00:00:00:01", "mtuu": 1500}]}"#,
        r#"{"vnics": [{"name": "a", "mac": "02:00:00:00:00:01", "mtu": 70000}]}"#,
        r#"{"vnics": [{"name": "a", "mac": "02:00:00:00:00:01", "role": "peer"}]}"#,
        r#"{"vnics": [{"name": "a", "mac": "not-a-mac"}]}"#,
        r#"{"groups": [{"name": "g", "policy": "sometimes"}]}"#,
        r#"{"groups": [{"name": "g", "policy": "dedicated", "threads": 0}]}"#,
    ] {
        let doc: Value = serde_json::from_str(bad).unwrap();
        assert!(validate(&doc).is_err(), "schema accepted {bad}");
        assert!(Config::from_json(bad).is_err(), "serde accepted {bad}");
    }
}
