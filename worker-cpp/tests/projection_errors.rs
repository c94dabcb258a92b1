//! Bad input is rejected with the input or file, the row or line, and the column — and before a
//! single output byte is written.

mod common;

use common::reference::{lapse_csv, Mortality};
use common::*;
use livecalc_protocol::owned_view::{ColumnData, OwnedView};
use livecalc_protocol::ChunkSpan;
use serde_json::{json, Value};

struct Fx {
    dir: TempDir,
    cfg: Value,
    book: Book,
}

fn fx() -> Fx {
    let dir = TempDir::new("err");
    let mort = dir.write(
        "mortality.csv",
        &Mortality::synthetic(20, 100, 2, true).csv(),
    );
    let lapse = dir.write("lapse.csv", &lapse_csv(&[0.1, 0.05]));
    let cfg = json!({ "mortality": mort, "lapse": lapse });
    let book = Book::of(&[
        P::default(),
        P {
            age: 30,
            term: 20,
            product: ENDOWMENT,
            ..P::default()
        },
        P {
            age: 50,
            product: WHOLE_LIFE,
            ..P::default()
        },
        P {
            age: 35,
            term: 5,
            dur: 14,
            ..P::default()
        },
    ]);
    Fx { dir, cfg, book }
}

fn curve() -> Scenarios {
    Scenarios::flat_curve(0.03, 100)
}

fn outs() -> Vec<OutCol> {
    all_outputs(1, 1200)
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

/// Run `book` as one chunk starting at row 100 of the node, with every output pre-filled with
/// a sentinel, and return the error after checking that no output byte changed.
fn reject(
    cfg: &Value,
    book: &Book,
    scen: &Scenarios,
    outs: &[OutCol],
) -> Result<(), livecalc_protocol::EngineError> {
    let mut e = engine("cpp_projection", cfg)?;
    let span = ChunkSpan {
        index: 3,
        row_start: 100,
        row_count: book.len() as u64,
        total_rows: 1000,
    };
    let mut cols = book.columns(0..book.len());
    cols.extend(scen.columns());
    let input = OwnedView::build(span, cols);
    let sentinel = -12345.678;
    let outputs: Vec<ColumnData> = outs
        .iter()
        .map(|c| {
            let shape: Vec<u64> = match c.shape {
                Shape::PerChunk(n) => vec![n as u64],
                Shape::Rows => vec![book.len() as u64],
                Shape::RowsBy(w) => vec![book.len() as u64, w as u64],
            };
            let n = shape.iter().product::<u64>() as usize;
            if c.dtype == livecalc_protocol::DType::Int64 {
                ColumnData::new(&c.name, &shape, &vec![-7i64; n])
            } else {
                ColumnData::new(&c.name, &shape, &vec![sentinel; n])
            }
        })
        .collect();
    let mut output = OwnedView::build(span, outputs);
    let r = run_view(&mut e, &input, &mut output);
    if r.is_err() {
        for c in outs {
            if c.dtype == livecalc_protocol::DType::Int64 {
                assert!(
                    output.column::<i64>(&c.name).iter().all(|v| *v == -7),
                    "{} was written",
                    c.name
                );
            } else {
                assert!(
                    output.column::<f64>(&c.name).iter().all(|v| *v == sentinel),
                    "{} was written before the error",
                    c.name
                );
            }
        }
    }
    r.map(|_| ())
}

#[test]
fn the_fixture_itself_is_accepted() {
    let f = fx();
    reject(&f.cfg, &f.book, &curve(), &outs()).unwrap();
}

#[test]
fn missing_policy_column() {
    let f = fx();
    let mut cols_book = f.book.clone();
    cols_book.premium = None;
    assert_error(
        reject(&f.cfg, &cols_book, &curve(), &outs()),
        "ConfigurationError",
        &["'policies'", "'premium'", "given"],
    );
    // A required column the view lacks entirely.
    let e = engine("cpp_projection", &f.cfg).unwrap();
    drop(e);
    let span = ChunkSpan {
        index: 0,
        row_start: 0,
        row_count: 4,
        total_rows: 4,
    };
    let mut cols: Vec<ColumnData> = f
        .book
        .columns(0..4)
        .into_iter()
        .filter(|c| c.name != "policies.sum_assured")
        .collect();
    cols.extend(curve().columns());
    let input = OwnedView::build(span, cols);
    let mut output = OwnedView::build(
        span,
        vec![ColumnData::zeros::<f64>("per_policy.pv_net_cf", &[4])],
    );
    let mut e = engine("cpp_projection", &f.cfg).unwrap();
    assert_error(
        run_view(&mut e, &input, &mut output),
        "ConfigurationError",
        &["'policies'", "'sum_assured'"],
    );
}

#[test]
fn age_outside_the_mortality_table() {
    let f = fx();
    let mut b = f.book.clone();
    b.age_at_entry[2] = 15;
    let t = assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &[
            "row 102",
            "policy_id 1002",
            "'age_at_entry'",
            "20..100",
            "mortality.csv",
        ],
    );
    assert!(t.contains("15.."), "{t}");
    let mut b = f.book.clone();
    b.age_at_entry[1] = 90; // a 20-year endowment from 90 needs ages up to 109
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 101", "'age_at_entry'", "90..109"],
    );
}

