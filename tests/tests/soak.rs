//! Soak: the hello pipeline (Python `rate` -> C++ `gross`, 32 chunks each) under random faults
//! of every kind, at fixed seeds, for a bounded number of runs.
//!
//! Fault draws are deterministic per (seed, chunk, attempt), so each run's outcome is known in
//! advance: a chunk fails exactly when a chunk-phase fault fires on every one of its attempts,
//! and its cause is that of the last attempt's fault. Each run is checked against that
//! prediction and against a clean run, byte for byte: a run without failed chunks must deliver
//! byte-identical files; a partial run must list exactly the predicted chunks, rows and causes,
//! and deliver every other row exactly as the clean run did. Faults during initialize only cost
//! restarts. After every run no worker process and no segment may be left.

use livecalc_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const ROWS: u64 = 1000;
const CHUNK: u64 = 32;
const CHUNKS: u64 = ROWS.div_ceil(CHUNK);
const ATTEMPTS: u32 = 2;
const RUNS: u64 = 40;

/// (kind, phase, probability) of the faults each node gets; seeds vary per run and fault.
const RATE_FAULTS: [(&str, &str, f64); 5] = [
    ("segfault", "before_chunk", 0.04),
    ("error", "after_chunk", 0.04),
    ("garbage", "before_chunk", 0.03),
    ("hang", "before_chunk", 0.01),
    ("exit", "initialize", 0.15),
];
const GROSS_FAULTS: [(&str, &str, f64); 5] = [
    ("abort", "before_chunk", 0.04),
    ("garbage", "after_chunk", 0.04),
    ("error", "before_chunk", 0.03),
    ("hang", "after_chunk", 0.01),
    ("segfault", "initialize", 0.15),
];

fn seed(run: u64, node: usize, k: usize) -> u64 {
    0x5EED_0000 + run * 1000 + node as u64 * 100 + k as u64
}

fn faults_json(run: u64, node: usize, faults: &[(&str, &str, f64)]) -> Value {
    Value::Array(
        faults
            .iter()
            .enumerate()
            .map(|(k, (kind, phase, p))| {
                let mut f = json!({"kind": kind, "phase": phase, "probability": p, "seed": seed(run, node, k)});
                if *kind == "exit" {
                    f["code"] = json!(5);
                }
                f
            })
            .collect(),
    )
}

fn dag(run: Option<u64>) -> Value {
    let mut v = hello_dag();
    for (i, e) in v["engines"].as_array_mut().unwrap().iter_mut().enumerate() {
        e["chunk_size"] = json!(CHUNK);
        e["workers"] = json!(2);
        e["timeout_s"] = json!(0.5);
        e["retry"] = json!({"max_attempts": ATTEMPTS, "initial_delay_ms": 1, "max_delay_ms": 4});
        e["restart_limit"] = json!({"max_restarts": 1000, "window_s": 600});
        e["on_failure"] = json!("partial");
        if let Some(run) = run {
            e["faults"] = faults_json(run, i, if i == 0 { &RATE_FAULTS } else { &GROSS_FAULTS });
        }
    }
    v
}

fn label(kind: &str) -> &'static str {
    match kind {
        "segfault" | "abort" | "garbage" => "signal",
        "error" => "execution_error",
        "hang" => "timeout",
        "exit" => "exit",
        other => panic!("unexpected fault kind {other}"),
    }
}

/// The fault that ends attempt `attempt` of chunk `c`, as the worker host chooses it: the first
/// firing `before_chunk` fault, else the first firing `after_chunk` fault.
fn striking(
    run: u64,
    node: usize,
    faults: &[(&str, &str, f64)],
    c: u64,
    attempt: u32,
) -> Option<&'static str> {
    for phase in ["before_chunk", "after_chunk"] {
        for (k, (kind, ph, p)) in faults.iter().enumerate() {
            if *ph == phase && fault_draw(seed(run, node, k), c, attempt) < *p {
                return Some(label(kind));
            }
        }
    }
    None
}

/// Chunks of a node that fail every attempt, with the cause of the last.
fn predicted_failures(run: u64, node: usize) -> BTreeMap<u64, &'static str> {
    let faults: &[(&str, &str, f64)] = if node == 0 {
        &RATE_FAULTS
    } else {
        &GROSS_FAULTS
    };
    let mut out = BTreeMap::new();
    for c in 0..CHUNKS {
        let causes: Vec<Option<&str>> = (1..=ATTEMPTS)
            .map(|a| striking(run, node, faults, c, a))
            .collect();
        if causes.iter().all(Option::is_some) {
            out.insert(c, causes[ATTEMPTS as usize - 1].unwrap());
        }
    }
    out
}

struct Clean {
    sha: BTreeMap<String, String>,
    ids: Vec<i64>,
    premium: Vec<f64>,
    gross: Vec<f64>,
}

