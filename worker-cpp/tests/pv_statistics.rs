//! The statistics engine, on values small enough to rank by hand.

mod common;

use common::*;
use livecalc_protocol::owned_view::{ColumnData, OwnedView};
use livecalc_protocol::{ChunkSpan, EngineError};
use serde_json::json;

fn stats(
    config: serde_json::Value,
    column: &str,
    x: &[f64],
    names: &[&str],
) -> Result<Vec<f64>, EngineError> {
    let mut e = engine("cpp_pv_statistics", &config)?;
    let span = ChunkSpan {
        index: 0,
        row_start: 0,
        row_count: 1,
        total_rows: 1,
    };
    let input = OwnedView::build(
        span,
        vec![ColumnData::new(
            &format!("per_scenario.{column}"),
            &[x.len() as u64],
            x,
        )],
    );
    let mut output = OwnedView::build(
        span,
        names
            .iter()
            .map(|n| ColumnData::zeros::<f64>(&format!("statistics.{n}"), &[1]))
            .collect(),
    );
    run_view(&mut e, &input, &mut output)?;
    Ok(names
        .iter()
        .map(|n| output.column::<f64>(&format!("statistics.{n}"))[0])
        .collect())
}

// Sorted: -10 -3 -1 0 1 2 4 5 7 8. Losses (-x) sorted: -8 -7 -5 -4 -2 -1 0 1 3 10.
const X: [f64; 10] = [5.0, -3.0, 8.0, 1.0, -10.0, 4.0, 0.0, 2.0, -1.0, 7.0];

#[test]
fn moments_and_extremes() {
    let r = stats(
        json!({}),
        "pv_net_cf",
        &X,
        &["mean", "std", "min", "max", "count"],
    )
    .unwrap();
    let mean = 13.0 / 10.0;
    let ss: f64 = X.iter().map(|x| (x - mean) * (x - mean)).sum();
    assert_rel("mean", r[0], 1.3, 1e-15);
    assert_rel("sample std", r[1], (ss / 9.0).sqrt(), 1e-15);
    assert_eq!(&r[2..], &[-10.0, 8.0, 10.0]);
}

#[test]
fn percentiles_interpolate_linearly_between_order_statistics() {
    let r = stats(
        json!({}),
        "pv_net_cf",
        &X,
        &["p0", "p50", "p90", "p99_5", "p100"],
    )
    .unwrap();
    // h = 9 L/100: p50 -> h = 4.5 -> 1 + 0.5 (2 - 1); p90 -> 8.1 -> 7 + 0.1; p99.5 -> 8.955.
    assert_eq!(r[0], -10.0);
    assert_rel("p50", r[1], 1.5, 1e-15);
    assert_rel("p90", r[2], 7.1, 1e-14);
    assert_rel("p99.5", r[3], 7.955, 1e-14);
    assert_eq!(r[4], 8.0);
}

#[test]
fn var_is_the_lower_loss_quantile_and_cte_the_mean_of_the_worst_tail() {
    let r = stats(
        json!({}),
        "pv_net_cf",
        &X,
        &["var75", "var90", "var95", "cte75", "cte90"],
    )
    .unwrap();
    // VaR: the ceil(a S)-th smallest loss: a = .75 -> 8th = 1; .90 -> 9th = 3; .95 -> 10th = 10.
    assert_eq!(&r[..3], &[1.0, 3.0, 10.0]);
    // CTE: worst ceil((1 - a) S) losses: .75 -> 3 -> (10 + 3 + 1) / 3; .90 -> 1 -> 10.
    assert_rel("cte75", r[3], 14.0 / 3.0, 1e-15);
    assert_eq!(r[4], 10.0);
}

#[test]
fn tail_sizes_are_exact_for_decimal_levels() {
    // Losses 0..999. In binary (1 - 0.995) x 1000 = 5.000000000000004, whose ceiling is 6; the
    // engine counts the tail from the decimal level: exactly 5 scenarios, 995, ..., 999.
    let x: Vec<f64> = (0..1000).map(|i| -(i as f64)).collect();
    let r = stats(json!({}), "pv_net_cf", &x, &["cte99_5", "var99_5", "cte99"]).unwrap();
    assert_eq!(r[0], 997.0);
    assert_eq!(r[1], 994.0); // the 995th smallest loss
    assert_eq!(r[2], 994.5); // worst 10: 990..999
}

#[test]
fn another_column_and_a_single_scenario() {
    let r = stats(
        json!({ "column": "pv_claims" }),
        "pv_claims",
        &[42.0],
        &["mean", "std", "p50", "cte99_5", "var50"],
    )
    .unwrap();
    assert_eq!(r[0], 42.0);
    assert!(r[1].is_nan(), "the sample std of one value is undefined");
    assert_eq!(&r[2..], &[42.0, -42.0, -42.0]);
}

#[test]
fn unknown_statistics_and_bad_inputs_are_rejected() {
    for bad in ["median", "p101", "cte100", "var0", "p5_", "cte_5", "pabc"] {
        assert_error(
            stats(json!({}), "pv_net_cf", &X, &[bad]),
            "ConfigurationError",
            &[bad, "unknown statistic"],
        );
    }
    assert_error(
        stats(json!({ "level": 3 }), "pv_net_cf", &X, &["mean"]),
        "ConfigurationError",
        &["'level'"],
    );
    assert_error(
        stats(json!({}), "pv_claims", &X, &["mean"]),
        "ConfigurationError",
        &["'pv_net_cf'"],
    );
    let mut nan = X.to_vec();
    nan[4] = f64::NAN;
    assert_error(
        stats(json!({}), "pv_net_cf", &nan, &["mean"]),
        "ExecutionError",
        &["row 4", "'pv_net_cf'"],
    );

    let mut e = engine("cpp_pv_statistics", &json!({})).unwrap();
    let span = ChunkSpan {
        index: 0,
        row_start: 0,
        row_count: 1,
        total_rows: 1,
    };
    let input = OwnedView::build(
        span,
        vec![ColumnData::new("per_scenario.pv_net_cf", &[10], &X)],
    );
    let mut out = OwnedView::build(span, vec![ColumnData::zeros::<f64>("summary.mean", &[1])]);
    assert_error(
        run_view(&mut e, &input, &mut out),
        "ConfigurationError",
        &["unknown output 'summary'"],
    );
    let mut out = OwnedView::build(
        span,
        vec![ColumnData::zeros::<f64>("statistics.mean", &[2])],
    );
    assert_error(
        run_view(&mut e, &input, &mut out),
        "ConfigurationError",
        &["shape [1]"],
    );
}