#[test]
fn negative_sum_assured() {
    let f = fx();
    let mut b = f.book.clone();
    b.sum_assured[3] = -5.0;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &[
            "row 103",
            "policy_id 1003",
            "'sum_assured'",
            "negative",
            "-5",
        ],
    );
}

#[test]
fn term_not_positive() {
    let f = fx();
    for term in [0, -3] {
        let mut b = f.book.clone();
        b.policy_term[0] = term;
        assert_error(
            reject(&f.cfg, &b, &curve(), &outs()),
            "ExecutionError",
            &["row 100", "'policy_term'", &term.to_string()],
        );
    }
}

#[test]
fn unknown_product_and_sex_codes() {
    let f = fx();
    let mut b = f.book.clone();
    b.product[1] = 3;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 101", "'product'", "unknown product code 3"],
    );
    let mut b = f.book.clone();
    b.sex[2] = 2;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 102", "'sex'", "2"],
    );
}

#[test]
fn nan_and_infinity_in_policy_data() {
    let f = fx();
    let mut b = f.book.clone();
    b.sum_assured[0] = f64::NAN;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 100", "'sum_assured'", "not finite"],
    );
    let mut b = f.book.clone();
    b.premium.as_mut().unwrap()[1] = f64::INFINITY;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 101", "'premium'", "inf"],
    );
    let mut b = f.book.clone();
    b.policy_count.as_mut().unwrap()[2] = f64::NAN;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 102", "'policy_count'"],
    );
    let mut b = f.book.clone();
    b.policy_count.as_mut().unwrap()[2] = 0.0;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 102", "'policy_count'", "positive"],
    );
}

#[test]
fn months_in_force_out_of_range() {
    let f = fx();
    let mut b = f.book.clone();
    b.duration_mth.as_mut().unwrap()[3] = 60; // a 5-year term 60 months in has nothing left
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 103", "'duration_mth'", "60"],
    );
    let mut b = f.book.clone();
    b.duration_mth.as_mut().unwrap()[3] = -1;
    assert_error(
        reject(&f.cfg, &b, &curve(), &outs()),
        "ExecutionError",
        &["row 103", "'duration_mth'"],
    );
    let annual = with(f.cfg.clone(), json!({ "timestep": "annual" }));
    assert_error(
        reject(&annual, &f.book, &curve(), &outs()),
        "ExecutionError",
        &["row 103", "'duration_mth'", "14", "annual"],
    );
}