fn run(v: &Value, tag: &str) -> (TempDir, Finished, Value) {
    let dir = TempDir::new(tag);
    let path = write_dag(dir.path(), v);
    let out = dir.join("out");
    let f = run_supervisor(
        &[
            "run",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    let m = f.manifest(&out);
    (dir, f, m)
}

fn keep<T: Clone>(v: &[T], failed: &BTreeMap<u64, &str>) -> Vec<T> {
    v.iter()
        .enumerate()
        .filter(|(i, _)| !failed.contains_key(&(*i as u64 / CHUNK)))
        .map(|(_, x)| x.clone())
        .collect()
}

fn rows_of(c: u64) -> [u64; 2] {
    [c * CHUNK, ((c + 1) * CHUNK).min(ROWS)]
}

fn check_failed(n: &Value, want: &BTreeMap<u64, &str>, ctx: &str) {
    let got: BTreeMap<u64, (String, Value, u64)> = n["chunks"]["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                (
                    c["cause"].as_str().unwrap().to_string(),
                    c["rows"].clone(),
                    c["attempts"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let expected: BTreeMap<u64, (String, Value, u64)> = want
        .iter()
        .map(|(&c, cause)| (c, (cause.to_string(), json!(rows_of(c)), ATTEMPTS as u64)))
        .collect();
    assert_eq!(got, expected, "failed chunks of {}: {ctx}", n["id"]);
}

fn check_output(m: &Value, path: &str, failed: &BTreeMap<u64, &str>) {
    let o = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == path)
        .unwrap_or_else(|| panic!("{path} not delivered"));
    let missing: Vec<[u64; 2]> = failed.keys().map(|&c| rows_of(c)).collect();
    assert_eq!(o["missing_rows"], json!(missing), "{path}");
    assert_eq!(o["complete"], failed.is_empty(), "{path}");
    let covered = ROWS - missing.iter().map(|r| r[1] - r[0]).sum::<u64>();
    assert_eq!(o["covers_rows"], covered, "{path}");
}

#[test]
fn soak_random_faults_at_fixed_seeds() {
    let t0 = Instant::now();
    let (clean_dir, f, m) = run(&dag(None), "soak-clean");
    assert_eq!(f.code, 0, "{}", f.stderr);
    let out = clean_dir.join("out");
    let clean = {
        let priced = read_parquet(&out.join("rate/priced.parquet"));
        let taxed = read_parquet(&out.join("gross/taxed.parquet"));
        Clean {
            sha: output_shas(&out, &m),
            ids: i64_column(&priced, "policy_id"),
            premium: f64_column(&priced, "premium"),
            gross: f64_column(&taxed, "gross_premium"),
        }
    };
    assert_eq!(clean.ids.len(), ROWS as usize);

    let (mut succeeded, mut partial, mut restarts, mut failed_chunks) = (0, 0, 0, 0);
    for r in 0..RUNS {
        let rate_fails = predicted_failures(r, 0);
        let gross_fails = predicted_failures(r, 1);
        let (dir, f, m) = run(&dag(Some(r)), "soak");
        let out = dir.join("out");
        let ctx = format!("run {r}\nstderr:\n{}", f.stderr);
        let rate = &m["nodes"][0];
        let gross = &m["nodes"][1];
        restarts += rate["restarts"].as_u64().unwrap() + gross["restarts"].as_u64().unwrap();
        check_failed(rate, &rate_fails, &ctx);
        if rate_fails.is_empty() && gross_fails.is_empty() {
            succeeded += 1;
            assert_eq!(f.code, 0, "{ctx}");
            assert_eq!(m["status"], "succeeded");
            check_failed(gross, &gross_fails, &ctx);
            assert_eq!(
                output_shas(&out, &m),
                clean.sha,
                "outputs differ from the clean run: {ctx}"
            );
            continue;
        }
        partial += 1;
        assert_eq!(f.code, 3, "{ctx}");
        assert_eq!(m["status"], "partial");
        if !rate_fails.is_empty() {
            failed_chunks += rate_fails.len();
            assert_eq!(rate["status"], "partial");
            check_output(&m, "rate/priced.parquet", &rate_fails);
            let priced = read_parquet(&out.join("rate/priced.parquet"));
            assert_eq!(
                i64_column(&priced, "policy_id"),
                keep(&clean.ids, &rate_fails),
                "{ctx}"
            );
            assert_eq!(
                f64_column(&priced, "premium"),
                keep(&clean.premium, &rate_fails),
                "{ctx}"
            );
            assert_eq!(gross["status"], "cancelled", "{ctx}");
            assert!(!out.join("gross/taxed.parquet").exists());
        } else {
            failed_chunks += gross_fails.len();
            check_failed(gross, &gross_fails, &ctx);
            assert_eq!(rate["status"], "succeeded");
            assert_eq!(
                file_sha(&out.join("rate/priced.parquet")),
                clean.sha["rate/priced.parquet"],
                "{ctx}"
            );
            check_output(&m, "gross/taxed.parquet", &gross_fails);
            check_output(&m, "gross/totals.parquet", &gross_fails);
            let taxed = read_parquet(&out.join("gross/taxed.parquet"));
            assert_eq!(
                i64_column(&taxed, "policy_id"),
                keep(&clean.ids, &gross_fails),
                "{ctx}"
            );
            assert_eq!(
                f64_column(&taxed, "gross_premium"),
                keep(&clean.gross, &gross_fails),
                "{ctx}"
            );
            let total = clean
                .gross
                .chunks(CHUNK as usize)
                .enumerate()
                .filter(|(c, _)| !gross_fails.contains_key(&(*c as u64)))
                .map(|(_, c)| c.iter().fold(0.0, |a, b| a + b))
                .fold(0.0, |a, b| a + b);
            let totals = read_parquet(&out.join("gross/totals.parquet"));
            assert_eq!(f64_column(&totals, "gross_premium"), vec![total], "{ctx}");
            let covered = ROWS
                - gross_fails
                    .keys()
                    .map(|&c| rows_of(c)[1] - rows_of(c)[0])
                    .sum::<u64>();
            assert_eq!(
                f64_column(&totals, "policies"),
                vec![covered as f64],
                "{ctx}"
            );
        }
    }
    eprintln!(
        "soak: {RUNS} runs in {:.1} s: {succeeded} byte-identical, {partial} partial ({failed_chunks} failed chunks, all predicted), {restarts} worker restarts",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        succeeded > 0 && partial > 0,
        "the seeds should exercise both outcomes"
    );
    assert!(restarts >= RUNS, "faults fired");
}
