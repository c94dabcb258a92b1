//! The shipped example (`examples/dag_config_projection_only.json` and its data) runs on the
//! engine as the DAG declares it: config, column types, output shapes and chunk size are taken
//! from the DAG file itself, so the example cannot drift away from what the engine accepts.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn csv(path: &PathBuf) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    (
        header,
        lines
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect(),
    )
}

/// A column as the supervisor would hand it over: categories as int32 codes in level order.
fn codes(spec: &Value, values: &[String]) -> Vec<i32> {
    let levels: Vec<&str> = spec["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    values
        .iter()
        .map(|v| {
            levels
                .iter()
                .position(|l| l == v)
                .unwrap_or_else(|| panic!("level {v}")) as i32
        })
        .collect()
}

#[test]
fn example_dag_projection_runs_on_the_example_data() {
    let dag: Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("dag_config_projection_only.json")).unwrap(),
    )
    .unwrap();
    let node = dag["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "cpp_projection")
        .unwrap();
    let mut config = node["config"].clone();
    // Relative paths resolve against the DAG's folder (the worker's working directory).
    for key in ["mortality", "lapse"] {
        let p = examples().join(config[key].as_str().unwrap());
        config[key] = Value::String(p.to_string_lossy().into_owned());
    }

    let src = &dag["data_sources"]["policies"];
    let (header, rows) = csv(&examples().join(src["path"].as_str().unwrap()));
    let column = |name: &str| -> Vec<String> {
        let i = header.iter().position(|h| h == name).unwrap();
        rows.iter().map(|r| r[i].clone()).collect()
    };
    let ints = |name: &str| {
        column(name)
            .iter()
            .map(|v| v.parse::<i32>().unwrap())
            .collect::<Vec<_>>()
    };
    let floats = |name: &str| {
        column(name)
            .iter()
            .map(|v| v.parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    let book = Book {
        policy_id: column("policy_id")
            .iter()
            .map(|v| v.parse().unwrap())
            .collect(),
        age_at_entry: ints("age_at_entry"),
        sex: codes(&src["columns"]["sex"], &column("sex")),
        policy_term: ints("policy_term"),
        sum_assured: floats("sum_assured"),
        product: codes(&src["columns"]["product"], &column("product")),
        policy_count: Some(floats("policy_count")),
        premium: Some(floats("premium")),
        duration_mth: Some(ints("duration_mth")),
    };
    let (_, curve_rows) =
        csv(&examples().join(dag["data_sources"]["curve"]["path"].as_str().unwrap()));
    let scen = Scenarios::Curve {
        year: curve_rows.iter().map(|r| r[0].parse().unwrap()).collect(),
        spot: curve_rows.iter().map(|r| r[1].parse().unwrap()).collect(),
    };

    let mut outs = Vec::new();
    for (binding, spec) in node["outputs"].as_object().unwrap() {
        for (name, c) in spec["columns"].as_object().unwrap() {
            let shape = match (spec.get("reduce"), c.get("shape")) {
                (Some(_), Some(s)) => Shape::PerChunk(s[0].as_u64().unwrap() as usize),
                _ => Shape::Rows,
            };
            outs.push(col(&format!("{binding}.{name}"), shape));
        }
    }
    let chunk = node["chunk_size"].as_u64().unwrap() as usize;
    let r =
        run(&config, &book, &scen, &outs, chunk).unwrap_or_else(|e| panic!("{}", error_text(&e)));

    assert_eq!(r.i["per_policy.policy_id"], book.policy_id);
    let total: f64 = r.f("per_policy.pv_net_cf").iter().sum();
    assert_close(
        "sum of policies vs per-scenario total",
        total,
        r.one("per_scenario.pv_net_cf"),
        1e-9,
        1e6,
    );
    assert!(r.f("per_policy.pv_premiums").iter().all(|v| *v > 0.0));
    assert!(r.f("per_policy.pv_claims").iter().all(|v| *v >= 0.0));
    let mat: f64 = r.f("per_policy.pv_maturities").iter().sum();
    assert!(mat > 0.0, "the book holds endowments");

    // The statistics node on that output, as the DAG declares it.
    let stats = dag["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "cpp_pv_statistics")
        .unwrap();
    let names: Vec<String> = stats["outputs"]["statistics"]["columns"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut e = engine(
        "cpp_pv_statistics",
        &stats
            .get("config")
            .cloned()
            .unwrap_or(serde_json::json!({})),
    )
    .unwrap();
    let span = livecalc_protocol::ChunkSpan {
        index: 0,
        row_start: 0,
        row_count: 1,
        total_rows: 1,
    };
    use livecalc_protocol::owned_view::{ColumnData, OwnedView};
    let input = OwnedView::build(
        span,
        vec![ColumnData::new(
            "per_scenario.pv_net_cf",
            &[1],
            r.f("per_scenario.pv_net_cf"),
        )],
    );
    let mut output = OwnedView::build(
        span,
        names
            .iter()
            .map(|n| ColumnData::zeros::<f64>(&format!("statistics.{n}"), &[1]))
            .collect(),
    );
    run_view(&mut e, &input, &mut output).unwrap();
    assert_eq!(
        output.column::<f64>("statistics.mean")[0],
        r.one("per_scenario.pv_net_cf")
    );
    assert_eq!(
        output.column::<f64>("statistics.cte99_5")[0],
        -r.one("per_scenario.pv_net_cf")
    );
}
