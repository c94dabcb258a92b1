//! Cases small enough to work out by hand: each test writes the decrements and present values
//! out step by step from the model definitions and checks the engine against them.

mod common;

use common::reference::{lapse_csv, Mortality};
use common::*;
use rstest::rstest;
use serde_json::{json, Value};

/// Tables in a temp dir: flat annual mortality `q` for ages 20..=90 and an optional lapse table.
fn tables(dir: &TempDir, q: f64, lapse: &[f64]) -> (String, Option<String>) {
    let mort = dir.write("mortality.csv", &Mortality::flat(20, 90, q).csv());
    let lapse = (!lapse.is_empty()).then(|| dir.write("lapse.csv", &lapse_csv(lapse)));
    (mort, lapse)
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn pv_outputs(s: usize, cf_steps: usize) -> Vec<OutCol> {
    all_outputs(s, cf_steps)
}

#[test]
fn three_year_annual_term_policy_with_flat_rates() {
    let dir = TempDir::new("hand");
    let (mort, lapse) = tables(&dir, 0.01, &[0.10]);
    let config = json!({
        "mortality": mort, "lapse": lapse, "timestep": "annual",
        "expenses": { "acquisition": 200, "maintenance": 50, "premium_rate": 0.05, "per_claim": 100 },
        "commission": { "first_year_rate": 0.5, "renewal_rate": 0.05 }
    });
    let book = Book::of(&[P {
        age: 40,
        term: 3,
        sa: 100_000.0,
        premium: 1_000.0,
        ..P::default()
    }]);
    let r = run(
        &config,
        &book,
        &Scenarios::flat_curve(0.05, 4),
        &pv_outputs(1, 3),
        1,
    )
    .unwrap();

    // q = 1%, w = 10%, D(t) = 1.05^-t.
    //   t  if(t)     deaths       lapses = (if - deaths) w    if(t+1)
    //   0  1         0.01         0.099                        0.891
    //   1  0.891     0.00891      0.088209                     0.793881
    //   2  0.793881  0.00793881   0.078594219                  0.707347971
    let v = 1.0 / 1.05;
    let inf = [1.0, 0.891, 0.793881];
    let deaths = [0.01, 0.00891, 0.00793881];
    let ann = inf[0] + inf[1] * v + inf[2] * v * v; // premiums at the start of each year
    let pv_prem = 1_000.0 * ann; // 2568.6449
    let pv_claims = 100_000.0 * (deaths[0] * v + deaths[1] * v * v + deaths[2] * v * v * v); // 2446.3285
                                                                                             // acquisition at issue + maintenance + 5% of premiums + 100 per death, all at the start
    let pv_exp = 200.0
        + 50.0 * ann
        + 0.05 * pv_prem
        + 100.0 * (deaths[0] + deaths[1] * v + deaths[2] * v * v); // 459.4331
    let pv_comm = 0.5 * 1_000.0 + 0.05 * 1_000.0 * (inf[1] * v + inf[2] * v * v); // 578.4322
    let net = pv_prem - pv_claims - pv_exp - pv_comm; // -915.5490

    for (name, want) in [
        ("pv_premiums", pv_prem),
        ("pv_claims", pv_claims),
        ("pv_expenses", pv_exp),
        ("pv_commissions", pv_comm),
        ("pv_maturities", 0.0),
    ] {
        assert_close(
            name,
            r.f(&format!("per_policy.{name}"))[0],
            want,
            1e-13,
            1.0,
        );
        assert_close(
            name,
            r.f(&format!("per_scenario.{name}"))[0],
            want,
            1e-13,
            1.0,
        );
    }
    assert_close("net", r.f("per_policy.pv_net_cf")[0], net, 1e-13, 5_000.0);
    assert_close("net", r.f("per_scenario.pv_net_cf")[0], net, 1e-13, 5_000.0);
    assert_eq!(r.f("per_policy.premium"), &[1_000.0]);

    let cf = |c: &str| r.f(&format!("cashflows.{c}")).to_vec();
    for t in 0..3 {
        assert_rel("in force", cf("in_force")[t], inf[t], 1e-14);
        assert_rel("deaths", cf("deaths")[t], deaths[t], 1e-14);
        assert_rel("premiums", cf("premiums")[t], 1_000.0 * inf[t], 1e-14);
    }
    assert_close("lapses", cf("lapses")[2], 0.078594219, 1e-13, 1.0);
    // 200 acquisition + 50 maintenance + 50 (5% of 1000) + 1 (100 x 0.01 deaths)
    assert_rel("expenses in year 0", cf("expenses")[0], 301.0, 1e-14);
    assert_rel("commission in year 0", cf("commissions")[0], 500.0, 1e-14);
    assert_rel(
        "commission in year 1",
        cf("commissions")[1],
        0.05 * 891.0,
        1e-14,
    );
}

#[test]
fn endowment_pays_the_sum_assured_to_survivors_at_maturity() {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.02, &[]);
    let config = json!({ "mortality": mort, "timestep": "annual" });
    let book = Book::of(&[P {
        product: ENDOWMENT,
        term: 2,
        sa: 1_000.0,
        premium: 480.0,
        count: 3.0,
        ..P::default()
    }]);
    let r = run(
        &config,
        &book,
        &Scenarios::flat_curve(0.04, 3),
        &pv_outputs(1, 2),
        1,
    )
    .unwrap();
    // if: 3 -> 2.94 -> 2.8812; deaths 0.06, 0.0588; survivors 2.8812 receive 1000 each at t = 2.
    let v = 1.0 / 1.04;
    let pv_prem = 480.0 * (3.0 + 2.94 * v);
    let pv_claims = 1_000.0 * (0.06 * v + 0.0588 * v * v);
    let pv_mat = 2_881.2 * v * v;
    assert_rel("premiums", r.f("per_policy.pv_premiums")[0], pv_prem, 1e-13);
    assert_rel("claims", r.f("per_policy.pv_claims")[0], pv_claims, 1e-13);
    assert_rel(
        "maturities",
        r.f("per_policy.pv_maturities")[0],
        pv_mat,
        1e-13,
    );
    assert_rel(
        "maturities per scenario",
        r.f("per_scenario.pv_maturities")[0],
        pv_mat,
        1e-13,
    );
    assert_rel(
        "net",
        r.f("per_policy.pv_net_cf")[0],
        pv_prem - pv_claims - pv_mat,
        1e-12,
    );
    assert_eq!(r.f("cashflows.maturities")[0], 0.0);
    assert_rel(
        "maturity cash flow in the last year",
        r.f("cashflows.maturities")[1],
        2_881.2,
        1e-14,
    );
}

