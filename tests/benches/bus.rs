//! Walking-skeleton benchmarks, measured through the real supervisor binary and read back from
//! its manifests: control round trip per chunk, handoff of a 1 MiB versus a 1 GiB segment, and
//! worker start to ready. Prints medians; asserts nothing about time.
//!
//!     cargo bench -p livecalc-tests --bench bus

use livecalc_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(dag: &Value) -> Value {
    let dir = TempDir::new("bench");
    let path = write_dag(dir.path(), dag);
    let out = dir.join("out");
    let f = run_supervisor(
        &[
            "run",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(600),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    f.manifest(&out)
}

fn checksum_dag(rows: u64, chunk_size: u64, mode: &str) -> Value {
    json!({
        "data_sources": {"data": {"sequence": {"rows": rows}}},
        "engines": [{
            "id": "sum", "type": "cpp_checksum", "inputs": {"data": "data"},
            "config": {"mode": mode}, "chunk_size": chunk_size, "workers": 1,
            "outputs": {"checksum": {"reduce": "sum", "columns": {
                "total": {"dtype": "int64", "shape": [1]}, "rows": {"dtype": "int64", "shape": [1]}}}}
        }]
    })
}

fn f(m: &Value, path: &[&str]) -> f64 {
    let mut v = &m["nodes"][0];
    for p in path {
        v = match p.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[*p],
        };
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} in {v}"))
}

fn main() {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {machine}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // 1. Control round trip: 5,000 one-row chunks on one C++ worker.
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for _ in 0..5 {
        let m = run(&checksum_dag(5000, 1, "touch"));
        p50.push(f(&m, &["control_round_trip_us", "p50"]));
        p99.push(f(&m, &["control_round_trip_us", "p99"]));
    }
    println!(
        "control round trip per chunk (C++ worker, 5000 chunks x 5 runs): median p50 {:.1} us, median p99 {:.1} us (aim <= 100 us)",
        median(p50),
        median(p99)
    );

    // 2. Handoff of a 1 MiB versus a 1 GiB segment: attach (map) + one chunk reading it.
    let mut ratios = Vec::new();
    let mut small_ms = Vec::new();
    let mut large_ms = Vec::new();
    for _ in 0..5 {
        let handoff = |rows: u64| {
            let m = run(&checksum_dag(rows, rows, "touch"));
            f(&m, &["timings", "attach_ms", "0"]) + f(&m, &["control_round_trip_us", "p50"]) / 1e3
        };
        let s = handoff(1 << 17);
        let l = handoff(1 << 27);
        small_ms.push(s);
        large_ms.push(l);
        ratios.push(l / s);
    }
    println!(
        "handoff (attach + first chunk): 1 MiB {:.3} ms, 1 GiB {:.3} ms, median ratio {:.2} (aim <= 1.5)",
        median(small_ms),
        median(large_ms),
        median(ratios)
    );

    // 3. Worker start to ready (spawn -> Initialized), C++ and Python (numpy imported).
    let hello = std::fs::read_to_string(examples().join("dag_config_hello.json")).unwrap();
    let mut dag: Value = serde_json::from_str(&hello).unwrap();
    dag["data_sources"]["policies"]["path"] = json!(examples().join("data/hello_policies.csv"));
    dag["engines"][0]["workers"] = json!(1);
    dag["engines"][1]["workers"] = json!(1);
    let mut py = Vec::new();
    let mut cpp = Vec::new();
    for _ in 0..7 {
        let dir = TempDir::new("bench");
        let path = write_dag(dir.path(), &dag);
        let out = dir.join("out");
        let r = run_supervisor(
            &[
                "run",
                path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        );
        let m = r.manifest(&out);
        py.push(
            m["nodes"][0]["timings"]["worker_ready_ms"][0]
                .as_f64()
                .unwrap(),
        );
        cpp.push(
            m["nodes"][1]["timings"]["worker_ready_ms"][0]
                .as_f64()
                .unwrap(),
        );
    }
    println!(
        "worker start to ready (median of 7): C++ {:.1} ms (aim <= 50), Python with numpy {:.1} ms (aim <= 500)",
        median(cpp),
        median(py)
    );
}
