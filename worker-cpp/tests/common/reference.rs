//! A slow, obviously-correct projection written straight from the model definitions of issue 3:
//! one policy, one scenario, one step at a time, `powf` wherever the definition has a power,
//! discount factors recomputed from the raw scenario input by their defining formula. It
//! shares nothing with the engine but the definitions, and the same `Model` value produces
//! both the engine's config and the reference's parameters.

use super::{Book, Scenarios, ENDOWMENT, WHOLE_LIFE};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    Start,
    Mid,
    End,
}

impl Timing {
    pub fn word(self) -> &'static str {
        match self {
            Timing::Start => "start",
            Timing::Mid => "mid",
            Timing::End => "end",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Pricing {
    Scenario(usize),
    /// Spot rates of a pricing curve; `path` is where the test wrote them as CSV.
    Curve {
        spot: Vec<f64>,
        path: String,
    },
}

#[derive(Debug, Clone)]
pub enum Basis {
    Given,
    Equivalence { loading: f64, pricing: Pricing },
}

#[derive(Debug, Clone, Copy)]
pub struct Dynamic {
    pub k: f64,
    pub r_ref: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Annual mortality: rows by (sex, age), `cols` select columns (the last is ultimate).
#[derive(Debug, Clone)]
pub struct Mortality {
    pub by_sex: bool,
    pub min_age: i32,
    pub max_age: i32,
    pub cols: usize,
    /// q[sex][age - min_age][col]
    pub q: [Vec<Vec<f64>>; 2],
}

impl Mortality {
    /// A Gompertz-like table with a select period of `cols - 1` years (rates reduced in the
    /// first policy years), female rates lower, ending at q = 1.
    pub fn synthetic(min_age: i32, max_age: i32, cols: usize, by_sex: bool) -> Mortality {
        let mut q: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
        for (sex, table) in q.iter_mut().enumerate() {
            for age in min_age..=max_age {
                let base = (0.0004 * (0.085 * (age as f64 - 20.0)).exp()).min(1.0);
                let base = if by_sex && sex == 1 { base * 0.8 } else { base };
                let mut row = Vec::new();
                for c in 0..cols {
                    let sel = if c + 1 == cols {
                        1.0
                    } else {
                        0.6 + 0.4 * c as f64 / cols as f64
                    };
                    row.push(if age == max_age {
                        1.0
                    } else {
                        (base * sel).min(1.0)
                    });
                }
                table.push(row);
            }
        }
        Mortality {
            by_sex,
            min_age,
            max_age,
            cols,
            q,
        }
    }

    pub fn flat(min_age: i32, max_age: i32, rate: f64) -> Mortality {
        let rows: Vec<Vec<f64>> = (min_age..=max_age).map(|_| vec![rate]).collect();
        Mortality {
            by_sex: false,
            min_age,
            max_age,
            cols: 1,
            q: [rows.clone(), rows],
        }
    }

    pub fn annual(&self, sex: i32, age: i32, policy_year: i32) -> f64 {
        let c = (policy_year as usize).min(self.cols - 1);
        self.q[sex as usize][(age - self.min_age) as usize][c]
    }

    pub fn csv(&self) -> String {
        let mut s = String::from("age");
        if self.by_sex {
            s.push_str(",sex");
        }
        if self.cols == 1 {
            s.push_str(",qx");
        } else {
            for c in 0..self.cols {
                s.push_str(&format!(",{c}"));
            }
        }
        s.push('\n');
        for sex in 0..if self.by_sex { 2 } else { 1 } {
            for age in self.min_age..=self.max_age {
                s.push_str(&age.to_string());
                if self.by_sex {
                    s.push_str(if sex == 0 { ",M" } else { ",F" });
                }
                for v in &self.q[sex][(age - self.min_age) as usize] {
                    s.push_str(&format!(",{v:e}"));
                }
                s.push('\n');
            }
        }
        s
    }
}

pub fn lapse_csv(rates: &[f64]) -> String {
    let mut s = String::from("duration,rate\n");
    for (d, r) in rates.iter().enumerate() {
        s.push_str(&format!("{d},{r:e}\n"));
    }
    s
}

pub fn curve_csv(spot: &[f64]) -> String {
    let mut s = String::from("year,spot\n");
    for (y, r) in spot.iter().enumerate() {
        s.push_str(&format!("{y},{r:e}\n"));
    }
    s
}

#[derive(Debug, Clone)]
pub struct Model {
    pub m: usize,
    pub mortality: Mortality,
    pub lapse: Vec<f64>,
    pub acquisition: f64,
    pub maintenance: f64,
    pub premium_rate: f64,
    pub per_claim: f64,
    pub inflation: f64,
    pub comm_first: f64,
    pub comm_renewal: f64,
    pub mult_mortality: f64,
    pub mult_lapse: f64,
    pub mult_expense: f64,
    pub mult_premium: f64,
    /// premiums, claims, expenses, commissions
    pub timing: [Timing; 4],
    pub basis: Basis,
    pub dynamic: Option<Dynamic>,
    pub whole_life_max_age: Option<i32>,
    pub esg_steps_per_year: Option<usize>,
}

impl Model {
    pub fn new(m: usize, mortality: Mortality, lapse: Vec<f64>) -> Model {
        Model {
            m,
            mortality,
            lapse,
            acquisition: 0.0,
            maintenance: 0.0,
            premium_rate: 0.0,
            per_claim: 0.0,
            inflation: 0.0,
            comm_first: 0.0,
            comm_renewal: 0.0,
            mult_mortality: 1.0,
            mult_lapse: 1.0,
            mult_expense: 1.0,
            mult_premium: 1.0,
            timing: [Timing::Start, Timing::End, Timing::Start, Timing::Start],
            basis: Basis::Given,
            dynamic: None,
            whole_life_max_age: None,
            esg_steps_per_year: None,
        }
    }

    /// The engine config for this model; the tables must already be written at these paths.
    pub fn config(&self, mortality_path: &str, lapse_path: Option<&str>) -> Value {
        let mut c = json!({
            "mortality": mortality_path,
            "timestep": if self.m == 12 { "monthly" } else { "annual" },
            "expenses": {
                "acquisition": self.acquisition, "maintenance": self.maintenance,
                "premium_rate": self.premium_rate, "per_claim": self.per_claim, "inflation": self.inflation
            },
            "commission": { "first_year_rate": self.comm_first, "renewal_rate": self.comm_renewal },
            "multipliers": {
                "mortality": self.mult_mortality, "lapse": self.mult_lapse,
                "expense": self.mult_expense, "premium": self.mult_premium
            },
            "timing": {
                "premiums": self.timing[0].word(), "claims": self.timing[1].word(),
                "expenses": self.timing[2].word(), "commissions": self.timing[3].word()
            }
        });
        let o = c.as_object_mut().unwrap();
        if let Some(l) = lapse_path {
            o.insert("lapse".into(), json!(l));
        }
        if let Basis::Equivalence { loading, pricing } = &self.basis {
            o.insert("premium_basis".into(), json!("equivalence"));
            let p = match pricing {
                Pricing::Scenario(s) => json!({ "loading": loading, "scenario": s }),
                Pricing::Curve { path, .. } => json!({ "loading": loading, "curve": path }),
            };
            o.insert("pricing".into(), p);
        }
        if let Some(d) = self.dynamic {
            o.insert(
                "dynamic_lapse".into(),
                json!({ "k": d.k, "r_ref": d.r_ref, "lo": d.lo, "hi": d.hi }),
            );
        }
        if let Some(w) = self.whole_life_max_age {
            o.insert("whole_life_max_age".into(), json!(w));
        }
        if let Some(e) = self.esg_steps_per_year {
            o.insert("scenario_steps_per_year".into(), json!(e));
        }
        c
    }

    fn per_step(&self, annual: f64) -> f64 {
        if self.m == 1 {
            annual
        } else {
            1.0 - (1.0 - annual).powf(1.0 / self.m as f64)
        }
    }

    pub fn steps(&self, p: &super::P) -> usize {
        let h = 12 / self.m as i32;
        if p.product == WHOLE_LIFE {
            let omega = self.whole_life_max_age.unwrap_or(self.mortality.max_age);
            ((12 * (omega + 1 - p.age) - p.dur) / h) as usize
        } else {
            ((12 * p.term - p.dur) / h) as usize
        }
    }
}

/// One deterministic scenario by its defining formulas: D(t) at step boundaries and the short
/// rate r(t) over step t.
#[derive(Debug, Clone)]
pub struct Path {
    pub d: Vec<f64>,
    pub r: Vec<f64>,
}

impl Path {
    pub fn df(&self, t: usize, timing: Timing) -> f64 {
        match timing {
            Timing::Start => self.d[t],
            Timing::Mid => (self.d[t] * self.d[t + 1]).sqrt(),
            Timing::End => self.d[t + 1],
        }
    }
}

pub fn curve_path(spot: &[f64], m: usize) -> Path {
    let t_max = spot.len() * m - 1;
    let d = (0..=t_max)
        .map(|t| (1.0 + spot[t / m]).powf(-(t as f64) / m as f64))
        .collect();
    let r = (0..t_max).map(|t| spot[t / m]).collect();
    Path { d, r }
}

pub fn paths_of(scen: &Scenarios, model: &Model) -> Vec<Path> {
    let m = model.m;
    match scen {
        Scenarios::Esg {
            s,
            cols,
            df,
            short_rate,
        } => {
            let stride = model.esg_steps_per_year.unwrap_or(m) / m;
            let t_max = (cols - 1) / stride;
            (0..*s)
                .map(|sc| Path {
                    d: (0..=t_max).map(|t| df[sc * cols + t * stride]).collect(),
                    r: (0..t_max)
                        .map(|t| {
                            short_rate
                                .as_ref()
                                .map_or(0.0, |r| r[sc * cols + t * stride])
                        })
                        .collect(),
                })
                .collect()
        }
        Scenarios::Curve { spot, .. } => vec![curve_path(spot, m)],
        Scenarios::Paths {
            scenario_id,
            year,
            rate,
        } => {
            let mut ids = scenario_id.clone();
            ids.sort();
            ids.dedup();
            ids.iter()
                .map(|id| {
                    let mut rows: Vec<(i64, f64)> = (0..rate.len())
                        .filter(|&i| scenario_id[i] == *id)
                        .map(|i| (year[i], rate[i]))
                        .collect();
                    rows.sort_by_key(|r| r.0);
                    let rates: Vec<f64> = rows.iter().map(|r| r.1).collect();
                    let t_max = rates.len() * m;
                    let d = (0..=t_max)
                        .map(|t| {
                            let (k, j) = (t / m, t % m);
                            let whole: f64 = rates[..k].iter().map(|r| 1.0 / (1.0 + r)).product();
                            if j == 0 {
                                whole
                            } else {
                                whole * (1.0 + rates[k]).powf(-(j as f64) / m as f64)
                            }
                        })
                        .collect();
                    let r = (0..t_max).map(|t| rates[t / m]).collect();
                    Path { d, r }
                })
                .collect()
        }
    }
}

/// PV components [net, premiums, claims, expenses, commissions, maturities] and undiscounted
/// cash flows by step [premiums, claims, expenses, commissions, maturities, net, in force,
/// deaths, lapses] of one policy under one scenario.
pub struct Projection {
    pub pv: [f64; 6],
    pub cf: Vec<[f64; 9]>,
}

pub fn project(model: &Model, p: &super::P, premium_step: f64, path: &Path) -> Projection {
    let m = model.m;
    let h = 12 / m as i32;
    let n = model.steps(p);
    let mut inf = p.count;
    let mut pv = [0.0; 6];
    let mut cf = vec![[0.0; 9]; n];
    for (t, cft) in cf.iter_mut().enumerate() {
        let months = p.dur + h * t as i32;
        let year = months / 12;
        let age = p.age + year;
        let q_ann = (model.mortality.annual(p.sex, age, year) * model.mult_mortality).min(1.0);
        let q = model.per_step(q_ann);
        let l_ann = if model.lapse.is_empty() {
            0.0
        } else {
            (model.lapse[(year as usize).min(model.lapse.len() - 1)] * model.mult_lapse).min(1.0)
        };
        let mut w = model.per_step(l_ann);
        if let Some(d) = model.dynamic {
            let f = (1.0 + d.k * (path.r[t] - d.r_ref)).max(d.lo).min(d.hi);
            w = (w * f).min(1.0);
        }
        let deaths = inf * q;
        let lapses = (inf - deaths) * w;
        let prem = premium_step * inf;
        let claims = p.sa * deaths;
        let inflation = (1.0 + model.inflation).powf(t as f64 / m as f64);
        let exp = model.mult_expense
            * (model.maintenance / m as f64 * inflation * inf
                + model.premium_rate * prem
                + model.per_claim * deaths);
        let acq = if t == 0 && p.dur == 0 {
            model.mult_expense * model.acquisition * p.count
        } else {
            0.0
        };
        let comm = if year == 0 {
            model.comm_first
        } else {
            model.comm_renewal
        } * prem;
        pv[1] += prem * path.df(t, model.timing[0]);
        pv[2] += claims * path.df(t, model.timing[1]);
        pv[3] += exp * path.df(t, model.timing[2]) + acq; // acquisition is paid at time 0
        pv[4] += comm * path.df(t, model.timing[3]);
        *cft = [prem, claims, exp + acq, comm, 0.0, 0.0, inf, deaths, lapses];
        inf = inf - deaths - lapses;
    }
    if p.product == ENDOWMENT {
        let mat = p.sa * inf;
        pv[5] = mat * path.d[n];
        cf[n - 1][4] = mat;
    }
    for c in cf.iter_mut() {
        c[5] = c[0] - c[1] - c[2] - c[3] - c[4];
    }
    pv[0] = pv[1] - pv[2] - pv[3] - pv[4] - pv[5];
    Projection { pv, cf }
}

pub fn round_half_even_cents(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

pub fn premium_step(model: &Model, p: &super::P, paths: &[Path]) -> f64 {
    match &model.basis {
        Basis::Given => p.premium * model.mult_premium / model.m as f64,
        Basis::Equivalence { loading, pricing } => {
            let path = match pricing {
                Pricing::Scenario(s) => paths[*s].clone(),
                Pricing::Curve { spot, .. } => curve_path(spot, model.m),
            };
            // PV of the in-force at the premium timing is the PV of premiums of 1 per step.
            let unit = project(model, p, 1.0, &path);
            let ben = unit.pv[2] + unit.pv[5];
            model.mult_premium * round_half_even_cents((1.0 + loading) * ben / unit.pv[1])
        }
    }
}

#[derive(Debug, Default)]
pub struct Expected {
    pub premium_step: Vec<f64>,
    /// Mean over scenarios, by policy.
    pub per_policy: Vec<[f64; 6]>,
    /// Sum over policies, by scenario.
    pub per_scenario: Vec<[f64; 6]>,
    /// Net PV by policy and scenario.
    pub policy_scenario: Vec<Vec<f64>>,
    /// Sum over policies of the mean over scenarios, by step.
    pub cashflows: Vec<[f64; 9]>,
    /// Sum of |component| over components, by policy and by scenario: the scale of a net PV.
    pub policy_scale: Vec<f64>,
    pub scenario_scale: Vec<f64>,
}

pub fn expected(model: &Model, book: &Book, scen: &Scenarios, cf_steps: usize) -> Expected {
    let paths = paths_of(scen, model);
    let s = paths.len();
    let mut e = Expected {
        per_scenario: vec![[0.0; 6]; s],
        scenario_scale: vec![0.0; s],
        cashflows: vec![[0.0; 9]; cf_steps],
        ..Expected::default()
    };
    for i in 0..book.len() {
        let p = book.get(i);
        let prem = premium_step(model, &p, &paths);
        e.premium_step.push(prem);
        let mut mean = [0.0; 6];
        let mut row = Vec::with_capacity(s);
        let mut scale = 0.0;
        for (sc, path) in paths.iter().enumerate() {
            let pr = project(model, &p, prem, path);
            for (c, v) in pr.pv.iter().enumerate() {
                mean[c] += v / s as f64;
                e.per_scenario[sc][c] += v;
            }
            let mag: f64 = pr.pv[1..].iter().map(|v| v.abs()).sum();
            e.scenario_scale[sc] += mag;
            scale += mag / s as f64;
            row.push(pr.pv[0]);
            for (t, c) in pr.cf.iter().enumerate() {
                for (acc, v) in e.cashflows[t].iter_mut().zip(c) {
                    *acc += v / s as f64;
                }
            }
        }
        e.per_policy.push(mean);
        e.policy_scale.push(scale);
        e.policy_scenario.push(row);
    }
    e
}
