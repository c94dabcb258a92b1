//! The engine against the slow reference loop of `common/reference.rs`, on random books of
//! 1,200 policies (every product, both sexes, new and in-force business, policy counts) under
//! several scenario sets, in every model configuration that selects a different code path:
//! monthly / annual, static / dynamic lapse, each scenario input form, given / equivalence
//! premiums, every timing. Agreement is to 1e-9 relative on every output column.

mod common;

use common::reference::{
    self, curve_csv, lapse_csv, Basis, Dynamic, Model, Mortality, Pricing, Timing,
};
use common::*;

const BOOK: usize = 1200;

fn random_book(rng: &mut Rng, n: usize, m: usize, omega: i32) -> Book {
    let mut b = Book::of(&[]);
    for i in 0..n {
        let product = rng.int(0, 2) as i32;
        let age = rng.int(18, 65) as i32;
        let term = if product == WHOLE_LIFE {
            rng.int(0, 3) as i32
        } else {
            rng.int(1, 30) as i32
        };
        let months = if product == WHOLE_LIFE {
            12 * (omega + 1 - age)
        } else {
            12 * term
        };
        let dur = if rng.uniform() < 0.35 {
            0
        } else {
            let d = rng.int(0, (months - 1) as i64) as i32;
            if m == 1 {
                d - d % 12
            } else {
                d
            }
        };
        let p = P {
            age,
            sex: rng.int(0, 1) as i32,
            term,
            sa: rng.range(1e4, 1e6).round(),
            product,
            count: if rng.uniform() < 0.5 {
                1.0
            } else {
                rng.range(0.5, 40.0)
            },
            premium: rng.range(100.0, 8000.0),
            dur,
        };
        b.push(10_000 + i as i64, &p);
    }
    b
}

fn rich_model(m: usize, lapse: Vec<f64>) -> Model {
    let mut model = Model::new(m, Mortality::synthetic(15, 110, 3, true), lapse);
    model.acquisition = 350.0;
    model.maintenance = 72.0;
    model.premium_rate = 0.025;
    model.per_claim = 150.0;
    model.inflation = 0.021;
    model.comm_first = 0.45;
    model.comm_renewal = 0.03;
    model.mult_mortality = 1.07;
    model.mult_lapse = 0.93;
    model.mult_expense = 1.1;
    model.mult_premium = 1.02;
    model
}

fn monthly_lapse() -> Vec<f64> {
    vec![0.12, 0.10, 0.08, 0.07, 0.06, 0.05, 0.045, 0.04, 0.035, 0.03]
}

/// Run the engine and the reference and compare every output.
fn check(label: &str, model: &Model, book: &Book, scen: &Scenarios, chunk: usize) {
    let dir = TempDir::new("ref");
    let mort = dir.write("mortality.csv", &model.mortality.csv());
    let lapse = (!model.lapse.is_empty()).then(|| dir.write("lapse.csv", &lapse_csv(&model.lapse)));
    let mut model = model.clone();
    if let Basis::Equivalence {
        pricing: Pricing::Curve { spot, path },
        ..
    } = &mut model.basis
    {
        *path = dir.write("pricing_curve.csv", &curve_csv(spot));
    }
    let n_max = (0..book.len())
        .map(|i| model.steps(&book.get(i)))
        .max()
        .unwrap();
    let s = scen.count();
    let config = model.config(&mort, lapse.as_deref());
    let want = reference::expected(&model, book, scen, n_max);
    // With and without the cash-flow output: the dynamic-lapse engine has a kernel that only
    // runs when no cash flows are asked for.
    let every = all_outputs(s, n_max);
    let pv_only: Vec<OutCol> = every
        .iter()
        .filter(|c| !c.name.starts_with("cashflows"))
        .cloned()
        .collect();
    for outs in [&every, &pv_only] {
        let got = run(&config, book, scen, outs, chunk)
            .unwrap_or_else(|e| panic!("{label}: {}", error_text(&e)));
        compare(label, &model, book, s, n_max, &got, &want);
    }
}

fn compare(
    label: &str,
    model: &Model,
    book: &Book,
    s: usize,
    n_max: usize,
    got: &Results,
    want: &reference::Expected,
) {
    let tol = 1e-9;

    assert_eq!(
        got.i["per_policy.policy_id"], book.policy_id,
        "{label}: policy ids"
    );
    for i in 0..book.len() {
        let what = |c: &str| format!("{label}: policy row {i} {c}");
        assert_rel(
            &what("premium_per_step"),
            got.f("per_policy.premium_per_step")[i],
            want.premium_step[i],
            tol,
        );
        assert_rel(
            &what("premium"),
            got.f("per_policy.premium")[i],
            want.premium_step[i] * model.m as f64,
            tol,
        );
        for (c, name) in COMPS.iter().enumerate() {
            let scale = if c == 0 { want.policy_scale[i] } else { 0.0 };
            assert_close(
                &what(name),
                got.f(&format!("per_policy.{name}"))[i],
                want.per_policy[i][c],
                tol,
                scale,
            );
        }
        for sc in 0..s {
            assert_close(
                &what(&format!("policy_scenario.pv_net_cf scenario {sc}")),
                got.f("policy_scenario.pv_net_cf")[i * s + sc],
                want.policy_scenario[i][sc],
                tol,
                want.policy_scale[i] * 4.0,
            );
        }
    }
    for sc in 0..s {
        for (c, name) in COMPS.iter().enumerate() {
            let scale = if c == 0 { want.scenario_scale[sc] } else { 0.0 };
            assert_close(
                &format!("{label}: scenario {sc} {name}"),
                got.f(&format!("per_scenario.{name}"))[sc],
                want.per_scenario[sc][c],
                tol,
                scale,
            );
        }
    }
    for t in 0..n_max {
        if !got.f.contains_key("cashflows.premiums") {
            break;
        }
        let w = &want.cashflows[t];
        let flows: f64 = w[..5].iter().map(|v| v.abs()).sum();
        for (k, name) in CF_COLS.iter().enumerate() {
            let scale = match k {
                5 => flows,
                8 => w[6],
                _ => 0.0,
            };
            assert_close(
                &format!("{label}: cashflows.{name}[{t}]"),
                got.f(&format!("cashflows.{name}"))[t],
                w[k],
                tol,
                scale,
            );
        }
    }
    assert!(
        got.f("per_policy.pv_premiums").iter().all(|v| *v > 0.0),
        "{label}: every policy pays premiums"
    );
}