#[test]
fn scenarios_shorter_than_the_longest_policy() {
    let f = fx();
    // The whole-life policy from 50 to the table's end at 100 runs 612 months; 40 years cover 479.
    let t = assert_error(
        reject(&f.cfg, &f.book, &Scenarios::flat_curve(0.03, 40), &outs()),
        "ExecutionError",
        &[
            "'curve'",
            "40 yearly curve rows",
            "479",
            "policy 1002",
            "row 102",
            "612",
        ],
    );
    assert!(t.contains("monthly"), "{t}");
    let mut rng = Rng::new(1);
    let esg = Scenarios::random_esg(&mut rng, 3, 300, 12);
    assert_error(
        reject(&f.cfg, &f.book, &esg, &all_outputs(3, 1200)),
        "ExecutionError",
        &["'scenarios'", "300", "row 102", "612"],
    );
    let paths = Scenarios::Paths {
        scenario_id: vec![1; 30],
        year: (0..30).collect(),
        rate: vec![0.02; 30],
    };
    assert_error(
        reject(&f.cfg, &f.book, &paths, &outs()),
        "ExecutionError",
        &["'paths'", "30 years", "360"],
    );
}

#[test]
fn bad_scenario_values_name_row_and_column() {
    let f = fx();
    let mut rng = Rng::new(2);
    let Scenarios::Esg {
        s,
        cols,
        mut df,
        short_rate,
    } = Scenarios::random_esg(&mut rng, 3, 700, 12)
    else {
        unreachable!()
    };
    df[cols + 5] = -0.5;
    let esg = Scenarios::Esg {
        s,
        cols,
        df: df.clone(),
        short_rate: short_rate.clone(),
    };
    assert_error(
        reject(&f.cfg, &f.book, &esg, &all_outputs(3, 1200)),
        "ExecutionError",
        &["'scenarios' row 1", "'discount_factor'", "step 5"],
    );
    df[cols + 5] = 0.9;
    df[2 * cols] = 1.01;
    let esg = Scenarios::Esg {
        s,
        cols,
        df,
        short_rate,
    };
    assert_error(
        reject(&f.cfg, &f.book, &esg, &all_outputs(3, 1200)),
        "ExecutionError",
        &["row 2", "D(0) must be 1"],
    );

    let bad_curve = Scenarios::Curve {
        year: vec![0, 1, 3],
        spot: vec![0.01; 3],
    };
    assert_error(
        reject(&f.cfg, &f.book, &bad_curve, &outs()),
        "ExecutionError",
        &["'curve' row 2", "'year'", "consecutive"],
    );
    let nan_curve = Scenarios::Curve {
        year: (0..100).collect(),
        spot: (0..100)
            .map(|i| if i == 7 { f64::NAN } else { 0.02 })
            .collect(),
    };
    assert_error(
        reject(&f.cfg, &f.book, &nan_curve, &outs()),
        "ExecutionError",
        &["'curve' row 7", "'spot'"],
    );
    let gap = Scenarios::Paths {
        scenario_id: vec![1, 1, 2, 2],
        year: vec![0, 1, 0, 2],
        rate: vec![0.01; 4],
    };
    assert_error(
        reject(&f.cfg, &f.book, &gap, &outs()),
        "ExecutionError",
        &["'paths' row 3", "'year'", "scenario 2"],
    );
}

#[test]
fn dynamic_lapse_needs_a_short_rate() {
    let f = fx();
    let mut rng = Rng::new(3);
    let Scenarios::Esg { s, cols, df, .. } = Scenarios::random_esg(&mut rng, 2, 700, 12) else {
        unreachable!()
    };
    let esg = Scenarios::Esg {
        s,
        cols,
        df,
        short_rate: None,
    };
    let cfg = with(
        f.cfg.clone(),
        json!({ "dynamic_lapse": { "k": 1, "r_ref": 0.03 } }),
    );
    assert_error(
        reject(&cfg, &f.book, &esg, &all_outputs(2, 1200)),
        "ConfigurationError",
        &["short_rate"],
    );
}

