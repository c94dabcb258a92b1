//! The hello pipeline end to end: CSV -> Python engine -> C++ engine -> Parquet, values checked
//! against an independent computation from the CSV itself.

use livecalc_tests::*;
use std::time::Duration;

struct Policy {
    id: i64,
    age: i32,
    sum_assured: f64,
}

fn book() -> Vec<Policy> {
    let text = std::fs::read_to_string(examples().join("data/hello_policies.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Policy {
                id: f[0].parse().unwrap(),
                age: f[1].parse().unwrap(),
                sum_assured: f[2].parse().unwrap(),
            }
        })
        .collect()
}

fn run_hello(extra: &[&str]) -> (TempDir, Finished) {
    let out = TempDir::new("hello");
    let dag = examples().join("dag_config_hello.json");
    let mut args = vec![
        "run",
        dag.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let f = run_supervisor(&args, Duration::from_secs(60));
    (out, f)
}

#[test]
fn hello_pipeline_computes_the_right_values() {
    let (out, f) = run_hello(&[]);
    assert_eq!(f.code, 0, "stderr:\n{}", f.stderr);
    let m = f.manifest(out.path());
    assert_eq!(m["status"], "succeeded");
    assert_eq!(m["nodes"][0]["chunks"]["done"], 8);
    assert_eq!(m["nodes"][1]["engine"]["name"], "My Engine");
    assert!(
        m["nodes"][0]["runtime"].as_str().unwrap().contains(".venv"),
        "numpy must come from the project venv: {}",
        m["nodes"][0]["runtime"]
    );

    let policies = book();
    assert_eq!(policies.len(), 1000);
    // The engines' formulas, evaluated here in the same floating-point order.
    let premium: Vec<f64> = policies
        .iter()
        .map(|p| (p.sum_assured * 0.0012) * (1.0 + 0.03 * (p.age as f64 - 30.0)))
        .collect();
    let gross: Vec<f64> = premium.iter().map(|p| p * 1.12).collect();

    let priced = read_parquet(&out.join("rate/priced.parquet"));
    assert_eq!(
        i64_column(&priced, "policy_id"),
        policies.iter().map(|p| p.id).collect::<Vec<_>>()
    );
    assert_eq!(f64_column(&priced, "premium"), premium);

    let taxed = read_parquet(&out.join("gross/taxed.parquet"));
    assert_eq!(f64_column(&taxed, "gross_premium"), gross);

    // Per-chunk totals, added in chunk order (128 rows a chunk), exactly as the bus reduces.
    let total = gross
        .chunks(128)
        .map(|c| c.iter().fold(0.0, |a, b| a + b))
        .fold(0.0, |a, b| a + b);
    let totals = read_parquet(&out.join("gross/totals.parquet"));
    assert_eq!(f64_column(&totals, "gross_premium"), vec![total]);
    assert_eq!(f64_column(&totals, "policies"), vec![1000.0]);

    // Every output file is listed with its checksum.
    for o in m["outputs"].as_array().unwrap() {
        let path = out.join(o["path"].as_str().unwrap());
        assert_eq!(o["sha256"].as_str().unwrap(), file_sha(&path));
    }
}

#[test]
fn results_are_byte_identical_for_any_worker_count() {
    let (one, f1) = run_hello(&["--workers", "1"]);
    let (four, f4) = run_hello(&["--workers", "4"]);
    assert_eq!(f1.code, 0, "{}", f1.stderr);
    assert_eq!(f4.code, 0, "{}", f4.stderr);
    for file in [
        "rate/priced.parquet",
        "gross/taxed.parquet",
        "gross/totals.parquet",
    ] {
        assert_eq!(
            file_sha(&one.join(file)),
            file_sha(&four.join(file)),
            "{file} differs"
        );
    }
    let m4 = f4.manifest(four.path());
    assert_eq!(m4["nodes"][0]["worker_starts"], 4);
}

#[test]
fn validate_and_graph_describe_the_dag() {
    let dag = examples().join("dag_config_hello.json");
    let f = run_supervisor(
        &["validate", dag.to_str().unwrap(), "--json"],
        Duration::from_secs(20),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(v["status"], "valid");
    assert_eq!(v["nodes"][0]["chunks"], 8);
    let g = run_supervisor(
        &["graph", dag.to_str().unwrap(), "--format", "mermaid"],
        Duration::from_secs(20),
    );
    assert_eq!(g.code, 0);
    assert!(
        g.stdout.contains("node_rate ==>|priced| node_gross")
            || g.stdout.contains("src_policies ==>|policies| node_rate"),
        "{}",
        g.stdout
    );
    let d = run_supervisor(&["graph", dag.to_str().unwrap()], Duration::from_secs(20));
    assert!(d.stdout.starts_with("digraph livecalc"), "{}", d.stdout);
    assert!(d.stdout.contains("\"rate\" -> \"gross\""), "{}", d.stdout);
}

#[test]
fn independent_nodes_run_at_the_same_time() {
    let text = std::fs::read_to_string(examples().join("dag_config_hello.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["data_sources"]["policies"]["path"] =
        serde_json::json!(examples().join("data/hello_policies.csv"));
    // A second rater reading the same source: nothing orders it after the first.
    let mut twin = v["engines"][0].clone();
    twin["id"] = serde_json::json!("rate_twin");
    v["engines"].as_array_mut().unwrap().push(twin);
    v["output"] = serde_json::json!(["rate.priced", "rate_twin.priced"]);
    let dir = TempDir::new("twins");
    let dag = write_dag(dir.path(), &v);
    let f = run_supervisor(
        &[
            "run",
            dag.to_str().unwrap(),
            "--out",
            dir.join("out").to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let m = f.manifest(&dir.join("out"));
    let t = |id: &str, k: &str| {
        m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()["timings"][k]
            .as_f64()
            .unwrap()
    };
    assert!(
        t("rate_twin", "started_ms") < t("rate", "finished_ms"),
        "the twin waited for the first rater"
    );
    assert!(t("rate", "started_ms") < t("rate_twin", "finished_ms"));
    assert_eq!(
        file_sha(&dir.join("out/rate/priced.parquet")),
        file_sha(&dir.join("out/rate_twin/priced.parquet"))
    );
}

#[test]
fn an_empty_book_runs_and_reduces_to_zeros() {
    let text = std::fs::read_to_string(examples().join("dag_config_hello.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = TempDir::new("empty");
    std::fs::write(dir.join("empty.csv"), "policy_id,age,sum_assured\n").unwrap();
    v["data_sources"]["policies"]["path"] = serde_json::json!(dir.join("empty.csv"));
    v["engines"][1]["outputs"]["totals"]["reduce"] = serde_json::json!("first");
    let dag = write_dag(dir.path(), &v);
    let f = run_supervisor(
        &[
            "run",
            dag.to_str().unwrap(),
            "--out",
            dir.join("out").to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let taxed = read_parquet(&dir.join("out/gross/taxed.parquet"));
    assert!(taxed.get("gross_premium").is_none_or(|c| c.is_empty()));
    let totals = read_parquet(&dir.join("out/gross/totals.parquet"));
    assert_eq!(f64_column(&totals, "gross_premium"), vec![0.0]);
}
