//! Benchmarks of the projection engine (issue 3). Prints figures; asserts nothing about time.
//!
//!   cargo bench -p livecalc-worker-cpp --bench projection
//!
//! Every engine figure times `runChunk` calls through the real cxx bridge on views built
//! beforehand (building a view is the supervisor's job and is not engine time). Each figure is
//! the median of several repetitions. The two-core figure runs two engine instances on two
//! threads that take chunks from a shared counter, as the supervisor's two workers would; it
//! leaves out the supervisor's own per-chunk messaging.

#[path = "../tests/common/mod.rs"]
mod common;

use common::reference::{lapse_csv, Mortality};
use common::*;
use livecalc_protocol::owned_view::OwnedView;
use livecalc_worker_host::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}, {cores} cores")
}

/// Terms uniformly in [lo, hi] years, new business, mixed ages and sexes.
fn book(rng: &mut Rng, n: usize, product: i32, lo: i64, hi: i64) -> Book {
    let mut b = Book::of(&[]);
    for i in 0..n {
        b.push(
            i as i64,
            &P {
                age: rng.int(20, 60) as i32,
                sex: rng.int(0, 1) as i32,
                term: rng.int(lo, hi) as i32,
                sa: rng.range(2e4, 5e5),
                product,
                count: 1.0,
                premium: rng.range(200.0, 3000.0),
                dur: 0,
            },
        );
    }
    b
}

struct Tables {
    _dir: TempDir,
    config: Value,
    mortality: Mortality,
    lapse: Vec<f64>,
}

fn tables() -> Tables {
    let dir = TempDir::new("bench");
    let mortality = Mortality::synthetic(18, 110, 3, true);
    let lapse = vec![0.12, 0.10, 0.08, 0.07, 0.06, 0.05];
    let mort = dir.write("mortality.csv", &mortality.csv());
    let lapse_path = dir.write("lapse.csv", &lapse_csv(&lapse));
    let config = json!({
        "mortality": mort, "lapse": lapse_path,
        "expenses": { "acquisition": 300, "maintenance": 60, "premium_rate": 0.02, "per_claim": 100, "inflation": 0.02 },
        "commission": { "first_year_rate": 0.4, "renewal_rate": 0.03 },
    });
    Tables {
        _dir: dir,
        config,
        mortality,
        lapse,
    }
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn pv_outputs(s: usize) -> Vec<OutCol> {
    let mut v = Vec::new();
    for c in COMPS {
        v.push(col(&format!("per_scenario.{c}"), Shape::PerChunk(s)));
    }
    v.push(col("per_policy.policy_id", Shape::Rows));
    for c in COMPS {
        v.push(col(&format!("per_policy.{c}"), Shape::Rows));
    }
    v
}

type Views = Vec<(OwnedView, OwnedView)>;

fn views(b: &Book, scen: &Scenarios, outs: &[OutCol], chunk: usize) -> Views {
    (0..b.len().div_ceil(chunk))
        .map(|k| {
            chunk_views(
                b,
                scen,
                outs,
                k as u64,
                k * chunk..((k + 1) * chunk).min(b.len()),
            )
        })
        .collect()
}

/// Median wall time of running every chunk on one engine (after one warm-up pass, which also
/// builds the engine's scenario tables, as the first chunk of a node does).
fn one_core(config: &Value, v: &mut Views, reps: usize) -> (f64, f64) {
    let mut e = engine("cpp_projection", config).unwrap();
    let mut inner = Vec::new();
    let run_all = |e: &mut livecalc_worker_cpp::CppEngine, v: &mut Views| {
        let mut ms = 0.0;
        for (i, o) in v.iter_mut() {
            ms += run_view(e, i, o).unwrap().execution_time_ms;
        }
        ms
    };
    run_all(&mut e, v);
    let mut wall = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        inner.push(run_all(&mut e, v));
        wall.push(t.elapsed().as_secs_f64());
    }
    (median(wall), median(inner) / 1e3)
}