#[test]
fn no_or_two_scenario_inputs() {
    let f = fx();
    let mut e = engine("cpp_projection", &f.cfg).unwrap();
    let span = ChunkSpan {
        index: 0,
        row_start: 0,
        row_count: 4,
        total_rows: 4,
    };
    let input = OwnedView::build(span, f.book.columns(0..4));
    let mut output = OwnedView::build(
        span,
        vec![ColumnData::zeros::<f64>("per_policy.pv_net_cf", &[4])],
    );
    assert_error(
        run_view(&mut e, &input, &mut output),
        "ConfigurationError",
        &["no scenario input", "curve"],
    );
    let mut cols = f.book.columns(0..4);
    cols.extend(curve().columns());
    cols.extend(
        Scenarios::Paths {
            scenario_id: vec![1],
            year: vec![0],
            rate: vec![0.0],
        }
        .columns(),
    );
    let input = OwnedView::build(span, cols);
    assert_error(
        run_view(&mut e, &input, &mut output),
        "ConfigurationError",
        &["more than one scenario input"],
    );
}

#[test]
fn malformed_mortality_tables_name_file_line_and_column() {
    let f = fx();
    let cases: [(&str, &[&str]); 7] = [
        (
            "age,qx\n20,0.01\n21,abc\n",
            &["bad.csv", "line 3", "'qx'", "'abc' is not a number"],
        ),
        (
            "age,qx\n20,0.01\n22,0.02\n",
            &["bad.csv", "line 3", "'age'", "jump"],
        ),
        (
            "age,qx\n20,0.01\n21,1.5\n",
            &["line 3", "'qx'", "outside [0, 1]"],
        ),
        ("age,qx\n20,0.01\n20,0.02\n", &["line 3", "appears twice"]),
        (
            "age,rate\n20,0.01\n",
            &["needs a column 'qx' or select columns"],
        ),
        (
            "age,sex,qx\n20,M,0.01\n20,X,0.01\n",
            &["line 3", "'sex'", "'X'"],
        ),
        ("age,qx\n20,0.01,7\n", &["line 2", "3 fields"]),
    ];
    for (text, needles) in cases {
        let path = f.dir.write("bad.csv", text);
        let cfg = with(f.cfg.clone(), json!({ "mortality": path }));
        let msg = assert_error(
            engine("cpp_projection", &cfg).map(|_| ()),
            "InitializationError",
            needles,
        );
        assert!(msg.contains("mortality"), "{msg}");
    }
    let cfg = with(f.cfg.clone(), json!({ "mortality": "no/such/file.csv" }));
    assert_error(
        engine("cpp_projection", &cfg).map(|_| ()),
        "InitializationError",
        &["no/such/file.csv", "cannot be opened"],
    );
}

#[test]
fn malformed_lapse_and_pricing_curve_tables() {
    let f = fx();
    let path = f.dir.write("lapse_bad.csv", "duration,rate\n1,0.1\n");
    let cfg = with(f.cfg.clone(), json!({ "lapse": path }));
    assert_error(
        engine("cpp_projection", &cfg).map(|_| ()),
        "InitializationError",
        &["lapse_bad.csv", "line 2", "'duration'", "policy year 0"],
    );
    let path = f.dir.write("lapse_bad2.csv", "duration,rate\n0,-0.1\n");
    let cfg = with(f.cfg.clone(), json!({ "lapse": path }));
    assert_error(
        engine("cpp_projection", &cfg).map(|_| ()),
        "InitializationError",
        &["line 2", "'rate'"],
    );
    let path = f.dir.write("pc.csv", "year,spot\n0,0.01\n1,nan\n");
    let cfg = with(
        f.cfg.clone(),
        json!({ "premium_basis": "equivalence", "pricing": { "curve": path } }),
    );
    assert_error(
        engine("cpp_projection", &cfg).map(|_| ()),
        "InitializationError",
        &["pricing curve", "pc.csv", "line 3", "'spot'"],
    );
}

