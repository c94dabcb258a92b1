//! Bad input gets a clear error, exit code 2, every problem with its JSON path, and starts
//! nothing: no worker, no segment, no output file.

use livecalc_tests::*;
use rstest::rstest;
use serde_json::{json, Value};
use std::time::Duration;

fn base() -> Value {
    json!({
        "version": 1,
        "data_sources": {
            "policies": {"path": "book.csv", "columns": {"policy_id": "int64", "age": "int32", "sum_assured": "float64"}}
        },
        "engines": [
            {"id": "rate", "type": "python_hello", "inputs": {"policies": "policies"},
             "config": {"base_rate": 0.001},
             "outputs": {"priced": {"columns": {"policy_id": "int64", "premium": "float64"}}}},
            {"id": "gross", "type": "cpp_my_engine", "inputs": {"priced": "rate.priced"},
             "config": {"required_param": 1.1},
             "outputs": {"taxed": {"columns": {"policy_id": "int64", "gross_premium": "float64"}},
                         "totals": {"reduce": "sum", "columns": {"gross_premium": {"dtype": "float64", "shape": [1]}, "policies": {"dtype": "float64", "shape": [1]}}}}}
        ]
    })
}

fn setup(dag_text: &str) -> TempDir {
    let dir = TempDir::new("bad");
    std::fs::write(
        dir.join("book.csv"),
        "policy_id,age,sum_assured\n1,30,1000\n2,40,2000\n",
    )
    .unwrap();
    std::fs::write(dir.join("dag.json"), dag_text).unwrap();
    dir
}

fn assert_rejected(dir: &TempDir, expected: &[&str]) {
    let dag = dir.join("dag.json");
    let out = dir.join("out");
    for args in [
        vec!["validate", dag.to_str().unwrap()],
        vec!["run", dag.to_str().unwrap(), "--out", out.to_str().unwrap()],
    ] {
        let f = run_supervisor(&args, Duration::from_secs(20));
        assert_eq!(f.code, 2, "{args:?} should exit 2; stderr:\n{}", f.stderr);
        for e in expected {
            assert!(
                f.stderr.contains(e),
                "{args:?}: stderr lacks {e:?}:\n{}",
                f.stderr
            );
        }
    }
    assert!(
        !out.exists(),
        "a rejected DAG must not create its output folder"
    );
}

fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = base();
    edit(&mut v);
    serde_json::to_string_pretty(&v).unwrap()
}

#[test]
fn the_base_dag_is_valid() {
    let dir = setup(&edited(|_| {}));
    let f = run_supervisor(
        &["validate", dir.join("dag.json").to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
}

#[rstest]
#[case::malformed_json("{\"engines\": [", &["line 1 column", "malformed JSON"])]
#[case::not_an_object("[1, 2]", &["$: the DAG must be a JSON object"])]
fn malformed_documents(#[case] text: &str, #[case] expected: &[&str]) {
    assert_rejected(&setup(text), expected);
}

#[rstest]
#[case::unknown_top_key(|v: &mut Value| { v["enginez"] = json!([]); }, &["$.enginez: unknown key 'enginez'"])]
#[case::unknown_engine_key(|v: &mut Value| { v["engines"][0]["wokers"] = json!(2); }, &["$.engines[0].wokers: unknown key 'wokers'"])]
#[case::duplicate_id(|v: &mut Value| { v["engines"][1]["id"] = json!("rate"); }, &["$.engines[1].id: duplicate id 'rate' (also $.engines[0].id)"])]
#[case::unknown_type(|v: &mut Value| { v["engines"][0]["type"] = json!("python_helo"); }, &["$.engines[0].type: unknown engine type 'python_helo'"])]
#[case::unresolved_source(|v: &mut Value| { v["engines"][0]["inputs"]["policies"] = json!("polices"); }, &["$.engines[0].inputs.policies: unresolved input: no data source named 'polices'"])]
#[case::unresolved_output(|v: &mut Value| { v["engines"][1]["inputs"]["priced"] = json!("rate.prices"); }, &["$.engines[1].inputs.priced: unresolved input: engine 'rate' has no output 'prices'"])]
#[case::missing_file(|v: &mut Value| { v["data_sources"]["policies"]["path"] = json!("nowhere.csv"); }, &["$.data_sources.policies.path: file not found:", "nowhere.csv"])]
#[case::undefined_var(|v: &mut Value| { v["data_sources"]["policies"]["path"] = json!("${LIVECALC_TEST_UNDEFINED_DIR}/book.csv"); }, &["$.data_sources.policies.path: environment variable 'LIVECALC_TEST_UNDEFINED_DIR' is not defined"])]
#[case::dtype_mismatch(|v: &mut Value| { v["engines"][0]["outputs"]["priced"]["columns"]["premium"] = json!("float32"); }, &["$.engines[1].inputs.priced: dtype mismatch on column 'premium': rate.priced produces float32, 'cpp_my_engine' reads float64"])]
#[case::declared_expectation_mismatch(|v: &mut Value| { v["engines"][1]["inputs"]["priced"] = json!({"from": "rate.priced", "columns": {"premium": {"dtype": "float64", "shape": ["rows", 3]}}}); }, &["$.engines[1].inputs.priced.columns.premium: shape mismatch: rate.priced produces [\"rows=2\"], this engine expects [\"rows=2\", \"3\"]"])]
#[case::missing_column_in_file(|v: &mut Value| { v["data_sources"]["policies"]["columns"]["smoker"] = json!("uint8"); }, &["$.data_sources.policies:", "no column(s) smoker in the file"])]
#[case::huge_shape(|v: &mut Value| { v["engines"][1]["outputs"]["totals"]["columns"]["policies"]["shape"] = json!([1u64 << 61]); v["engines"][1]["outputs"]["totals"]["columns"]["gross_premium"]["shape"] = json!([1u64 << 61]); }, &["$.engines[1].outputs.totals.columns.policies: column of", "larger than the 256 TiB"])]
#[case::bad_workers(|v: &mut Value| { v["engines"][0]["workers"] = json!(0); }, &["$.engines[0].workers: must be a positive integer"])]
#[case::cycle(|v: &mut Value| {
    v["engines"][0]["inputs"] = json!({"policies": "policies", "back": "gross.taxed"});
    v["engines"][0]["chunk_by"] = json!("policies");
}, &["cycle: ", "rate -> gross -> rate"])]
fn each_problem_is_reported_with_its_path(#[case] edit: fn(&mut Value), #[case] expected: &[&str]) {
    assert_rejected(&setup(&edited(edit)), expected);
}

