//! The Prometheus endpoint: scraped over HTTP, parsed, and its values match
//! the traffic that crossed.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::rpc::*;
use common::*;
use snapnet::control::metrics::MetricsServer;
use snapnet_frontend::FrontendConfig;

fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// `name{labels}` -> value, for every sample line.
fn parse(body: &str) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        m.insert(
            key.to_string(),
            value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}")),
        );
    }
    assert!(
        body.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    m
}

#[test]
fn scraped_metrics_parse_and_count_the_traffic() {
    let dir = TempDir::new("metrics");
    let ctl = Control::start(&two_vnics(&dir, 1, ""));
    let metrics = MetricsServer::start("127.0.0.1:0", ctl.ctx.clone()).unwrap();
    let fcfg = FrontendConfig::default();
    let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
    let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
    ctl.with_daemon(|d| {
        assert!(wait_for(Duration::from_secs(5), || d
            .report()
            .iter()
            .all(|v| v.rings_attached == 2)));
    });
    assert_crosses(&mut a, &mut b, 40, 100, "frames");
    let (head, body) = scrape(metrics.addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    let m = parse(&body);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{body}"))
    };
    assert_eq!(
        get(r#"snapnet_vnic_packets_total{vnic="vnic0",queue="0",direction="tx"}"#),
        40.0
    );
    assert_eq!(
        get(r#"snapnet_vnic_packets_total{vnic="vnic1",queue="0",direction="rx"}"#),
        40.0
    );
    assert_eq!(
        get(r#"snapnet_vnic_bytes_total{vnic="vnic1",queue="0",direction="rx"}"#),
        4000.0
    );
    assert_eq!(
        get(r#"snapnet_switch_port_packets_total{port="vnic0",direction="rx"}"#),
        40.0
    );
    assert_eq!(
        get(r#"snapnet_vnic_drops_total{vnic="vnic0",queue="0",reason="too_big"}"#),
        0.0
    );
    assert_eq!(
        get(r#"snapnet_switch_port_drops_total{port="vnic1",reason="link_full"}"#),
        0.0
    );
    assert_eq!(get(r#"snapnet_vnic_rings_attached{vnic="vnic0"}"#), 2.0);
    assert_eq!(get(r#"snapnet_group_engines{group="default"}"#), 3.0);
    assert!(get(r#"snapnet_group_thread_cpu_seconds_total{group="default",thread="0"}"#) > 0.0);
    // Anything but /metrics is a 404.
    let mut s = TcpStream::connect(metrics.addr).unwrap();
    s.write_all(b"GET /secret HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404"));
    metrics.stop();
    drop(a);
    drop(b);
    ctl.stop();
}
