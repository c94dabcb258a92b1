//! Recovery figures, measured through the real supervisor binary and read back from manifests:
//!
//! 1. The fault matrix again (7 kinds × {Python, C++} × {initialize, before_chunk, after_chunk}
//!    × {first attempt only, every attempt}): how many cases run, recover with byte-identical
//!    outputs, end partial, or do something else.
//! 2. Death to detection and death to a ready replacement: the bench `kill -9`s workers of a long
//!    run from outside, notes the wall-clock time of each kill, and reads the supervisor's
//!    `recoveries[].detected_unix_ms` and `ready_unix_ms`; p50 and p99 over at least 30 kills,
//!    separately for a Python and a C++ engine.
//!
//! Prints; asserts nothing about time.
//!
//!     cargo build --release --workspace --bins && cargo bench -p livecalc-tests --bench recovery
//!
//! `LIVECALC_BENCH_KILLS=N` sets the kills per engine (default 40); `LIVECALC_BENCH_SKIP_MATRIX=1`
//! skips part 1.

use livecalc_tests::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn run_to_end(dag: &Value, tag: &str) -> (TempDir, Finished, Value) {
    let dir = TempDir::new(tag);
    let path = write_dag(dir.path(), dag);
    let out = dir.join("out");
    let f = wait_supervisor(start_run(&path, &out, &[], &[]), Duration::from_secs(300));
    let m = f.manifest(&out);
    (dir, f, m)
}

fn matrix() {
    let t0 = Instant::now();
    let (clean_dir, f, m) = run_to_end(&hello_dag(), "bench-clean");
    assert_eq!(f.code, 0, "{}", f.stderr);
    let clean = output_shas(&clean_dir.join("out"), &m);
    let (mut cases, mut recovered, mut partial, mut noop) = (0, 0, 0, 0);
    let mut other: Vec<String> = Vec::new();
    let mut by_mode: BTreeMap<&str, [u32; 3]> = BTreeMap::new();
    for kind in matrix_kinds() {
        for engine in [0usize, 1] {
            for phase in matrix_phases() {
                for persistent in [false, true] {
                    cases += 1;
                    let (dir, f, m) =
                        run_to_end(&matrix_dag(kind, engine, phase, persistent), "bench-matrix");
                    let node = &m["nodes"][engine];
                    let restarts = node["restarts"].as_u64().unwrap_or(0);
                    let name = format!(
                        "{kind}/{}/{phase}/{}",
                        if engine == 0 { "python" } else { "c++" },
                        if persistent {
                            "every attempt"
                        } else {
                            "first attempt"
                        }
                    );
                    let mode = if persistent {
                        "every attempt"
                    } else {
                        "first attempt"
                    };
                    let slot = by_mode.entry(mode).or_default();
                    match f.code {
                        0 if restarts == 0 => {
                            noop += 1;
                            slot[2] += 1;
                        }
                        0 if output_shas(&dir.join("out"), &m) == clean => {
                            recovered += 1;
                            slot[0] += 1;
                        }
                        3 => {
                            partial += 1;
                            slot[1] += 1;
                        }
                        code => other.push(format!("{name}: exit {code}")),
                    }
                }
            }
        }
    }
    println!("fault matrix: {cases} cases (7 kinds × Python, C++ × initialize, before_chunk, after_chunk × first attempt only, every attempt) in {:.1} s", t0.elapsed().as_secs_f64());
    for (mode, [r, p, n]) in &by_mode {
        println!("  fault on {mode:<13}: {r:>2} recovered (byte-identical to a clean run), {p:>2} ended partial (exit 3), {n} no-op");
    }
    println!("  total: {recovered} recover, {partial} end partial, {noop} no-op (garbage during initialize has no region to fill), {} other", other.len());
    for o in &other {
        println!("    unexpected: {o}");
    }
}

/// One kill: which worker, and when (Unix ms).
#[derive(Debug)]
struct Kill {
    pid: u32,
    at_ms: f64,
}