#[test]
fn whole_life_runs_to_the_end_of_the_mortality_table_or_the_configured_age() {
    let dir = TempDir::new("hand");
    let mort = dir.write("mortality.csv", "age,qx\n60,0.1\n61,0.2\n62,1.0\n");
    let book = Book::of(&[P {
        age: 60,
        product: WHOLE_LIFE,
        term: 0,
        sa: 500.0,
        premium: 100.0,
        ..P::default()
    }]);
    let curve = Scenarios::flat_curve(0.0, 4);

    // Ages 60, 61, 62: if 1 -> 0.9 -> 0.72 -> 0; everybody dies by the end of the table.
    let r = run(
        &json!({ "mortality": mort, "timestep": "annual" }),
        &book,
        &curve,
        &pv_outputs(1, 3),
        1,
    )
    .unwrap();
    assert_rel(
        "claims",
        r.f("per_policy.pv_claims")[0],
        500.0 * (0.1 + 0.18 + 0.72),
        1e-14,
    );
    assert_rel(
        "premiums",
        r.f("per_policy.pv_premiums")[0],
        100.0 * (1.0 + 0.9 + 0.72),
        1e-14,
    );
    assert_eq!(r.f("per_policy.pv_maturities")[0], 0.0);

    // Stopped at age 61: two years, no benefit for the survivors.
    let cfg = json!({ "mortality": mort, "timestep": "annual", "whole_life_max_age": 61 });
    let r = run(&cfg, &book, &curve, &pv_outputs(1, 2), 1).unwrap();
    assert_rel(
        "claims to 61",
        r.f("per_policy.pv_claims")[0],
        500.0 * (0.1 + 0.18),
        1e-14,
    );
    assert_rel(
        "premiums to 61",
        r.f("per_policy.pv_premiums")[0],
        100.0 * 1.9,
        1e-14,
    );

    // In force for a year already: attained age 61 at the valuation date, if 1 -> 0.8 -> 0.
    let book = Book::of(&[P {
        age: 60,
        product: WHOLE_LIFE,
        sa: 500.0,
        premium: 100.0,
        dur: 12,
        ..P::default()
    }]);
    let r = run(
        &json!({ "mortality": mort, "timestep": "annual" }),
        &book,
        &curve,
        &pv_outputs(1, 2),
        1,
    )
    .unwrap();
    assert_rel(
        "claims from 61",
        r.f("per_policy.pv_claims")[0],
        500.0,
        1e-14,
    );
    assert_rel(
        "premiums from 61",
        r.f("per_policy.pv_premiums")[0],
        180.0,
        1e-14,
    );
}