#[test]
fn every_problem_is_listed_in_one_pass() {
    let text = edited(|v| {
        v["engines"][0]["type"] = json!("nope");
        v["engines"][1]["chunk_size"] = json!(-5);
        v["output"] = json!(["gross.nothing"]);
    });
    let dir = setup(&text);
    let f = run_supervisor(
        &["validate", dir.join("dag.json").to_str().unwrap(), "--json"],
        Duration::from_secs(20),
    );
    assert_eq!(f.code, 2);
    let v: Value = serde_json::from_str(&f.stdout).unwrap();
    let paths: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"$.engines[0].type"), "{paths:?}");
    assert!(paths.contains(&"$.engines[1].chunk_size"), "{paths:?}");
    assert!(paths.contains(&"$.output[0]"), "{paths:?}");
}

#[test]
fn a_bad_value_in_the_data_names_file_row_and_column() {
    let dir = setup(&edited(|_| {}));
    std::fs::write(
        dir.join("book.csv"),
        "policy_id,age,sum_assured\n1,30,1000\n2,forty,2000\n",
    )
    .unwrap();
    let out = dir.join("out");
    let f = run_supervisor(
        &[
            "run",
            dir.join("dag.json").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert!(f.stderr.contains("book.csv"), "{}", f.stderr);
    assert!(f.stderr.contains("forty"), "{}", f.stderr);
    assert!(!out.join("manifest.json").exists());
}

#[test]
fn a_non_empty_foreign_output_folder_is_refused() {
    let dir = setup(&edited(|_| {}));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();
    let f = run_supervisor(
        &[
            "run",
            dir.join("dag.json").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(f.stderr.contains("is not empty"), "{}", f.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("precious.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn a_solver_may_only_re_evaluate_engines_upstream_of_it() {
    let text = std::fs::read_to_string(examples().join("dag_config_full_pipeline.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    // `esg` is upstream (fine); `ghost` does not exist; `pricing` itself is not upstream.
    v["engines"][3]["config"]["parameters"] = json!([
        {"name": "ghost.scale", "initial": 1.0, "lower": 0.0, "upper": 2.0},
        {"name": "pricing.tolerance", "initial": 1.0, "lower": 0.0, "upper": 2.0},
        {"name": "nodot", "initial": 1.0, "lower": 0.0, "upper": 2.0}
    ]);
    let dir = TempDir::new("solver-params");
    let path = examples().join(format!(".test-solver-params-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let f = run_supervisor(
        &["validate", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_file(&path);
    drop(dir);
    assert_eq!(f.code, 2, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("$.engines[3].evaluates: 'ghost' is not an engine upstream of 'pricing'"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr
            .contains("'pricing' is not an engine upstream of 'pricing'"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.contains(
            "$.engines[3].config.parameters[2].name: expected \"<engine id>.<config key>\""
        ),
        "{}",
        f.stderr
    );
}
