//! The `directory` section of the config: where etcd is and who this host is.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use snapnet_wire::MacAddr;

/// Where this host publishes its guests and learns everyone else's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// etcd's client URLs (`http://host:port`), every member of the cluster.
    pub endpoints: Vec<String>,
    /// This host's name in the directory: unique per host, 1-63 of
    /// `[A-Za-z0-9._-]`.
    pub host_id: String,
    /// This host's underlay address: the overlay's outer source, and what
    /// other hosts send this host's guests' frames to.
    pub underlay_ip: Ipv4Addr,
    /// The overlay uplink the directory programs.
    pub uplink: String,
    /// Every key lives under this prefix (several fleets can share etcd).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seconds this host's keys outlive it (etcd's lease TTL, whole seconds).
    #[serde(default = "default_lease_ttl_seconds")]
    pub lease_ttl_seconds: u32,
    /// The underlay router's MAC, when hosts are not on one L2 segment;
    /// without it frames go straight to the remote host's uplink MAC.
    #[serde(
        default,
        with = "snapnet_wire::optional_mac_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_hop_mac: Option<MacAddr>,
    /// How long one etcd request may take before the directory counts etcd
    /// as unreachable.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u32,
}

fn default_prefix() -> String {
    "/snapnet/v1".into()
}

fn default_lease_ttl_seconds() -> u32 {
    10
}

fn default_request_timeout_ms() -> u32 {
    2000
}

/// etcd raises shorter leases to about this anyway (1.5 election timeouts).
pub const MIN_LEASE_TTL_SECONDS: u32 = 2;

impl DirectoryConfig {
    /// What is wrong with the section, as `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.endpoints.is_empty() {
            return Err(("endpoints", "at least one etcd endpoint is needed".into()));
        }
        for e in &self.endpoints {
            let Some(rest) = e.strip_prefix("http://") else {
                return Err((
                    "endpoints",
                    format!("'{e}' is not an http:// URL (TLS is not supported yet)"),
                ));
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(("endpoints", format!("'{e}' is not http://host:port")));
            }
        }
        let id_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.host_id.is_empty() || self.host_id.len() > 63 || !self.host_id.chars().all(id_ok) {
            return Err((
                "host_id",
                format!("'{}' is not 1-63 of [A-Za-z0-9._-]", self.host_id),
            ));
        }
        if self.underlay_ip.is_unspecified() || self.underlay_ip.is_multicast() {
            return Err((
                "underlay_ip",
                format!("{} cannot be a host's address", self.underlay_ip),
            ));
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.len() < 2 {
            return Err((
                "prefix",
                format!("'{}' must start with '/' and not end with one", self.prefix),
            ));
        }
        if self.lease_ttl_seconds < MIN_LEASE_TTL_SECONDS || self.lease_ttl_seconds > 3600 {
            return Err((
                "lease_ttl_seconds",
                format!(
                    "{} is not within {MIN_LEASE_TTL_SECONDS}..=3600",
                    self.lease_ttl_seconds
                ),
            ));
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return Err((
                "request_timeout_ms",
                format!("{} is not within 100..=60000", self.request_timeout_ms),
            ));
        }
        if self.next_hop_mac.is_some_and(|m| m.is_group()) {
            return Err(("next_hop_mac", "must be a unicast MAC".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<DirectoryConfig, String> {
        let text = format!(
            r#"{{"endpoints":["http://127.0.0.1:2379"],"host_id":"a","underlay_ip":"10.0.0.1","uplink":"fabric"{extra}}}"#
        );
        let c: DirectoryConfig = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        c.check().map_err(|(f, m)| format!("{f}: {m}"))?;
        Ok(c)
    }

    #[test]
    fn defaults_and_refusals() {
        let c = parse("").unwrap();
        assert_eq!(c.prefix, "/snapnet/v1");
        assert_eq!(c.lease_ttl_seconds, 10);
        assert_eq!(c.next_hop_mac, None);
        assert!(parse(r#","next_hop_mac":"02:00:00:00:00:01""#).is_ok());
        for (extra, wants) in [
            (r#","colour":"red""#, "unknown field"),
            (r#","prefix":"snapnet""#, "prefix"),
            (r#","prefix":"/snapnet/""#, "prefix"),
            (r#","lease_ttl_seconds":1"#, "lease_ttl_seconds"),
            (r#","next_hop_mac":"01:00:5e:00:00:01""#, "next_hop_mac"),
            (r#","request_timeout_ms":5"#, "request_timeout_ms"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(wants), "{extra}: {e}");
        }
        let bad_id =
            r#"{"endpoints":["http://e:1"],"host_id":"a b","underlay_ip":"10.0.0.1","uplink":"f"}"#;
        let c: DirectoryConfig = serde_json::from_str(bad_id).unwrap();
        assert_eq!(c.check().unwrap_err().0, "host_id");
        let bad_url =
            r#"{"endpoints":["https://e:1"],"host_id":"a","underlay_ip":"10.0.0.1","uplink":"f"}"#;
        let c: DirectoryConfig = serde_json::from_str(bad_url).unwrap();
        assert_eq!(c.check().unwrap_err().0, "endpoints");
    }
}