#[test]
fn monthly_steps_convert_annual_rates_so_that_a_year_compounds_back() {
    let dir = TempDir::new("hand");
    let (mort, lapse) = tables(&dir, 0.12, &[0.2]);
    let book = Book::of(&[P {
        term: 2,
        sa: 1_000.0,
        premium: 1_200.0,
        ..P::default()
    }]);
    let curve = Scenarios::flat_curve(0.0, 3);

    // Mortality only: q_month = 1 - 0.88^(1/12), so if(12) = 0.88 and if(24) = 0.88^2.
    let r = run(
        &json!({ "mortality": mort }),
        &book,
        &curve,
        &pv_outputs(1, 24),
        1,
    )
    .unwrap();
    let inf = r.f("cashflows.in_force");
    assert_rel("in force after a year", inf[12], 0.88, 1e-14);
    assert_rel(
        "in force at month 5",
        inf[5],
        0.88f64.powf(5.0 / 12.0),
        1e-14,
    );
    let first_year_deaths: f64 = r.f("cashflows.deaths")[..12].iter().sum();
    assert_rel("deaths in the first year", first_year_deaths, 0.12, 1e-13);
    // At 0% interest, PV(claims) = 1000 x (1 - 0.88^2) and premiums are 100 a month.
    assert_rel(
        "claims",
        r.f("per_policy.pv_claims")[0],
        1_000.0 * (1.0 - 0.88 * 0.88),
        1e-13,
    );
    let annuity: f64 = (0..24).map(|t| 0.88f64.powf(t as f64 / 12.0)).sum();
    assert_rel(
        "premiums",
        r.f("per_policy.pv_premiums")[0],
        100.0 * annuity,
        1e-13,
    );
    assert_eq!(r.f("per_policy.premium_per_step"), &[100.0]);
    assert_eq!(r.f("per_policy.premium"), &[1_200.0]);

    // With a 20% annual lapse as well, a year's survival is 0.88 x 0.8.
    let r = run(
        &json!({ "mortality": mort, "lapse": lapse }),
        &book,
        &curve,
        &pv_outputs(1, 24),
        1,
    )
    .unwrap();
    assert_rel(
        "in force after a year with lapses",
        r.f("cashflows.in_force")[12],
        0.88 * 0.8,
        1e-14,
    );
}

/// Each cash-flow type at each timing: a one-year annual policy at 10% interest, q = 10%.
/// Every type has cash flow 1 x (its amount) in year 0, so its PV is the amount times D(0) = 1,
/// sqrt(D(0) D(1)) = 1.1^-1/2 or D(1) = 1.1^-1.
#[rstest]
fn each_timing_discounts_its_cash_flow_type(
    #[values("premiums", "claims", "expenses", "commissions")] kind: &str,
    #[values("start", "mid", "end")] timing: &str,
) {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.1, &[]);
    let config = json!({
        "mortality": mort, "timestep": "annual",
        "expenses": { "maintenance": 30 }, "commission": { "first_year_rate": 0.2 },
        "timing": { kind: timing }
    });
    let book = Book::of(&[P {
        term: 1,
        sa: 1_000.0,
        premium: 100.0,
        ..P::default()
    }]);
    let r = run(
        &config,
        &book,
        &Scenarios::flat_curve(0.10, 2),
        &pv_outputs(1, 1),
        1,
    )
    .unwrap();
    let d = match timing {
        "start" => 1.0,
        "mid" => (1.0f64 / 1.1).sqrt(),
        _ => 1.0 / 1.1,
    };
    let (column, amount) = match kind {
        "premiums" => ("pv_premiums", 100.0),
        "claims" => ("pv_claims", 1_000.0 * 0.1),
        "expenses" => ("pv_expenses", 30.0),
        _ => ("pv_commissions", 0.2 * 100.0),
    };
    assert_rel(
        &format!("{kind} at {timing}"),
        r.f(&format!("per_policy.{column}"))[0],
        amount * d,
        1e-14,
    );
    assert_rel(
        &format!("{kind} at {timing}, per scenario"),
        r.f(&format!("per_scenario.{column}"))[0],
        amount * d,
        1e-14,
    );
}