#[test]
fn monthly_static_decrements_esg_scenarios_match_reference() {
    let mut rng = Rng::new(1);
    let model = rich_model(12, monthly_lapse());
    let book = random_book(&mut rng, BOOK, 12, 110);
    let scen = Scenarios::random_esg(&mut rng, 7, 1120, 12);
    check("monthly static", &model, &book, &scen, 97);
}

#[test]
fn monthly_dynamic_lapse_mid_and_end_timings_equivalence_premiums_match_reference() {
    let mut rng = Rng::new(2);
    let mut model = rich_model(12, monthly_lapse());
    model.timing = [Timing::Start, Timing::Mid, Timing::End, Timing::Mid];
    model.dynamic = Some(Dynamic {
        k: 4.0,
        r_ref: 0.03,
        lo: 0.4,
        hi: 1.9,
    });
    model.basis = Basis::Equivalence {
        loading: 0.15,
        pricing: Pricing::Scenario(3),
    };
    model.whole_life_max_age = Some(100);
    let book = random_book(&mut rng, BOOK, 12, 100);
    let scen = Scenarios::random_esg(&mut rng, 11, 1000, 12);
    check("monthly dynamic", &model, &book, &scen, 250);
}

#[test]
fn annual_rate_paths_with_equivalence_premiums_on_a_pricing_curve_match_reference() {
    let mut rng = Rng::new(3);
    let mut model = rich_model(1, vec![0.2, 0.15, 0.1, 0.08, 0.06]);
    model.timing = [Timing::Mid, Timing::End, Timing::Mid, Timing::Mid];
    let spot: Vec<f64> = (0..100).map(|y| 0.02 + 0.0003 * y as f64).collect();
    model.basis = Basis::Equivalence {
        loading: 0.1,
        pricing: Pricing::Curve {
            spot,
            path: String::new(),
        },
    };
    let book = random_book(&mut rng, BOOK, 1, 110);
    let (mut id, mut year, mut rate) = (vec![], vec![], vec![]);
    // Scenario ids out of order and rows shuffled: the engine orders them itself.
    for sid in [40i64, 7, 19, 3, 25] {
        let mut r = rng.range(0.0, 0.05);
        for y in 0..100 {
            id.push(sid);
            year.push(2025 + y);
            rate.push(r);
            r = (r + rng.range(-0.004, 0.004)).max(-0.005);
        }
    }
    for i in (1..id.len()).rev() {
        let j = rng.int(0, i as i64) as usize;
        id.swap(i, j);
        year.swap(i, j);
        rate.swap(i, j);
    }
    let scen = Scenarios::Paths {
        scenario_id: id,
        year,
        rate,
    };
    check("annual paths", &model, &book, &scen, 1000);
}

#[test]
fn annual_dynamic_lapse_from_a_monthly_esg_with_clamped_lapse_rates_matches_reference() {
    let mut rng = Rng::new(4);
    // Lapses high enough that w F exceeds 1 for some scenarios: the min(w F, 1) cap is exercised.
    let mut model = rich_model(1, vec![0.55, 0.45, 0.35]);
    model.dynamic = Some(Dynamic {
        k: 30.0,
        r_ref: 0.02,
        lo: 0.0,
        hi: 3.0,
    });
    model.esg_steps_per_year = Some(12);
    model.timing = [Timing::Start, Timing::End, Timing::Start, Timing::Start];
    let book = random_book(&mut rng, BOOK, 1, 110);
    let scen = Scenarios::random_esg(&mut rng, 9, 12 * 96, 12);
    check("annual dynamic", &model, &book, &scen, 333);
}

#[test]
fn monthly_single_curve_with_dynamic_lapse_and_ultimate_only_mortality_matches_reference() {
    let mut rng = Rng::new(5);
    let mut model = rich_model(12, monthly_lapse());
    model.mortality = Mortality::synthetic(15, 110, 1, false);
    model.dynamic = Some(Dynamic {
        k: 2.0,
        r_ref: 0.025,
        lo: 0.5,
        hi: 1.5,
    });
    model.timing = [Timing::Mid, Timing::Mid, Timing::Start, Timing::End];
    let book = random_book(&mut rng, BOOK, 12, 110);
    let spot: Vec<f64> = (0..100).map(|y| 0.015 + 0.0004 * y as f64).collect();
    let scen = Scenarios::Curve {
        year: (1..=100).collect(),
        spot,
    };
    check("monthly curve dynamic", &model, &book, &scen, 64);
}