/// Kill workers of `node` during one run of the long pipeline, every `spacing`, while the node is
/// between 5% and 90% done. Returns (kill, detected - kill, ready - kill) per kill, and the
/// replacements' own spawn-to-initialized times.
fn kill_run(
    node_id: &str,
    node_index: usize,
    spacing: Duration,
    budget: usize,
    causes: &mut BTreeMap<String, u32>,
) -> (Vec<(f64, Option<f64>)>, Vec<f64>) {
    const ROWS: u64 = 200_000;
    const CHUNK: u64 = 20;
    let chunks = (ROWS / CHUNK) as usize;
    let dir = TempDir::new("bench-kill");
    let mut v = long_hello_dag(dir.path(), ROWS, CHUNK);
    for e in v["engines"].as_array_mut().unwrap() {
        e["retry"] =
            json!({"max_attempts": 5, "initial_delay_ms": 1, "max_delay_ms": 1, "jitter": 0.0});
        e["restart_limit"] = json!({"max_restarts": 10000, "window_s": 600});
    }
    let path = write_dag(dir.path(), &v);
    let out = dir.join("out");
    let child = start_run(&path, &out, &[], &[]);
    let pid = child.id();
    let progress = |out: &Path| journaled_chunks(out, node_id) as f64 / chunks as f64;
    let mut kills: Vec<Kill> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress(&out) < 0.05 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut next = Instant::now();
    while kills.len() < budget && progress(&out) < 0.9 && Instant::now() < deadline {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let live: Vec<u32> = workers_of_node(pid, node_id)
            .into_iter()
            .filter(|p| !kills.iter().any(|k| k.pid == *p))
            .collect();
        // The oldest live worker: the one most surely past its own start-up.
        let Some(&victim) = live.iter().min() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let at_ms = now_unix_ms();
        if signal(victim, Signal::SIGKILL) {
            kills.push(Kill { pid: victim, at_ms });
            next = Instant::now() + spacing;
        }
    }
    let f = wait_supervisor(child, Duration::from_secs(300));
    assert_eq!(f.code, 0, "{}", f.stderr);
    let m = f.manifest(&out);
    let node = &m["nodes"][node_index];
    let mut rec: Vec<&Value> = node["recoveries"].as_array().unwrap().iter().collect();
    rec.sort_by(|a, b| {
        a["detected_unix_ms"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["detected_unix_ms"].as_f64().unwrap())
    });
    assert_eq!(rec.len(), kills.len(), "one recovery per kill");
    let mut sample = Vec::new();
    for (k, r) in kills.iter().zip(&rec) {
        let detected = r["detected_unix_ms"].as_f64().unwrap();
        *causes
            .entry(r["cause"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        assert!(
            detected >= k.at_ms - 1.0,
            "recovery before its kill: {r:#} {k:?}"
        );
        if r["cause"] == "signal" {
            let msg = r["message"].as_str().unwrap();
            assert!(
                msg.contains(&format!("pid {} ", k.pid))
                    || msg.contains(&format!("pid {})", k.pid)),
                "{msg} vs {k:?}"
            );
        }
        sample.push((
            detected - k.at_ms,
            r["ready_unix_ms"].as_f64().map(|t| t - k.at_ms),
        ));
    }
    let ready: Vec<f64> = node["timings"]["worker_ready_ms"]
        .as_array()
        .unwrap()
        .iter()
        .skip(2) // the two first workers are not replacements
        .filter_map(Value::as_f64)
        .collect();
    (sample, ready)
}

fn latency(node_id: &str, node_index: usize, engine: &str, spacing: Duration, want: usize) {
    let t0 = Instant::now();
    let mut sample: Vec<(f64, Option<f64>)> = Vec::new();
    let mut init = Vec::new();
    let mut runs = 0;
    let mut causes = BTreeMap::new();
    while sample.len() < want && runs < 20 {
        let (s, r) = kill_run(
            node_id,
            node_index,
            spacing,
            want - sample.len(),
            &mut causes,
        );
        sample.extend(s);
        init.extend(r);
        runs += 1;
    }
    let detect: Vec<f64> = sample.iter().map(|s| s.0).collect();
    let ready: Vec<f64> = sample.iter().filter_map(|s| s.1).collect();
    println!(
        "{engine}: {} kills over {runs} run(s) in {:.1} s ({} replacements ready before the next kill)",
        sample.len(),
        t0.elapsed().as_secs_f64(),
        ready.len()
    );
    println!("  reported causes: {causes:?}");
    println!(
        "  death -> detection        p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        quantile(&detect, 0.5),
        quantile(&detect, 0.99),
        quantile(&detect, 1.0)
    );
    if !ready.is_empty() {
        let after: Vec<f64> = sample.iter().filter_map(|s| s.1.map(|r| r - s.0)).collect();
        println!(
            "  death -> ready replacement p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
            quantile(&ready, 0.5),
            quantile(&ready, 0.99),
            quantile(&ready, 1.0)
        );
        println!(
            "  detection -> ready         p50 {:>8.2} ms   p99 {:>8.2} ms",
            quantile(&after, 0.5),
            quantile(&after, 0.99)
        );
    }
    if !init.is_empty() {
        println!(
            "  of which the engine's own start (spawn -> initialized, replacements) p50 {:.2} ms  p99 {:.2} ms",
            quantile(&init, 0.5),
            quantile(&init, 0.99)
        );
    }
}

fn main() {
    println!("machine: {}", machine_description());
    println!("binaries: {}", bin_dir().display());
    if std::env::var_os("LIVECALC_BENCH_SKIP_MATRIX").is_none() {
        matrix();
    }
    let kills: usize = std::env::var("LIVECALC_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    latency(
        "rate",
        0,
        "Python engine (python_hello)",
        Duration::from_millis(350),
        kills,
    );
    latency(
        "gross",
        1,
        "C++ engine (cpp_my_engine)",
        Duration::from_millis(40),
        kills,
    );
}
