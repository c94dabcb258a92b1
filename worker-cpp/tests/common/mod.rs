//! Test harness for the projection engines: builds the exact views a worker hands to
//! `runChunk` (through `OwnedView`), drives the real C++ engine through the real cxx bridge, and
//! reduces per-chunk outputs the way the supervisor does (slots added in chunk order).
#![allow(dead_code)]

pub mod reference;

use livecalc_protocol::owned_view::{ColumnData, OwnedView};
use livecalc_protocol::{ChunkSpan, DType, EngineError, EvaluationReport, ExecutionResult};
use livecalc_worker_cpp::CppEngine;
use livecalc_worker_host::{Engine, Evaluator, InputBuffer, OutputBuffer};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

// ---- random numbers (no dependency, reproducible) ----------------------------------------------

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    pub fn int(&mut self, lo: i64, hi_inclusive: i64) -> i64 {
        lo + (self.next_u64() % (hi_inclusive - lo + 1) as u64) as i64
    }
}

// ---- temporary files -----------------------------------------------------------------------------

#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "livecalc-proj-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- model points ----------------------------------------------------------------------------------

pub const TERM: i32 = 0;
pub const WHOLE_LIFE: i32 = 1;
pub const ENDOWMENT: i32 = 2;

#[derive(Debug, Clone, Default)]
pub struct Book {
    pub policy_id: Vec<i64>,
    pub age_at_entry: Vec<i32>,
    pub sex: Vec<i32>,
    pub policy_term: Vec<i32>,
    pub sum_assured: Vec<f64>,
    pub product: Vec<i32>,
    pub policy_count: Option<Vec<f64>>,
    pub premium: Option<Vec<f64>>,
    pub duration_mth: Option<Vec<i32>>,
}

/// One policy, for building small books by hand.
#[derive(Debug, Clone, Copy)]
pub struct P {
    pub age: i32,
    pub sex: i32,
    pub term: i32,
    pub sa: f64,
    pub product: i32,
    pub count: f64,
    pub premium: f64,
    pub dur: i32,
}

impl Default for P {
    fn default() -> P {
        P {
            age: 40,
            sex: 0,
            term: 10,
            sa: 100_000.0,
            product: TERM,
            count: 1.0,
            premium: 1_000.0,
            dur: 0,
        }
    }
}

impl Book {
    pub fn of(policies: &[P]) -> Book {
        let mut b = Book {
            policy_count: Some(vec![]),
            premium: Some(vec![]),
            duration_mth: Some(vec![]),
            ..Book::default()
        };
        for (i, p) in policies.iter().enumerate() {
            b.push(1000 + i as i64, p);
        }
        b
    }

    pub fn push(&mut self, id: i64, p: &P) {
        self.policy_id.push(id);
        self.age_at_entry.push(p.age);
        self.sex.push(p.sex);
        self.policy_term.push(p.term);
        self.sum_assured.push(p.sa);
        self.product.push(p.product);
        if let Some(v) = &mut self.policy_count {
            v.push(p.count);
        }
        if let Some(v) = &mut self.premium {
            v.push(p.premium);
        }
        if let Some(v) = &mut self.duration_mth {
            v.push(p.dur);
        }
    }

    pub fn len(&self) -> usize {
        self.policy_id.len()
    }

    pub fn get(&self, i: usize) -> P {
        P {
            age: self.age_at_entry[i],
            sex: self.sex[i],
            term: self.policy_term[i],
            sa: self.sum_assured[i],
            product: self.product[i],
            count: self.policy_count.as_ref().map_or(1.0, |v| v[i]),
            premium: self.premium.as_ref().map_or(0.0, |v| v[i]),
            dur: self.duration_mth.as_ref().map_or(0, |v| v[i]),
        }
    }

