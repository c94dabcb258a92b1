//! Properties the model must have whatever the data, and the determinism guarantees: chunk-size
//! invariance, bit-identical results on every instruction set, state that never leaks from one
//! chunk, scenario set or initialize call into the next.

mod common;

use common::reference::{lapse_csv, Mortality};
use common::*;
use livecalc_worker_host::Engine;
use rstest::rstest;
use serde_json::{json, Value};

fn random_book(rng: &mut Rng, n: usize) -> Book {
    let mut b = Book::of(&[]);
    for i in 0..n {
        let product = rng.int(0, 2) as i32;
        let term = rng.int(1, 25) as i32;
        let age = rng.int(20, 60) as i32;
        let months = if product == WHOLE_LIFE {
            12 * (100 - age)
        } else {
            12 * term
        };
        let dur = if rng.uniform() < 0.5 {
            0
        } else {
            rng.int(0, months as i64 - 1) as i32
        };
        b.push(
            i as i64 * 3 + 7,
            &P {
                age,
                sex: rng.int(0, 1) as i32,
                term,
                sa: rng.range(5e3, 5e5),
                product,
                count: rng.range(0.5, 3.0),
                premium: rng.range(50.0, 3000.0),
                dur,
            },
        );
    }
    b
}

struct Fixture {
    _dir: TempDir,
    base: Value,
    book: Book,
    scen: Scenarios,
}