/// Two engines on two threads pulling chunks from one counter; returns the median wall time.
fn two_cores(
    config: &Value,
    b: &Book,
    scen: &Scenarios,
    outs: &[OutCol],
    chunk: usize,
    reps: usize,
) -> f64 {
    let per_thread: Vec<Views> = (0..2).map(|_| views(b, scen, outs, chunk)).collect();
    let chunks = per_thread[0].len();
    let barrier = Barrier::new(3);
    let next: Vec<AtomicUsize> = (0..reps + 1).map(|_| AtomicUsize::new(0)).collect();
    let mut walls = Vec::new();
    std::thread::scope(|s| {
        for mut v in per_thread {
            let (barrier, next, config) = (&barrier, &next, config.clone());
            s.spawn(move || {
                let mut e = engine("cpp_projection", &config).unwrap();
                for counter in next.iter() {
                    barrier.wait();
                    loop {
                        let k = counter.fetch_add(1, Ordering::SeqCst);
                        if k >= chunks {
                            break;
                        }
                        let (i, o) = &mut v[k];
                        run_view(&mut e, i, o).unwrap();
                    }
                    barrier.wait();
                }
            });
        }
        for rep in 0..=reps {
            barrier.wait();
            let t = Instant::now();
            barrier.wait();
            if rep > 0 {
                walls.push(t.elapsed().as_secs_f64());
            }
        }
    });
    median(walls)
}

/// The plain loop the issue compares against: per policy, per scenario, per step, scalar, with
/// per-step rate tables precomputed (no pow in the loop). Returns per-scenario net PV sums.
struct Scalar {
    m: usize,
    q: Vec<Vec<Vec<f64>>>, // [sex][age][select column] per step
    cols: usize,
    min_age: i32,
    w: Vec<f64>,
}