#[test]
fn commissions_follow_the_premium_timing_unless_configured() {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.1, &[]);
    let config = json!({
        "mortality": mort, "timestep": "annual", "commission": { "first_year_rate": 0.2 },
        "timing": { "premiums": "end" }
    });
    let book = Book::of(&[P {
        term: 1,
        sa: 1_000.0,
        premium: 100.0,
        ..P::default()
    }]);
    let r = run(
        &config,
        &book,
        &Scenarios::flat_curve(0.10, 2),
        &pv_outputs(1, 1),
        1,
    )
    .unwrap();
    assert_rel(
        "commission at the premium's timing",
        r.f("per_policy.pv_commissions")[0],
        20.0 / 1.1,
        1e-14,
    );
}

/// Equivalence premium: 1-year term, q = 50%, 0% interest: PV(claims) / PV(if) = SA / 2.
#[rstest]
#[case::half_cent_rounds_down_to_even(1_000.25, 0.0, 1.0, 500.12)]
#[case::half_cent_rounds_up_to_even(1_000.75, 0.0, 1.0, 500.38)]
#[case::loading(1_000.0, 0.1, 1.0, 550.0)]
#[case::multiplier_after_rounding(1_000.25, 0.0, 2.0, 1_000.24)]
fn equivalence_premium_rounds_half_to_even_at_cents(
    #[case] sa: f64,
    #[case] loading: f64,
    #[case] mult: f64,
    #[case] want: f64,
) {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.5, &[]);
    let config = json!({
        "mortality": mort, "timestep": "annual", "premium_basis": "equivalence",
        "pricing": { "loading": loading }, "multipliers": { "premium": mult }
    });
    let mut book = Book::of(&[P {
        term: 1,
        sa,
        ..P::default()
    }]);
    book.premium = None; // the equivalence basis needs no premium column
    let r = run(
        &config,
        &book,
        &Scenarios::flat_curve(0.0, 2),
        &pv_outputs(1, 1),
        1,
    )
    .unwrap();
    assert_eq!(r.f("per_policy.premium_per_step")[0], want);
    assert_eq!(r.f("per_policy.premium")[0], want);
    assert_rel("PV premiums", r.f("per_policy.pv_premiums")[0], want, 1e-15);
}

#[test]
fn equivalence_premium_on_a_pricing_curve_is_per_step_and_includes_maturities() {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.0, &[]);
    let pricing = dir.write("pricing.csv", "year,spot\n0,0.0\n1,0.0\n2,0.0\n");
    let config = json!({
        "mortality": mort, "premium_basis": "equivalence",
        "pricing": { "curve": pricing, "loading": 0.2 }
    });
    // A 2-year monthly endowment without deaths: PV(maturity) / PV(if) = 1200 / 24 per month.
    let book = Book::of(&[P {
        term: 2,
        sa: 1_200.0,
        product: ENDOWMENT,
        ..P::default()
    }]);
    let r = run(
        &config,
        &book,
        &Scenarios::flat_curve(0.05, 3),
        &pv_outputs(1, 24),
        1,
    )
    .unwrap();
    assert_eq!(r.f("per_policy.premium_per_step")[0], 60.0); // 1.2 x 50
    assert_eq!(r.f("per_policy.premium")[0], 720.0);
}