    pub fn columns(&self, r: Range<usize>) -> Vec<ColumnData> {
        let n = [r.len() as u64];
        let mut c = vec![
            ColumnData::new("policies.policy_id", &n, &self.policy_id[r.clone()]),
            ColumnData::new("policies.age_at_entry", &n, &self.age_at_entry[r.clone()]),
            ColumnData::new("policies.sex", &n, &self.sex[r.clone()]),
            ColumnData::new("policies.policy_term", &n, &self.policy_term[r.clone()]),
            ColumnData::new("policies.sum_assured", &n, &self.sum_assured[r.clone()]),
            ColumnData::new("policies.product", &n, &self.product[r.clone()]),
        ];
        if let Some(v) = &self.policy_count {
            c.push(ColumnData::new("policies.policy_count", &n, &v[r.clone()]));
        }
        if let Some(v) = &self.premium {
            c.push(ColumnData::new("policies.premium", &n, &v[r.clone()]));
        }
        if let Some(v) = &self.duration_mth {
            c.push(ColumnData::new("policies.duration_mth", &n, &v[r.clone()]));
        }
        c
    }
}

// ---- scenarios -------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Scenarios {
    /// ESG output: discount factors [s, cols] at the ESG's step boundaries, optional short rate.
    Esg {
        s: usize,
        cols: usize,
        df: Vec<f64>,
        short_rate: Option<Vec<f64>>,
    },
    Curve {
        year: Vec<i64>,
        spot: Vec<f64>,
    },
    Paths {
        scenario_id: Vec<i64>,
        year: Vec<i64>,
        rate: Vec<f64>,
    },
}

impl Scenarios {
    pub fn flat_curve(rate: f64, years: usize) -> Scenarios {
        Scenarios::Curve {
            year: (0..years as i64).collect(),
            spot: vec![rate; years],
        }
    }

    pub fn count(&self) -> usize {
        match self {
            Scenarios::Esg { s, .. } => *s,
            Scenarios::Curve { .. } => 1,
            Scenarios::Paths { scenario_id, .. } => {
                let mut ids = scenario_id.clone();
                ids.sort();
                ids.dedup();
                ids.len()
            }
        }
    }

    pub fn columns(&self) -> Vec<ColumnData> {
        match self {
            Scenarios::Esg {
                s,
                cols,
                df,
                short_rate,
            } => {
                let shape = [*s as u64, *cols as u64];
                let mut c = vec![ColumnData::new("scenarios.discount_factor", &shape, df)];
                if let Some(r) = short_rate {
                    c.push(ColumnData::new("scenarios.short_rate", &shape, r));
                }
                c
            }
            Scenarios::Curve { year, spot } => {
                let n = [year.len() as u64];
                vec![
                    ColumnData::new("curve.year", &n, year),
                    ColumnData::new("curve.spot", &n, spot),
                ]
            }
            Scenarios::Paths {
                scenario_id,
                year,
                rate,
            } => {
                let n = [year.len() as u64];
                vec![
                    ColumnData::new("paths.scenario_id", &n, scenario_id),
                    ColumnData::new("paths.year", &n, year),
                    ColumnData::new("paths.rate", &n, rate),
                ]
            }
        }
    }

    /// Random ESG-like scenarios: a mean-reverting short rate per step and the discount factors
    /// it implies, `steps` steps at `per_year` steps a year.
    pub fn random_esg(rng: &mut Rng, s: usize, steps: usize, per_year: usize) -> Scenarios {
        let cols = steps + 1;
        let mut df = vec![0.0; s * cols];
        let mut sr = vec![0.0; s * cols];
        let dt = 1.0 / per_year as f64;
        for sc in 0..s {
            let mut r = rng.range(0.0, 0.06);
            let mut d = 1.0;
            for j in 0..cols {
                df[sc * cols + j] = d;
                sr[sc * cols + j] = r;
                d *= (-r * dt).exp();
                r += 0.3 * (0.035 - r) * dt + 0.01 * dt.sqrt() * (rng.uniform() - 0.5) * 3.4;
            }
        }
        Scenarios::Esg {
            s,
            cols,
            df,
            short_rate: Some(sr),
        }
    }
}

// ---- outputs ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A per-chunk slot of this length, summed over chunks in chunk order.
    PerChunk(usize),
    /// One value per policy.
    Rows,
    /// `width` values per policy.
    RowsBy(usize),
}

#[derive(Debug, Clone)]
pub struct OutCol {
    pub name: String,
    pub shape: Shape,
    pub dtype: DType,
}

pub fn col(name: &str, shape: Shape) -> OutCol {
    let dtype = if name.ends_with(".policy_id") {
        DType::Int64
    } else {
        DType::Float64
    };
    OutCol {
        name: name.to_string(),
        shape,
        dtype,
    }
}

