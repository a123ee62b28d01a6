//! Where a running daemon's time goes, per engine: busy time per unit of
//! work between two samples of `snapnet ctl --json group stats NAME`. The
//! data-path benchmark's rates say how fast; this says which engine a
//! change made cheaper and which one absorbed the difference (a switch that
//! got 3 ns cheaper while the vNIC engines waited longer on the guest's
//! lines: docs/performance.md).

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct EngineCostArgs {
    /// The group's stats at the start of the interval.
    #[arg(long)]
    before: PathBuf,
    /// The same at its end.
    #[arg(long)]
    after: PathBuf,
    /// The engine whose work counts frames (every frame crosses it once).
    #[arg(long, default_value = "switch")]
    frames_of: String,
    /// Length of the interval, for the rate.
    #[arg(long)]
    seconds: f64,
}

/// One engine's busy seconds and work at a sample.
#[derive(Clone, Debug, PartialEq)]
struct EngineSample {
    name: String,
    busy_seconds: f64,
    work: u64,
}

fn read_sample(path: &Path) -> Result<Vec<EngineSample>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_sample(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_sample(text: &str) -> Result<Vec<EngineSample>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let engines = v
        .get("engine_stats")
        .and_then(Value::as_array)
        .ok_or("no engine_stats array")?;
    engines
        .iter()
        .map(|e| {
            Ok(EngineSample {
                name: e
                    .get("engine")
                    .and_then(Value::as_str)
                    .ok_or("an engine without a name")?
                    .to_string(),
                busy_seconds: e
                    .get("busy_seconds")
                    .and_then(Value::as_f64)
                    .ok_or("an engine without busy_seconds")?,
                work: e
                    .get("work")
                    .and_then(Value::as_u64)
                    .ok_or("an engine without work")?,
            })
        })
        .collect()
}

/// Per engine over the interval: name, busy ns per unit of its work, and
/// its busy seconds. Engines present in only one sample are left out.
fn per_engine(before: &[EngineSample], after: &[EngineSample]) -> Vec<(String, f64, f64)> {
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.name == a.name)?;
            let busy = a.busy_seconds - b.busy_seconds;
            let work = a.work.saturating_sub(b.work);
            let ns = if work > 0 {
                busy * 1e9 / work as f64
            } else {
                0.0
            };
            Some((a.name.clone(), ns, busy))
        })
        .collect()
}

pub fn run_engine_cost(a: EngineCostArgs) -> Result<(), String> {
    if a.seconds.is_nan() || a.seconds <= 0.0 {
        return Err("--seconds must be above 0".into());
    }
    let before = read_sample(&a.before)?;
    let after = read_sample(&a.after)?;
    let engines = per_engine(&before, &after);
    let frames = match (
        before.iter().find(|e| e.name == a.frames_of),
        after.iter().find(|e| e.name == a.frames_of),
    ) {
        (Some(b), Some(e)) => e.work.saturating_sub(b.work),
        _ => return Err(format!("no engine named {} in both samples", a.frames_of)),
    };
    let busy: f64 = engines.iter().map(|(_, _, s)| s).sum();
    let ns_per_frame = if frames > 0 {
        busy * 1e9 / frames as f64
    } else {
        0.0
    };
    let each: Vec<String> = engines
        .iter()
        .map(|(n, ns, _)| format!("{n}={ns:.1}"))
        .collect();
    println!(
        "result frames={frames} mframes_per_s={:.3} busy_ns_per_frame={ns_per_frame:.1} ns_per_work: {}",
        frames as f64 / a.seconds / 1e6,
        each.join(" ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(switch: (f64, u64), vnic: (f64, u64)) -> String {
        format!(
            r#"{{"cpu_seconds": 1.0, "engine_stats": [
                {{"engine": "switch", "busy_seconds": {}, "work": {}, "polls": 9}},
                {{"engine": "vnic0/q0", "busy_seconds": {}, "work": {}, "polls": 9}}]}}"#,
            switch.0, switch.1, vnic.0, vnic.1
        )
    }

    #[test]
    fn cost_is_busy_time_per_unit_of_work_over_the_interval() {
        let before = parse_sample(&sample((1.0, 1000), (2.0, 500))).unwrap();
        let after = parse_sample(&sample((1.5, 101_000), (4.0, 200_500))).unwrap();
        let e = per_engine(&before, &after);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].0, "switch");
        assert!((e[0].1 - 5000.0).abs() < 1e-6, "{e:?}");
        assert!((e[1].1 - 10_000.0).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn a_sample_without_engine_stats_is_refused() {
        assert!(parse_sample(r#"{"cpu_seconds": 1.0}"#).is_err());
        assert!(parse_sample("not json").is_err());
        assert!(parse_sample(r#"{"engine_stats": [{"engine": "x"}]}"#).is_err());
    }
}