#[test]
fn select_mortality_and_months_in_force_set_policy_year_and_attained_age() {
    let dir = TempDir::new("hand");
    // Select columns 0 and 1 are flat; the ultimate column 2 is 0.001 x age.
    let mut csv = String::from("age,0,1,2\n");
    for age in 20..=90 {
        csv.push_str(&format!("{age},0.01,0.02,{}\n", 0.001 * age as f64));
    }
    let mort = dir.write("select.csv", &csv);
    let config = json!({
        "mortality": mort, "expenses": { "acquisition": 99 },
        "commission": { "first_year_rate": 0.5, "renewal_rate": 0.1 }
    });
    // 18 months in force of a 3-year term: 6 months of policy year 1 (age 41, column 1), then
    // 12 months of policy year 2 (age 42, ultimate column: 0.042).
    // 6 months in force: 6 months of year 0 (age 40, column 0), then year 1.
    let book = Book::of(&[
        P {
            age: 40,
            term: 3,
            dur: 18,
            premium: 1_200.0,
            ..P::default()
        },
        P {
            age: 40,
            term: 3,
            dur: 6,
            premium: 1_200.0,
            ..P::default()
        },
    ]);
    let outs = vec![
        col("cashflows.in_force", Shape::PerChunk(30)),
        col("cashflows.deaths", Shape::PerChunk(30)),
        col("cashflows.commissions", Shape::PerChunk(30)),
        col("cashflows.expenses", Shape::PerChunk(30)),
    ];
    let monthly = |q: f64| 1.0 - (1.0 - q).powf(1.0 / 12.0);
    let r = run(
        &config,
        &Book::of(&[book.get(0)]),
        &Scenarios::flat_curve(0.0, 4),
        &outs,
        1,
    )
    .unwrap();
    let (inf, deaths) = (r.f("cashflows.in_force"), r.f("cashflows.deaths"));
    for t in 0..18 {
        let want = if t < 6 { monthly(0.02) } else { monthly(0.042) };
        assert_rel(&format!("q at step {t}"), deaths[t] / inf[t], want, 1e-12);
    }
    assert_eq!(inf[18], 0.0, "the policy ends at its term");
    assert_rel(
        "renewal commission only",
        r.f("cashflows.commissions")[0],
        0.1 * 100.0,
        1e-14,
    );
    assert_eq!(
        r.f("cashflows.expenses")[0],
        0.0,
        "no acquisition expense for business in force"
    );

    let r = run(
        &config,
        &Book::of(&[book.get(1)]),
        &Scenarios::flat_curve(0.0, 4),
        &outs,
        1,
    )
    .unwrap();
    let (inf, deaths, comm) = (
        r.f("cashflows.in_force"),
        r.f("cashflows.deaths"),
        r.f("cashflows.commissions"),
    );
    assert_rel(
        "select column 0 in year 0",
        deaths[0] / inf[0],
        monthly(0.01),
        1e-12,
    );
    assert_rel(
        "select column 1 in year 1",
        deaths[6] / inf[6],
        monthly(0.02),
        1e-12,
    );
    assert_rel(
        "ultimate at age 42 in year 2",
        deaths[18] / inf[18],
        monthly(0.042),
        1e-12,
    );
    assert_rel(
        "first-year commission for 6 months",
        comm[5] / inf[5],
        0.5 * 100.0,
        1e-14,
    );
    assert_rel(
        "renewal commission from month 12",
        comm[6] / inf[6],
        0.1 * 100.0,
        1e-14,
    );
}

#[test]
fn maintenance_expense_inflates_from_the_valuation_date() {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.0, &[]);
    let config =
        json!({ "mortality": mort, "expenses": { "maintenance": 120, "inflation": 0.03 } });
    let book = Book::of(&[P {
        term: 5,
        dur: 30,
        ..P::default()
    }]);
    let outs = vec![col("cashflows.expenses", Shape::PerChunk(30))];
    let r = run(&config, &book, &Scenarios::flat_curve(0.0, 3), &outs, 1).unwrap();
    let e = r.f("cashflows.expenses");
    assert_rel("month 0", e[0], 10.0, 1e-14);
    assert_rel("month 12", e[12], 10.0 * 1.03, 1e-14);
    assert_rel("month 18", e[18], 10.0 * 1.03f64.powf(1.5), 1e-14);
}

#[test]
fn dynamic_lapse_scales_the_lapse_rate_by_the_clamped_short_rate_factor() {
    let dir = TempDir::new("hand");
    let (mort, lapse) = tables(&dir, 0.0, &[0.1]);
    // Two annual scenarios: D = (1, .95, .9) with r = 5%, and D = (1, .97, .93) with r = 1%.
    let scen = Scenarios::Esg {
        s: 2,
        cols: 3,
        df: vec![1.0, 0.95, 0.9, 1.0, 0.97, 0.93],
        short_rate: Some(vec![0.05, 0.05, 0.05, 0.01, 0.01, 0.01]),
    };
    let book = Book::of(&[P {
        term: 2,
        premium: 100.0,
        ..P::default()
    }]);
    let outs = vec![
        col("per_scenario.pv_premiums", Shape::PerChunk(2)),
        col("per_policy.pv_premiums", Shape::Rows),
    ];
    let base = json!({ "mortality": mort, "lapse": lapse, "timestep": "annual" });

    // k = 2, r_ref = 3%: factors 1.04 and 0.96, so w = 0.104 and 0.096.
    let cfg = with(
        base.clone(),
        json!({ "dynamic_lapse": { "k": 2, "r_ref": 0.03, "lo": 0.5, "hi": 1.5 } }),
    );
    let r = run(&cfg, &book, &scen, &outs, 1).unwrap();
    let (a, b) = (100.0 * (1.0 + 0.896 * 0.95), 100.0 * (1.0 + 0.904 * 0.97));
    assert_rel("scenario 0", r.f("per_scenario.pv_premiums")[0], a, 1e-14);
    assert_rel("scenario 1", r.f("per_scenario.pv_premiums")[1], b, 1e-14);
    assert_rel(
        "mean",
        r.f("per_policy.pv_premiums")[0],
        (a + b) / 2.0,
        1e-14,
    );

    // k = 100: factors 3 and -1, clamped to 1.5 and 0.5, so w = 0.15 and 0.05.
    let cfg = with(
        base,
        json!({ "dynamic_lapse": { "k": 100, "r_ref": 0.03, "lo": 0.5, "hi": 1.5 } }),
    );
    let r = run(&cfg, &book, &scen, &outs, 1).unwrap();
    assert_rel(
        "clamped high",
        r.f("per_scenario.pv_premiums")[0],
        100.0 * (1.0 + 0.85 * 0.95),
        1e-14,
    );
    assert_rel(
        "clamped low",
        r.f("per_scenario.pv_premiums")[1],
        100.0 * (1.0 + 0.95 * 0.97),
        1e-14,
    );
}