pub const COMPS: [&str; 6] = [
    "pv_net_cf",
    "pv_premiums",
    "pv_claims",
    "pv_expenses",
    "pv_commissions",
    "pv_maturities",
];
pub const CF_COLS: [&str; 9] = [
    "premiums",
    "claims",
    "expenses",
    "commissions",
    "maturities",
    "net_cf",
    "in_force",
    "deaths",
    "lapses",
];

/// Every output the engine offers: per_scenario and per_policy components, policy x scenario
/// net PV, and `cf_steps` steps of cash flows.
pub fn all_outputs(s: usize, cf_steps: usize) -> Vec<OutCol> {
    let mut v = Vec::new();
    for c in COMPS {
        v.push(col(&format!("per_scenario.{c}"), Shape::PerChunk(s)));
    }
    v.push(col("per_policy.policy_id", Shape::Rows));
    for c in COMPS {
        v.push(col(&format!("per_policy.{c}"), Shape::Rows));
    }
    v.push(col("per_policy.premium", Shape::Rows));
    v.push(col("per_policy.premium_per_step", Shape::Rows));
    v.push(col("policy_scenario.pv_net_cf", Shape::RowsBy(s)));
    for c in CF_COLS {
        v.push(col(&format!("cashflows.{c}"), Shape::PerChunk(cf_steps)));
    }
    v
}

#[derive(Debug, Default, Clone)]
pub struct Results {
    pub f: BTreeMap<String, Vec<f64>>,
    pub i: BTreeMap<String, Vec<i64>>,
    pub exec: Vec<ExecutionResult>,
}

impl Results {
    pub fn f(&self, name: &str) -> &[f64] {
        self.f
            .get(name)
            .unwrap_or_else(|| panic!("no output {name}"))
    }
    pub fn one(&self, name: &str) -> f64 {
        let v = self.f(name);
        assert_eq!(v.len(), 1, "{name} has {} values", v.len());
        v[0]
    }
}

// ---- running the engine ----------------------------------------------------------------------------

pub fn engine(kind: &str, config: &serde_json::Value) -> Result<CppEngine, EngineError> {
    let mut e = livecalc_worker_cpp::create(kind)?;
    e.initialize(&config.to_string(), None)?;
    Ok(e)
}

fn zeros(c: &OutCol, rows: usize) -> ColumnData {
    let shape: Vec<u64> = match c.shape {
        Shape::PerChunk(n) => vec![n as u64],
        Shape::Rows => vec![rows as u64],
        Shape::RowsBy(w) => vec![rows as u64, w as u64],
    };
    match c.dtype {
        DType::Int64 => ColumnData::zeros::<i64>(&c.name, &shape),
        DType::Int32 => ColumnData::zeros::<i32>(&c.name, &shape),
        _ => ColumnData::zeros::<f64>(&c.name, &shape),
    }
}

/// The projection engines never ask for re-evaluation; a test host has no supervisor to ask.
struct NoSupervisor;

impl Evaluator for NoSupervisor {
    fn evaluate(&mut self, _params: &[(String, f64)]) -> Result<EvaluationReport, String> {
        Err("no supervisor in an engine test".into())
    }
}

/// Run one view pair through the engine.
pub fn run_view(
    e: &mut CppEngine,
    input: &OwnedView,
    output: &mut OwnedView,
) -> Result<ExecutionResult, EngineError> {
    let ib = InputBuffer {
        ptr: input.as_ptr(),
        len: input.len(),
    };
    let ob = OutputBuffer {
        ptr: output.as_mut_ptr(),
        len: output.len(),
    };
    e.run_chunk(Some(ib), ob, &mut NoSupervisor)
}

/// Views of one chunk: the book's rows `r` plus the whole scenario input.
pub fn chunk_views(
    book: &Book,
    scen: &Scenarios,
    outs: &[OutCol],
    index: u64,
    r: Range<usize>,
) -> (OwnedView, OwnedView) {
    let span = ChunkSpan {
        index,
        row_start: r.start as u64,
        row_count: r.len() as u64,
        total_rows: book.len() as u64,
    };
    let mut cols = book.columns(r.clone());
    cols.extend(scen.columns());
    let input = OwnedView::build(span, cols);
    let output = OwnedView::build(span, outs.iter().map(|c| zeros(c, r.len())).collect());
    (input, output)
}