#[test]
fn bad_config_is_a_configuration_error() {
    let f = fx();
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({ "mortalty": "x.csv" }), vec!["'mortality'"]),
        (
            json!({ "expenses": { "maintenence": 10 } }),
            vec!["unknown config key 'expenses.maintenence'"],
        ),
        (
            json!({ "timing": { "claims": "later" } }),
            vec!["'timing.claims'", "start, mid, end", "later"],
        ),
        (
            json!({ "timestep": "weekly" }),
            vec!["'timestep'", "weekly"],
        ),
        (
            json!({ "expenses": { "premium_rate": 5 } }),
            vec!["'expenses.premium_rate'", "fraction"],
        ),
        (
            json!({ "multipliers": { "lapse": "two" } }),
            vec!["'multipliers.lapse'", "two"],
        ),
        (
            json!({ "dynamic_lapse": { "k": 1 } }),
            vec!["dynamic_lapse.r_ref"],
        ),
        (
            json!({ "dynamic_lapse": { "k": 1, "r_ref": 0, "lo": 2, "hi": 1 } }),
            vec!["'dynamic_lapse.hi'"],
        ),
        (
            json!({ "whole_life_max_age": 130 }),
            vec!["'whole_life_max_age'", "100"],
        ),
        (
            json!({ "scenario_steps_per_year": 5 }),
            vec!["'scenario_steps_per_year'"],
        ),
        (json!({ "premium_basis": "guess" }), vec!["'premium_basis'"]),
        (
            json!({ "expenses": "{\"maintenance\": }" }),
            vec!["'expenses'", "invalid JSON"],
        ),
        (
            json!({ "expenses": { "maintenance": 1 }, "expenses.maintenance": 2 }),
            vec!["given twice"],
        ),
    ];
    for (extra, needles) in cases {
        let mut cfg = with(f.cfg.clone(), extra.clone());
        if extra.get("mortalty").is_some() {
            cfg.as_object_mut().unwrap().remove("mortality");
        }
        assert_error(
            engine("cpp_projection", &cfg).map(|_| ()),
            "ConfigurationError",
            &needles,
        );
    }
}

#[test]
fn unknown_or_misshapen_outputs_are_configuration_errors() {
    let f = fx();
    let cases: Vec<(Vec<OutCol>, Vec<&str>)> = vec![
        (
            vec![col("per_policy.pv_profit", Shape::Rows)],
            vec!["'per_policy.pv_profit'", "pv_net_cf"],
        ),
        (
            vec![col("totals.pv_net_cf", Shape::PerChunk(1))],
            vec!["unknown output 'totals'"],
        ),
        (
            vec![col("per_scenario.pv_net_cf", Shape::PerChunk(5))],
            vec!["'per_scenario.pv_net_cf'", "[1]"],
        ),
        (
            vec![col("cashflows.premiums", Shape::PerChunk(120))],
            vec!["'cashflows.premiums'", "120 steps", "612"],
        ),
        (
            vec![col("policy_scenario.pv_net_cf", Shape::RowsBy(3))],
            vec!["'policy_scenario.pv_net_cf'", "[rows, 1]"],
        ),
        (
            vec![OutCol {
                name: "per_policy.policy_id".into(),
                shape: Shape::Rows,
                dtype: livecalc_protocol::DType::Float64,
            }],
            vec!["int64"],
        ),
    ];
    for (outs, needles) in cases {
        assert_error(
            reject(&f.cfg, &f.book, &curve(), &outs),
            "ConfigurationError",
            &needles,
        );
    }
}

#[test]
fn unsupported_table_format_and_engine_lifecycle() {
    let f = fx();
    let cfg = with(
        f.cfg.clone(),
        json!({ "mortality": "tables/mortality.parquet" }),
    );
    assert_error(
        engine("cpp_projection", &cfg).map(|_| ()),
        "InitializationError",
        &["CSV", "parquet"],
    );
    // A failed initialize leaves the engine unable to run.
    let mut e = livecalc_worker_cpp::create("cpp_projection").unwrap();
    use livecalc_worker_host::Engine;
    assert!(e.initialize(&json!({}).to_string(), None).is_err());
    let span = ChunkSpan {
        index: 0,
        row_start: 0,
        row_count: 0,
        total_rows: 0,
    };
    let input = OwnedView::build(span, curve().columns());
    let mut output = OwnedView::build(
        span,
        vec![ColumnData::zeros::<f64>("per_scenario.pv_net_cf", &[1])],
    );
    assert!(run_view(&mut e, &input, &mut output).is_err());
}