#[test]
fn rate_paths_discount_by_the_running_product_over_whole_years() {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.0, &[]);
    let scen = Scenarios::Paths {
        scenario_id: vec![5, 5],
        year: vec![1, 2],
        rate: vec![0.02, 0.04],
    };
    let book = Book::of(&[P {
        term: 2,
        product: ENDOWMENT,
        sa: 1_000.0,
        premium: 1_200.0,
        ..P::default()
    }]);
    let r = run(
        &json!({ "mortality": mort }),
        &book,
        &scen,
        &pv_outputs(1, 24),
        1,
    )
    .unwrap();
    // D(24) = 1 / (1.02 x 1.04); within year k, D(12k + j) = D(12k) (1 + r_k)^(-j/12).
    assert_rel(
        "maturity",
        r.f("per_policy.pv_maturities")[0],
        1_000.0 / (1.02 * 1.04),
        1e-14,
    );
    let annuity: f64 = (0..12).map(|j| 1.02f64.powf(-j as f64 / 12.0)).sum::<f64>()
        + (0..12)
            .map(|j| 1.04f64.powf(-j as f64 / 12.0) / 1.02)
            .sum::<f64>();
    assert_rel(
        "premiums",
        r.f("per_policy.pv_premiums")[0],
        100.0 * annuity,
        1e-14,
    );
}

#[test]
fn annual_projection_samples_a_monthly_esg_at_whole_years() {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.0, &[]);
    let df: Vec<f64> = (0..25).map(|j| 0.99f64.powi(j)).collect();
    let scen = Scenarios::Esg {
        s: 1,
        cols: 25,
        df,
        short_rate: None,
    };
    let book = Book::of(&[P {
        term: 2,
        product: ENDOWMENT,
        sa: 1_000.0,
        premium: 0.0,
        ..P::default()
    }]);
    let cfg = json!({ "mortality": mort, "timestep": "annual", "scenario_steps_per_year": 12 });
    let r = run(&cfg, &book, &scen, &pv_outputs(1, 2), 1).unwrap();
    assert_eq!(
        r.f("per_policy.pv_maturities")[0],
        1_000.0 * 0.99f64.powi(24)
    );
}

#[test]
fn spot_curve_discounts_with_the_rate_of_the_current_year() {
    let dir = TempDir::new("hand");
    let (mort, _) = tables(&dir, 0.0, &[]);
    // df(t) = (1 + spot[floor(t)])^-t: the maturity at t = 2 uses spot[2].
    let scen = Scenarios::Curve {
        year: vec![0, 1, 2],
        spot: vec![0.01, 0.02, 0.03],
    };
    let book = Book::of(&[P {
        term: 2,
        product: ENDOWMENT,
        sa: 1_000.0,
        premium: 100.0,
        ..P::default()
    }]);
    let r = run(
        &json!({ "mortality": mort, "timestep": "annual" }),
        &book,
        &scen,
        &pv_outputs(1, 2),
        1,
    )
    .unwrap();
    assert_rel(
        "maturity",
        r.f("per_policy.pv_maturities")[0],
        1_000.0 * 1.03f64.powi(-2),
        1e-14,
    );
    assert_rel(
        "premiums",
        r.f("per_policy.pv_premiums")[0],
        100.0 * (1.0 + 1.0 / 1.02),
        1e-14,
    );
}