impl Scalar {
    fn new(t: &Tables, m: usize) -> Scalar {
        let conv = |a: f64| {
            if m == 1 {
                a
            } else {
                1.0 - (1.0 - a).powf(1.0 / m as f64)
            }
        };
        let mt = &t.mortality;
        let q = (0..2)
            .map(|s| {
                mt.q[s]
                    .iter()
                    .map(|row| row.iter().map(|&a| conv(a)).collect())
                    .collect()
            })
            .collect();
        Scalar {
            m,
            q,
            cols: mt.cols,
            min_age: mt.min_age,
            w: t.lapse.iter().map(|&a| conv(a)).collect(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        b: &Book,
        d: &[f64],
        r: &[f64],
        s: usize,
        t_cols: usize,
        dynamic: bool,
        out: &mut [f64],
    ) {
        let (acq, maint, pct, per_claim, infl) =
            (300.0, 60.0 / self.m as f64, 0.02, 100.0, 0.02f64);
        let inflation: Vec<f64> = (0..t_cols)
            .map(|t| (1.0 + infl).powf(t as f64 / self.m as f64))
            .collect();
        for i in 0..b.len() {
            let p = b.get(i);
            let n = 12 * p.term as usize * self.m / 12;
            let prem = p.premium / self.m as f64;
            for sc in 0..s {
                let (ds, rs) = (&d[sc * t_cols..], &r[sc * t_cols..]);
                let mut inf = p.count;
                let mut pv = -acq * p.count;
                for t in 0..n {
                    let year = t * 12 / self.m / 12;
                    let age = (p.age + year as i32 - self.min_age) as usize;
                    let q = self.q[p.sex as usize][age][year.min(self.cols - 1)];
                    let mut w = self.w[year.min(self.w.len() - 1)];
                    if dynamic {
                        w = (w * (1.0 + 3.0 * (rs[t] - 0.03)).clamp(0.5, 2.0)).min(1.0);
                    }
                    let deaths = inf * q;
                    let lapses = (inf - deaths) * w;
                    let premiums = prem * inf;
                    let expenses = maint * inflation[t] * inf + pct * premiums + per_claim * deaths;
                    let comm = if year == 0 { 0.4 } else { 0.03 } * premiums;
                    pv += (premiums - expenses - comm) * ds[t] - p.sa * deaths * ds[t + 1];
                    inf = inf - deaths - lapses;
                }
                out[sc] += pv;
            }
        }
    }
}

/// `LIVECALC_BENCH=1,4 cargo bench ...` runs only the listed sections (for profiling).
fn wanted(section: u32) -> bool {
    std::env::var("LIVECALC_BENCH").map_or(true, |v| {
        v.split(',').any(|s| s.trim() == section.to_string())
    })
}

fn main() {
    println!("LiveCalc projection benchmarks — {}", machine());
    println!("(medians; engine = runChunk through the cxx bridge; one core unless stated)\n");
    let t = tables();
    let mut rng = Rng::new(2024);

    // 1. Deterministic monthly term book, 10,000 policies, terms 10-20 years, one scenario.
    if wanted(1) {
        let b = book(&mut rng, 10_000, TERM, 10, 20);
        let scen = Scenarios::flat_curve(0.03, 30);
        let mut v = views(&b, &scen, &pv_outputs(1), 10_000);
        let (wall, inner) = one_core(&t.config, &mut v, 41);
        let steps: usize = (0..b.len()).map(|i| 12 * b.policy_term[i] as usize).sum();
        println!("1. deterministic monthly term book, 10,000 policies x 1 scenario ({:.2}M policy-steps)", steps as f64 / 1e6);
        println!(
            "   engine {:.2} ms (runChunk's own clock {:.2} ms)    target <= 5 ms",
            wall * 1e3,
            inner * 1e3
        );
    }

    // 2./3. Monthly 20-year book, 10,000 policies x 1,000 scenarios x 240 steps.
    let b = book(&mut rng, 10_000, TERM, 20, 20);
    let esg = Scenarios::random_esg(&mut rng, 1000, 240, 12);
    let pss = 10_000.0 * 1000.0 * 240.0;
    if wanted(2) {
        let cfg = with(
            t.config.clone(),
            json!({ "dynamic_lapse": { "k": 3.0, "r_ref": 0.03, "lo": 0.5, "hi": 2.0 } }),
        );
        let outs = pv_outputs(1000);
        let mut v = views(&b, &esg, &outs, 1000);
        let (one, _) = one_core(&cfg, &mut v, 3);
        drop(v);
        let two = two_cores(&cfg, &b, &esg, &outs, 1000, 5);
        println!("\n2. dynamic lapse, 10,000 policies x 1,000 scenarios x 240 monthly steps (chunks of 1,000)");
        println!(
            "   1 core  {:.3} s  = {:.2e} policy-scenario-steps/s",
            one,
            pss / one
        );
        println!(
            "   2 cores {:.3} s  = {:.2e} policy-scenario-steps/s    target <= 0.5 s, >= 3.5e9/s",
            two,
            pss / two
        );
        for simd in ["avx2", "sse2"] {
            let mut v = views(&b, &esg, &outs, 1000);
            let (w, _) = one_core(&with(cfg.clone(), json!({ "simd": simd })), &mut v, 1);
            println!("   1 core, {simd} build: {w:.3} s (same bits, for comparison)");
        }
    }
    if wanted(3) {
        let outs = pv_outputs(1000);
        let mut v = views(&b, &esg, &outs, 1000);
        let (one, _) = one_core(&t.config, &mut v, 11);
        drop(v);
        let two = two_cores(&t.config, &b, &esg, &outs, 1000, 11);
        println!("\n3. scenario-independent decrements, 10,000 x 1,000 x 240 (project once, discount chunk totals)");
        println!(
            "   1 core  {:.1} ms, 2 cores {:.1} ms    target <= 100 ms",
            one * 1e3,
            two * 1e3
        );
        let mut with_ps = outs.clone();
        with_ps.push(col("policy_scenario.pv_net_cf", Shape::RowsBy(1000)));
        let mut v = views(&b, &esg, &with_ps, 1000);
        let (w, _) = one_core(&t.config, &mut v, 3);
        println!(
            "   with the optional policy x scenario output (10M PVs): {:.0} ms on 1 core",
            w * 1e3
        );
    }

    // 4. Annual, 10,000 policies x 1,000 scenarios, terms 10-30 years: engine vs plain loop.
    if wanted(4) {
        let b = book(&mut rng, 10_000, TERM, 10, 30);
        let esg = Scenarios::random_esg(&mut rng, 1000, 30, 1);
        let Scenarios::Esg {
            df,
            short_rate,
            cols,
            ..
        } = &esg
        else {
            unreachable!()
        };
        let annual = with(t.config.clone(), json!({ "timestep": "annual" }));
        let dynamic = with(
            annual.clone(),
            json!({ "dynamic_lapse": { "k": 3.0, "r_ref": 0.03, "lo": 0.5, "hi": 2.0 } }),
        );
        let outs = pv_outputs(1000);
        let projections = 10_000.0 * 1000.0;
        let scalar = Scalar::new(&t, 1);
        let mut results = Vec::new();
        for (label, cfg, dyn_on) in [
            ("dynamic lapse", &dynamic, true),
            ("static decrements", &annual, false),
        ] {
            let mut v = views(&b, &esg, &outs, 1000);
            let (eng, _) = one_core(cfg, &mut v, 5);
            let engine_net: Vec<f64> = {
                let mut s = vec![0.0; 1000];
                for (_, o) in &v {
                    for (a, x) in s.iter_mut().zip(o.column::<f64>("per_scenario.pv_net_cf")) {
                        *a += x;
                    }
                }
                s
            };
            let mut times = Vec::new();
            let mut plain = vec![0.0; 1000];
            for _ in 0..3 {
                plain.iter_mut().for_each(|x| *x = 0.0);
                let t0 = Instant::now();
                scalar.run(
                    &b,
                    df,
                    short_rate.as_ref().unwrap(),
                    1000,
                    *cols,
                    dyn_on,
                    &mut plain,
                );
                times.push(t0.elapsed().as_secs_f64());
            }
            let loop_s = median(times);
            let worst = engine_net
                .iter()
                .zip(&plain)
                .map(|(a, b)| ((a - b) / b.abs().max(1.0)).abs())
                .fold(0.0, f64::max);
            results.push((label, eng, loop_s, worst));
        }
        println!("\n4. annual, 10,000 policies x 1,000 scenarios, terms 10-30 years: engine vs a plain scalar loop");
        for (label, eng, loop_s, worst) in results {
            println!(
                "   {label:18} engine {:.1} ms = {:.2e} projections/s; plain loop {:.0} ms = {:.2e}/s; {:.0}x  (net PVs agree to {:.0e})",
                eng * 1e3,
                projections / eng,
                loop_s * 1e3,
                projections / loop_s,
                loop_s / eng,
                worst
            );
        }
        println!("   target: >= 20x the plain loop");
    }

    // 5. Re-initialize (the solver's inner loop): tables are cached by path.
    if wanted(5) {
        let mut e = engine("cpp_projection", &t.config).unwrap();
        let mut times = Vec::new();
        for k in 0..200 {
            let cfg = with(
                t.config.clone(),
                json!({ "multipliers": { "mortality": 1.0 + k as f64 * 1e-3 } }),
            )
            .to_string();
            let t0 = Instant::now();
            e.initialize(&cfg, None).unwrap();
            times.push(t0.elapsed().as_secs_f64());
        }
        println!(
            "\n5. re-initialize with a new multiplier (cached tables): {:.0} us",
            median(times) * 1e6
        );
    }

    // 6. The dynamic-lapse run through the real supervisor: two worker processes, the bus, the
    //    Parquet writer. Needs `cargo build --release -p livecalc-supervisor` beforehand.
    if wanted(6) {
        through_supervisor(&t);
    }
}

/// Writes a 10,000-policy, 1,000-scenario (20 years of annual rates, monthly steps) DAG with
/// dynamic lapse and runs it with `livecalc-supervisor run`, reading the node's times from the
/// manifest.
fn through_supervisor(t: &Tables) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let supervisor = root.join("target/release/livecalc-supervisor");
    println!("\n6. through the supervisor: dynamic lapse, 10,000 x 1,000 x 240, 2 workers, chunks of 1,000");
    if !supervisor.exists() {
        println!("   skipped: build livecalc-supervisor first (cargo build --release)");
        return;
    }
    let dir = TempDir::new("bench-dag");
    let mut rng = Rng::new(77);
    let mut mp =
        String::from("policy_id,age_at_entry,sex,policy_term,sum_assured,product,premium\n");
    for i in 0..10_000 {
        let sex = if rng.uniform() < 0.5 { "M" } else { "F" };
        mp.push_str(&format!(
            "{i},{},{sex},20,{:.0},term,{:.2}\n",
            rng.int(20, 60),
            rng.range(2e4, 5e5),
            rng.range(200.0, 3000.0)
        ));
    }
    dir.write("model_points.csv", &mp);
    let mut paths = String::from("scenario_id,year,rate\n");
    for s in 0..1000 {
        let mut r = rng.range(0.0, 0.06);
        for y in 0..20 {
            paths.push_str(&format!("{s},{y},{r:.6}\n"));
            r = (r + rng.range(-0.006, 0.006)).max(-0.005);
        }
    }
    dir.write("paths.csv", &paths);
    let mut config = t.config.clone();
    config["dynamic_lapse"] = json!({ "k": 3.0, "r_ref": 0.03, "lo": 0.5, "hi": 2.0 });
    let comps: serde_json::Map<String, Value> = COMPS
        .iter()
        .map(|c| {
            (
                c.to_string(),
                json!({ "dtype": "float64", "shape": [1000] }),
            )
        })
        .collect();
    let mut per_policy = serde_json::Map::new();
    per_policy.insert("policy_id".into(), json!("int64"));
    for c in COMPS {
        per_policy.insert(c.into(), json!("float64"));
    }
    let dag = json!({
        "version": 1,
        "data_sources": {
            "policies": { "path": "model_points.csv", "columns": {
                "policy_id": "int64", "age_at_entry": "int32", "sex": { "dtype": "category", "levels": ["M", "F"] },
                "policy_term": "int32", "sum_assured": "float64",
                "product": { "dtype": "category", "levels": ["term", "whole_life", "endowment"] }, "premium": "float64" } },
            "paths": { "path": "paths.csv", "columns": { "scenario_id": "int64", "year": "int64", "rate": "float64" } }
        },
        "engines": [{
            "id": "projection", "type": "cpp_projection", "inputs": { "policies": "policies", "paths": "paths" },
            "chunk_by": "policies", "config": config,
            "outputs": { "per_scenario": { "reduce": "sum", "columns": comps }, "per_policy": { "columns": per_policy } },
            "workers": 2, "chunk_size": 1000, "timeout_s": 120
        }],
        "output": ["projection.per_scenario", "projection.per_policy"]
    });
    let dag_path = dir.write("dag.json", &serde_json::to_string_pretty(&dag).unwrap());
    let (mut node, mut engine, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..6 {
        let out = dir.path().join(format!("out{rep}"));
        let t0 = Instant::now();
        let status = std::process::Command::new(&supervisor)
            .args(["run", &dag_path, "--out", out.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run livecalc-supervisor");
        let wall = t0.elapsed().as_secs_f64();
        if !status.success() {
            println!("   the supervisor failed ({status}); see {}", dag_path);
            return;
        }
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        let timings = &manifest["nodes"][0]["timings"];
        if rep > 0 {
            node.push(timings["wall_ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
            engine.push(timings["engine_ms"].as_f64().unwrap_or(f64::NAN) / 1e3);
            total.push(wall);
        }
    }
    let pss = 10_000.0 * 1000.0 * 240.0;
    let n = median(node);
    println!("   projection node {:.3} s wall = {:.2e} policy-scenario-steps/s (engine time summed over chunks {:.3} s)", n, pss / n, median(engine));
    println!(
        "   whole run, process start to Parquet files written: {:.3} s    target <= 0.5 s",
        median(total)
    );
}
