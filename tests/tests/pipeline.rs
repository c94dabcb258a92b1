//! The actuarial pipelines end to end: ESG -> projection -> statistics, and the full pipeline
//! whose solver re-evaluates the projection on warm workers.

use livecalc_tests::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn example(name: &str, edit: impl FnOnce(&mut Value)) -> (TempDir, PathBuf) {
    let text = std::fs::read_to_string(examples().join(format!("dag_config_{name}.json"))).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    let dir = TempDir::new(name);
    // Keep relative data paths working: the DAG sits in the examples folder under a new name.
    let path = examples().join(format!(
        ".test-{}-{}.json",
        name,
        dir.path().file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    (dir, path)
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(path: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> (Finished, Value) {
    let mut args = vec![
        "run",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let f = run_supervisor(&args, Duration::from_secs(180));
    let m = f.manifest(out);
    (f, m)
}

#[test]
fn esg_feeds_the_projection_through_shared_memory() {
    let (dir, path) = example("esg_projection", |_| {});
    let _c = Cleanup(path.clone());
    let (f, m) = run(&path, &dir.join("out"), &[]);
    assert_eq!(f.code, 0, "{}", f.stderr);
    let scen = read_parquet(&dir.join("out/esg/scenarios.parquet"));
    assert_eq!(
        i64_column(&scen, "scenario_id"),
        (0..1000).collect::<Vec<i64>>()
    );
    let per_scenario = read_parquet(&dir.join("out/projection/per_scenario.parquet"));
    let pv = f64_column(&per_scenario, "pv_net_cf");
    assert_eq!(pv.len(), 1000);
    assert!(pv.iter().all(|x| x.is_finite()));
    // The PV components add up, scenario by scenario.
    let comp = |c: &str| f64_column(&per_scenario, c);
    let (p, cl, e, co, ma) = (
        comp("pv_premiums"),
        comp("pv_claims"),
        comp("pv_expenses"),
        comp("pv_commissions"),
        comp("pv_maturities"),
    );
    for s in 0..1000 {
        let sum = p[s] - cl[s] - e[s] - co[s] - ma[s];
        assert!(
            (sum - pv[s]).abs() <= 1e-9 * p[s].abs().max(1.0),
            "scenario {s}: {sum} vs {}",
            pv[s]
        );
    }
    // Statistics agree with the per-scenario vector.
    let stats = read_parquet(&dir.join("out/stats/statistics.parquet"));
    let mean = pv.iter().sum::<f64>() / pv.len() as f64;
    let got = f64_column(&stats, "mean")[0];
    assert!((got - mean).abs() <= 1e-9 * mean.abs(), "{got} vs {mean}");
    // Stochastic rates make the scenarios differ.
    let sd = (pv.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 999.0).sqrt();
    assert!((f64_column(&stats, "std")[0] - sd).abs() <= 1e-6 * sd && sd > 0.0);
    assert_eq!(m["nodes"][1]["rows"], 10000);
}

#[test]
fn the_solver_finds_the_premium_multiplier_on_warm_workers_and_a_rerun_confirms_it() {
    let (dir, path) = example("full_pipeline", |_| {});
    let _c = Cleanup(path.clone());
    let (f, m) = run(&path, &dir.join("out"), &[]);
    assert_eq!(f.code, 0, "{}", f.stderr);
    let node = |id: &str| {
        m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()
            .clone()
    };
    let (esg, projection, pricing) = (node("esg"), node("projection"), node("pricing"));
    // Re-evaluations ran on the projection's warm workers: no extra process, no ESG re-run.
    let evals = projection["evaluations"].as_u64().unwrap();
    assert!((2..=4).contains(&evals), "{evals} evaluations");
    assert_eq!(projection["worker_starts"], projection["workers"]);
    assert_eq!(esg["evaluations"], 0);
    let report = &pricing["report"];
    assert_eq!(report["converged"], true, "{report}");
    assert!(report["evaluations"].as_u64().unwrap() <= 4, "{report}");

    let solution = read_parquet(&dir.join("out/pricing/solution.parquet"));
    let multiplier = f64_column(&solution, "multipliers_premium")[0];
    assert_eq!(
        multiplier,
        report["parameters"]["projection.multipliers.premium"]
            .as_f64()
            .unwrap()
    );
    assert!(multiplier > 0.2 && multiplier < 5.0);
    let stats = read_parquet(&dir.join("out/stats/statistics.parquet"));
    assert!(
        f64_column(&stats, "mean")[0].abs() <= 1.0,
        "mean at the solution: {}",
        f64_column(&stats, "mean")[0]
    );

    // The projection alone, at that multiplier, hits the target within the tolerance.
    let (dir2, path2) = example("esg_projection", |v| {
        v["engines"][1]["config"]["multipliers"]["premium"] = json!(multiplier);
    });
    let _c2 = Cleanup(path2.clone());
    let (f2, _) = run(&path2, &dir2.join("out"), &[]);
    assert_eq!(f2.code, 0, "{}", f2.stderr);
    let alone = read_parquet(&dir2.join("out/stats/statistics.parquet"));
    let mean = f64_column(&alone, "mean")[0];
    assert!(
        mean.abs() <= 1.0,
        "re-run mean {mean} misses the target 0 by more than the tolerance 1.0"
    );
}

#[test]
fn a_failed_evaluation_is_reported_not_hidden() {
    let (dir, path) = example("full_pipeline", |v| {
        // A negative mortality multiplier is a configuration error in the projection.
        v["engines"][3]["config"]["parameters"] = json!([{"name": "projection.multipliers.mortality", "initial": -0.5, "lower": -1.0, "upper": 2.0}]);
        v["engines"][3]["outputs"]["solution"]["columns"] = json!({
            "multipliers_mortality": {"dtype": "float64", "shape": [1]},
            "objective": {"dtype": "float64", "shape": [1]},
            "converged": {"dtype": "uint8", "shape": [1]}
        });
        v["engines"][3]["outputs"]["history"]["columns"] =
            json!({"evaluation": {"dtype": "int32", "shape": [20]}});
    });
    let _c = Cleanup(path.clone());
    let (f, m) = run(&path, &dir.join("out"), &[]);
    assert_eq!(f.code, 1, "{}", f.stderr);
    let errors = m["errors"].to_string();
    assert!(errors.contains("node 'pricing'"), "{errors}");
    assert!(errors.contains("ConfigurationError"), "{errors}");
    assert!(errors.contains("mortality"), "{errors}");
}

#[test]
fn bad_model_points_are_rejected_naming_file_row_and_column() {
    let dir = TempDir::new("badbook");
    let book = std::fs::read_to_string(examples().join("data/model_points.csv")).unwrap();
    let mut lines: Vec<String> = book.lines().map(String::from).collect();
    // Row 5 of the data (policy 5): a negative sum assured.
    let mut f: Vec<String> = lines[5].split(',').map(String::from).collect();
    f[4] = format!("-{}", f[4]);
    lines[5] = f.join(",");
    let bad = dir.join("bad_book.csv");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let (_d, path) = example("projection_only", |v| {
        v["data_sources"]["policies"]["path"] = json!(bad.to_str().unwrap());
        v["engines"][0]["retry"] = json!({"max_attempts": 1});
    });
    let _c = Cleanup(path.clone());
    let (f, m) = run(&path, &dir.join("out"), &[]);
    assert_eq!(f.code, 1, "{}", f.stderr);
    let errors = m["errors"].to_string();
    assert!(errors.contains("bad_book.csv"), "{errors}");
    assert!(errors.contains("sum_assured"), "{errors}");
    assert!(
        errors.contains("policy 5") || errors.contains("row 4") || errors.contains("row 5"),
        "{errors}"
    );
    assert!(
        !dir.join("out/projection/per_policy.parquet").exists(),
        "nothing is written for a failed node"
    );
}
