//! Result lines: one JSON object per line on stdout, in the side-by-side harness's format
//! (`target`, `workload`, `run` and the metrics, keys in alphabetical order as `serde_json`
//! writes them), and the median line of several runs.

use serde_json::{Map, Value, json};

/// The `target` field of every line.
pub const TARGET: &str = "broadcast";

/// One result line: `target`, `workload` and `run`, and the fields of `metrics`.
pub fn line(workload: &str, run: Value, metrics: Value) -> Value {
    let mut out = Map::new();
    out.insert("target".into(), json!(TARGET));
    out.insert("workload".into(), json!(workload));
    out.insert("run".into(), run);
    if let Value::Object(m) = metrics {
        out.extend(m);
    }
    Value::Object(out)
}

/// Prints one result line (see [`line()`]) on stdout.
pub fn emit(workload: &str, run: Value, metrics: Value) {
    println!("{}", line(workload, run, metrics));
}

/// Field-by-field median of several runs' metrics: for each numeric field present as a number
/// in every run, the middle value (the upper middle for an even count), an integer if the
/// first run's was; other fields are taken from the first run. `runs` holds the number of
/// runs, and `lost_max` the worst run's `lost` (a loss in any run matters more than the
/// typical run).
pub fn median(runs: &[Value]) -> Value {
    let mut out = Map::new();
    out.insert("runs".into(), json!(runs.len()));
    let Some(first) = runs.first().and_then(Value::as_object) else {
        return Value::Object(out);
    };
    for (key, value) in first {
        let mut xs: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
        if value.is_number() && xs.len() == runs.len() {
            xs.sort_by(f64::total_cmp);
            let m = xs[xs.len() / 2];
            let v = if value.is_f64() {
                json!(m)
            } else {
                json!(m as u64)
            };
            out.insert(key.clone(), v);
            if key == "lost" {
                out.insert("lost_max".into(), json!(xs[xs.len() - 1] as u64));
            }
        } else {
            out.insert(key.clone(), value.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_target_workload_run_and_the_metrics() {
        let l = line("throughput", json!(1), json!({"msgs_per_s": 5.0}));
        assert_eq!(
            l,
            json!({"target": "broadcast", "workload": "throughput", "run": 1, "msgs_per_s": 5.0})
        );
    }

    #[test]
    fn the_median_is_taken_field_by_field_with_the_worst_loss() {
        let runs = [
            json!({"msgs_per_s": 3.0, "lost": 0, "note": "a"}),
            json!({"msgs_per_s": 1.0, "lost": 7, "note": "b"}),
            json!({"msgs_per_s": 2.0, "lost": 0, "note": "c"}),
        ];
        let m = median(&runs);
        assert_eq!(m["runs"], json!(3));
        assert_eq!(m["msgs_per_s"], json!(2.0));
        assert_eq!(m["lost"], json!(0));
        assert_eq!(m["lost_max"], json!(7));
        assert_eq!(m["note"], json!("a"));
    }

    #[test]
    fn a_field_missing_from_one_run_is_not_a_median() {
        let runs = [json!({"p50_us": 10}), json!({"error": "x"})];
        assert_eq!(median(&runs)["p50_us"], json!(10));
    }
}