/// Run the book through an initialized engine in chunks of `chunk` policies, reducing the
/// per-chunk outputs like the supervisor: element-wise sums of the slots in chunk order.
pub fn run_chunks(
    e: &mut CppEngine,
    book: &Book,
    scen: &Scenarios,
    outs: &[OutCol],
    chunk: usize,
) -> Result<Results, EngineError> {
    let mut res = Results::default();
    for c in outs {
        match c.dtype {
            DType::Int64 => {
                res.i.insert(c.name.clone(), Vec::new());
            }
            _ => {
                let init = match c.shape {
                    Shape::PerChunk(n) => vec![0.0; n],
                    _ => Vec::new(),
                };
                res.f.insert(c.name.clone(), init);
            }
        }
    }
    let n = book.len();
    let chunks = if n == 0 { 1 } else { n.div_ceil(chunk) };
    for k in 0..chunks {
        let r = (k * chunk).min(n)..((k + 1) * chunk).min(n);
        let (input, mut output) = chunk_views(book, scen, outs, k as u64, r);
        res.exec.push(run_view(e, &input, &mut output)?);
        for c in outs {
            match (c.dtype, c.shape) {
                (DType::Int64, _) => res
                    .i
                    .get_mut(&c.name)
                    .unwrap()
                    .extend(output.column::<i64>(&c.name)),
                (_, Shape::PerChunk(_)) => {
                    let slot = output.column::<f64>(&c.name);
                    for (acc, v) in res.f.get_mut(&c.name).unwrap().iter_mut().zip(slot) {
                        *acc += v;
                    }
                }
                _ => res
                    .f
                    .get_mut(&c.name)
                    .unwrap()
                    .extend(output.column::<f64>(&c.name)),
            }
        }
    }
    Ok(res)
}

pub fn run(
    config: &serde_json::Value,
    book: &Book,
    scen: &Scenarios,
    outs: &[OutCol],
    chunk: usize,
) -> Result<Results, EngineError> {
    let mut e = engine("cpp_projection", config)?;
    run_chunks(&mut e, book, scen, outs, chunk)
}

// ---- comparisons -----------------------------------------------------------------------------------

/// |a - b| <= tol * max(scale, |b|): relative, but measured against the size of the flows
/// a quantity is made of when it is a difference of them (a net PV can be near zero).
#[track_caller]
pub fn assert_close(what: &str, a: f64, b: f64, tol: f64, scale: f64) {
    let bound = tol * scale.max(b.abs());
    assert!(
        (a - b).abs() <= bound || (a.is_nan() && b.is_nan()),
        "{what}: engine {a:.17e} vs expected {b:.17e} (diff {:.3e}, allowed {bound:.3e})",
        (a - b).abs()
    );
}

#[track_caller]
pub fn assert_rel(what: &str, a: f64, b: f64, tol: f64) {
    assert_close(what, a, b, tol, 0.0)
}

/// Bit-for-bit equality of two result sets.
#[track_caller]
pub fn assert_identical(what: &str, a: &Results, b: &Results) {
    assert_eq!(
        a.f.keys().collect::<Vec<_>>(),
        b.f.keys().collect::<Vec<_>>(),
        "{what}: outputs differ"
    );
    for (k, va) in &a.f {
        let vb = &b.f[k];
        assert_eq!(va.len(), vb.len(), "{what}: {k} lengths");
        for (j, (x, y)) in va.iter().zip(vb).enumerate() {
            assert!(
                x.to_bits() == y.to_bits(),
                "{what}: {k}[{j}] {x:e} vs {y:e} differ in the last bits"
            );
        }
    }
    assert_eq!(a.i, b.i, "{what}: integer outputs differ");
}

pub fn error_text(e: &EngineError) -> String {
    format!("{}: {}", e.class, e.message)
}

#[track_caller]
pub fn assert_error<T: std::fmt::Debug>(
    r: Result<T, EngineError>,
    class: &str,
    needles: &[&str],
) -> String {
    let e = r.expect_err("the engine accepted bad input");
    let text = error_text(&e);
    assert_eq!(e.class, class, "wrong error class: {text}");
    for n in needles {
        assert!(text.contains(n), "error message lacks '{n}': {text}");
    }
    text
}