/// A book of 300 policies, 13 ESG scenarios, select mortality with sex, a lapse table and
/// every expense item.
fn fixture(seed: u64) -> Fixture {
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("prop");
    let mort = dir.write(
        "mortality.csv",
        &Mortality::synthetic(18, 105, 4, true).csv(),
    );
    let lapse = dir.write("lapse.csv", &lapse_csv(&[0.15, 0.1, 0.08, 0.06, 0.05]));
    let base = json!({
        "mortality": mort, "lapse": lapse, "whole_life_max_age": 99,
        "expenses": { "acquisition": 250, "maintenance": 60, "premium_rate": 0.03, "per_claim": 80, "inflation": 0.02 },
        "commission": { "first_year_rate": 0.4, "renewal_rate": 0.025 },
    });
    let book = random_book(&mut rng, 300);
    let scen = Scenarios::random_esg(&mut rng, 13, 1000, 12);
    Fixture {
        _dir: dir,
        base,
        book,
        scen,
    }
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn dynamic() -> Value {
    json!({ "dynamic_lapse": { "k": 3.0, "r_ref": 0.03, "lo": 0.5, "hi": 2.0 } })
}

fn outs(f: &Fixture) -> Vec<OutCol> {
    all_outputs(f.scen.count(), 1000)
}

#[test]
fn no_decrements_and_no_expenses_give_premium_times_annuity_factor() {
    let f = fixture(11);
    let dir = TempDir::new("prop");
    let mort = dir.write("zero.csv", &Mortality::flat(18, 105, 0.0).csv());
    let mut book = f.book.clone();
    book.product
        .iter_mut()
        .filter(|p| **p == ENDOWMENT)
        .for_each(|p| *p = TERM);
    let cfg = json!({ "mortality": mort, "whole_life_max_age": 99 });
    let r = run(&cfg, &book, &f.scen, &outs(&f), 50).unwrap();
    let Scenarios::Esg { s, cols, df, .. } = &f.scen else {
        unreachable!()
    };
    for i in 0..book.len() {
        let p = book.get(i);
        let n = if p.product == WHOLE_LIFE {
            12 * (100 - p.age) - p.dur
        } else {
            12 * p.term - p.dur
        } as usize;
        // Annuity-due factor of n monthly payments, averaged over the scenarios.
        let annuity: f64 = (0..*s)
            .map(|sc| (0..n).map(|t| df[sc * cols + t]).sum::<f64>())
            .sum::<f64>()
            / *s as f64;
        let want = p.count * p.premium / 12.0 * annuity;
        assert_rel(
            &format!("policy {i}"),
            r.f("per_policy.pv_premiums")[i],
            want,
            1e-12,
        );
        assert_rel(
            &format!("policy {i} net"),
            r.f("per_policy.pv_net_cf")[i],
            want,
            1e-12,
        );
        assert_eq!(r.f("per_policy.pv_claims")[i], 0.0);
    }
}

#[rstest]
fn present_values_are_linear_in_the_premium_multiplier(#[values(false, true)] dyn_lapse: bool) {
    let f = fixture(12);
    let base = if dyn_lapse {
        with(f.base.clone(), dynamic())
    } else {
        f.base.clone()
    };
    let at = |m: f64| {
        run(
            &with(base.clone(), json!({ "multipliers": { "premium": m } })),
            &f.book,
            &f.scen,
            &outs(&f),
            64,
        )
        .unwrap()
    };
    let (r0, r1, rl) = (at(0.0), at(1.0), at(1.37));
    for name in ["pv_premiums", "pv_commissions"] {
        for (k, (a, b)) in rl
            .f(&format!("per_policy.{name}"))
            .iter()
            .zip(r1.f(&format!("per_policy.{name}")))
            .enumerate()
        {
            assert_rel(&format!("{name} of policy {k}"), *a, 1.37 * b, 1e-12);
        }
        assert!(r0
            .f(&format!("per_policy.{name}"))
            .iter()
            .all(|v| *v == 0.0));
    }
    // Claims do not depend on the premium; expenses and the net PV are affine in it.
    assert_eq!(r0.f("per_policy.pv_claims"), rl.f("per_policy.pv_claims"));
    for name in ["pv_expenses", "pv_net_cf"] {
        for level in ["per_policy", "per_scenario"] {
            let key = format!("{level}.{name}");
            for k in 0..r0.f(&key).len() {
                let (y0, y1, yl) = (r0.f(&key)[k], r1.f(&key)[k], rl.f(&key)[k]);
                let scale = r1.f(&format!("{level}.pv_premiums"))[k]
                    + r1.f(&format!("{level}.pv_claims"))[k]
                    + y0.abs();
                assert_close(
                    &format!("{key}[{k}]"),
                    yl,
                    y0 + 1.37 * (y1 - y0),
                    1e-12,
                    scale,
                );
            }
        }
    }
}

#[rstest]
fn doubling_policy_count_doubles_every_result_exactly(
    #[values(false, true)] dyn_lapse: bool,
    #[values(false, true)] equivalence: bool,
) {
    let f = fixture(13);
    let mut cfg = if dyn_lapse {
        with(f.base.clone(), dynamic())
    } else {
        f.base.clone()
    };
    if equivalence {
        cfg = with(
            cfg,
            json!({ "premium_basis": "equivalence", "pricing": { "loading": 0.1, "scenario": 2 } }),
        );
    }
    let mut doubled = f.book.clone();
    doubled
        .policy_count
        .as_mut()
        .unwrap()
        .iter_mut()
        .for_each(|c| *c *= 2.0);
    let a = run(&cfg, &f.book, &f.scen, &outs(&f), 77).unwrap();
    let b = run(&cfg, &doubled, &f.scen, &outs(&f), 77).unwrap();
    for (k, va) in &a.f {
        let vb = &b.f[k];
        // Premiums per policy are per policy: they do not scale.
        let factor = if k.contains("premium_per_step") || k == "per_policy.premium" {
            1.0
        } else {
            2.0
        };
        for (j, (x, y)) in va.iter().zip(vb).enumerate() {
            assert_eq!(factor * x, *y, "{k}[{j}]");
        }
    }
}

#[rstest]
fn dynamic_lapse_with_zero_sensitivity_equals_the_static_projection(
    #[values(false, true)] equivalence: bool,
) {
    let f = fixture(14);
    let mut cfg = with(
        f.base.clone(),
        json!({ "timing": { "claims": "mid", "expenses": "end" } }),
    );
    if equivalence {
        cfg = with(
            cfg,
            json!({ "premium_basis": "equivalence", "pricing": { "loading": 0.05 } }),
        );
    }
    let flat = with(
        cfg.clone(),
        json!({ "dynamic_lapse": { "k": 0.0, "r_ref": 0.03 } }),
    );
    let a = run(&cfg, &f.book, &f.scen, &outs(&f), 100).unwrap();
    let b = run(&flat, &f.book, &f.scen, &outs(&f), 100).unwrap();
    assert_eq!(
        a.f("per_policy.premium_per_step"),
        b.f("per_policy.premium_per_step")
    );
    for (k, va) in &a.f {
        let vb = &b.f[k];
        for (j, (x, y)) in va.iter().zip(vb).enumerate() {
            // Differences of flows are compared on the scale of the flows (net) or of the in-force (lapses).
            let scale = if k.ends_with("net_cf") {
                1e7
            } else if k.ends_with("lapses") {
                1e3
            } else {
                0.0
            };
            assert_close(&format!("{k}[{j}]"), *y, *x, 1e-12, scale);
        }
    }
}

#[rstest]
fn results_do_not_depend_on_the_chunk_size(#[values(false, true)] dyn_lapse: bool) {
    let f = fixture(15);
    let cfg = if dyn_lapse {
        with(f.base.clone(), dynamic())
    } else {
        f.base.clone()
    };
    let whole = run(&cfg, &f.book, &f.scen, &outs(&f), f.book.len()).unwrap();
    for chunk in [1, 13, 64, 299] {
        let r = run(&cfg, &f.book, &f.scen, &outs(&f), chunk).unwrap();
        // Per-policy results are computed per policy: identical to the last bit.
        for (k, v) in &whole.f {
            if k.starts_with("per_policy") || k.starts_with("policy_scenario") {
                assert!(
                    v.iter()
                        .zip(&r.f[k])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{k} differs at chunk size {chunk}"
                );
            } else {
                // Chunk totals are added by the supervisor, so only the grouping of one sum changes.
                for (j, (a, b)) in v.iter().zip(&r.f[k]).enumerate() {
                    assert_close(
                        &format!("{k}[{j}] at chunk size {chunk}"),
                        *b,
                        *a,
                        1e-12,
                        1e6,
                    );
                }
            }
        }
        assert_eq!(whole.i, r.i);
    }
    // The same chunking twice: bit-identical (no state carried between chunks or runs).
    let again = run(&cfg, &f.book, &f.scen, &outs(&f), 13).unwrap();
    assert_identical(
        "rerun",
        &run(&cfg, &f.book, &f.scen, &outs(&f), 13).unwrap(),
        &again,
    );
}

#[rstest]
fn every_instruction_set_gives_bit_identical_results(
    #[values(false, true)] dyn_lapse: bool,
    #[values("start", "end")] commission_timing: &str,
    #[values("start", "mid")] expense_timing: &str,
    #[values(false, true)] capped_lapses: bool,
) {
    let f = fixture(16);
    let mut cfg = with(
        f.base.clone(),
        json!({ "timing": { "commissions": commission_timing, "expenses": expense_timing } }),
    );
    if dyn_lapse {
        cfg = with(cfg, dynamic());
    }
    if capped_lapses {
        // Lapse rates near 1 so that w F > 1 somewhere: the kernels' cap on lapses is in play.
        cfg = with(cfg, json!({ "multipliers": { "lapse": 7.0 } }));
    }
    let mut results = Vec::new();
    for simd in ["sse2", "avx2", "avx512"] {
        match run(
            &with(cfg.clone(), json!({ "simd": simd })),
            &f.book,
            &f.scen,
            &outs(&f),
            100,
        ) {
            Ok(r) => results.push((simd, r)),
            Err(e) if e.message.contains("does not support") => {
                eprintln!("skipping {simd}: {}", e.message)
            }
            Err(e) => panic!("{simd}: {}", error_text(&e)),
        }
    }
    for (simd, r) in &results[1..] {
        assert_identical(&format!("{simd} vs {}", results[0].0), r, &results[0].1);
    }
    // Without cash flows the dynamic kernel takes another specialisation: check it too.
    let pv_only: Vec<OutCol> = outs(&f)
        .into_iter()
        .filter(|c| !c.name.starts_with("cashflows"))
        .collect();
    let a = run(
        &with(cfg.clone(), json!({ "simd": "sse2" })),
        &f.book,
        &f.scen,
        &pv_only,
        100,
    )
    .unwrap();
    let b = run(
        &with(cfg, json!({ "simd": "auto" })),
        &f.book,
        &f.scen,
        &pv_only,
        100,
    )
    .unwrap();
    assert_identical("sse2 vs auto without cash flows", &a, &b);
}

#[test]
fn reinitialize_with_new_multipliers_matches_a_fresh_engine() {
    let f = fixture(17);
    let cfg = |m: f64| {
        with(
            f.base.clone(),
            json!({ "multipliers": { "mortality": m, "lapse": 2.0 - m } }),
        )
    };
    let mut e = engine("cpp_projection", &cfg(1.0)).unwrap();
    let first = run_chunks(&mut e, &f.book, &f.scen, &outs(&f), 100).unwrap();
    for m in [1.3, 0.7, 1.0] {
        e.initialize(&cfg(m).to_string(), None).unwrap();
        let reused = run_chunks(&mut e, &f.book, &f.scen, &outs(&f), 100).unwrap();
        let fresh = run(&cfg(m), &f.book, &f.scen, &outs(&f), 100).unwrap();
        assert_identical(&format!("multiplier {m}"), &reused, &fresh);
    }
    assert_identical(
        "back to the start",
        &first,
        &run_chunks(&mut e, &f.book, &f.scen, &outs(&f), 100).unwrap(),
    );
}

#[test]
fn a_changed_table_file_is_read_again() {
    let f = fixture(18);
    let dir = TempDir::new("prop");
    let path = dir.write("m.csv", &Mortality::flat(18, 105, 0.01).csv());
    let cfg = with(f.base.clone(), json!({ "mortality": path }));
    let mut e = engine("cpp_projection", &cfg).unwrap();
    let a = run_chunks(&mut e, &f.book, &f.scen, &outs(&f), 300).unwrap();
    dir.write("m.csv", &Mortality::flat(18, 105, 0.02).csv());
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    e.initialize(&cfg.to_string(), None).unwrap();
    let b = run_chunks(&mut e, &f.book, &f.scen, &outs(&f), 300).unwrap();
    let (ca, cb): (f64, f64) = (
        a.f("per_policy.pv_claims").iter().sum(),
        b.f("per_policy.pv_claims").iter().sum(),
    );
    assert!(cb > 1.5 * ca, "doubled mortality must show: {ca} then {cb}");
}

#[test]
fn switching_scenario_sets_on_one_engine_never_reuses_stale_tables() {
    let f = fixture(19);
    let mut rng = Rng::new(99);
    let other = Scenarios::random_esg(&mut rng, 13, 1000, 12);
    let cfg = with(f.base.clone(), dynamic());
    let mut e = engine("cpp_projection", &cfg).unwrap();
    let a1 = run_chunks(&mut e, &f.book, &f.scen, &outs(&f), 150).unwrap();
    let b1 = run_chunks(&mut e, &f.book, &other, &outs(&f), 150).unwrap();
    let a2 = run_chunks(&mut e, &f.book, &f.scen, &outs(&f), 150).unwrap();
    assert_identical("first set again", &a1, &a2);
    assert_identical(
        "second set",
        &b1,
        &run(&cfg, &f.book, &other, &outs(&f), 150).unwrap(),
    );
    assert_ne!(
        a1.f("per_scenario.pv_net_cf"),
        b1.f("per_scenario.pv_net_cf")
    );
}

#[test]
fn config_sections_may_be_nested_objects_or_dotted_keys() {
    let f = fixture(20);
    let mut dotted = json!({});
    for (section, v) in f.base.as_object().unwrap() {
        match v.as_object() {
            Some(o) => o
                .iter()
                .for_each(|(k, x)| dotted[format!("{section}.{k}")] = x.clone()),
            None => dotted[section] = v.clone(),
        }
    }
    let a = run(&f.base, &f.book, &f.scen, &outs(&f), 300).unwrap();
    let b = run(&dotted, &f.book, &f.scen, &outs(&f), 300).unwrap();
    assert_identical("nested vs dotted", &a, &b);
}

#[test]
fn an_empty_chunk_writes_zeros() {
    let f = fixture(21);
    let empty = Book::of(&[]);
    let r = run(&f.base, &empty, &f.scen, &outs(&f), 10).unwrap();
    assert!(r.f("per_scenario.pv_net_cf").iter().all(|v| *v == 0.0));
    assert!(r.f("cashflows.premiums").iter().all(|v| *v == 0.0));
    assert!(r.f("per_policy.pv_net_cf").is_empty());
}
