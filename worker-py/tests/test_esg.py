"""Tests of the economic scenario generator (livecalc.engines.esg).

Statistical checks compare a Monte Carlo mean with its target in units of the Monte Carlo
standard error (SE) and accept |error| <= 4 SE. Each such check sits next to a power check: the
same statistic computed for a plausible wrong model (no convexity term, Euler-type integral,
mis-stated variance) must land far outside 4 SE with the same scenarios, so a check cannot pass
because the scenarios are too few to see an error. Seeds are fixed, so every run is the same run.

Formulas that judge the engine (variances, covariances, bond prices) are computed here
independently, by quadrature or from textbook closed forms, not with the engine's helpers.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from scipy import integrate

from livecalc import Chunk, ConfigurationError, ExecutionError, InitializationError, build_view, outputs
from livecalc.engines import esg
from livecalc.engines.esg import (DF_COLUMN, EQUITY_COLUMN, ID_COLUMN, RATE_COLUMN, TIME_COLUMN, EsgEngine,
                                  generate)

# An upward-sloping 50-year curve, so that the fit to a non-flat curve is what is tested.
SPOTS = [0.01 + 0.03 * (1.0 - math.exp(-n / 10.0)) for n in range(1, 51)]
HW = {
    "model": "hull_white", "seed": 20240611, "horizon_years": 50, "steps_per_year": 12,
    "curve": {"spot": SPOTS}, "a": 0.1, "sigma": 0.015,
    "equity": {"sigma": 0.2, "rho": 0.35},
}
MATURITIES = (1, 5, 10, 20, 30, 50)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def columns(rows: int, points: int, equity: bool = True, grid: bool = True):
    cols = {RATE_COLUMN: np.zeros((rows, points)), DF_COLUMN: np.zeros((rows, points))}
    if equity:
        cols[EQUITY_COLUMN] = np.zeros((rows, points))
    cols[ID_COLUMN] = np.zeros(rows, np.int64)
    if grid:
        cols[TIME_COLUMN] = np.zeros(points)
    return cols


def run(config, total, chunks=None, equity=True, engine=None):
    """Run the engine over ``chunks`` [(start, count), ...] (default: one chunk), in the given
    order, and assemble full columns keyed by short name."""
    engine = engine or EsgEngine()
    if not engine.is_initialized:
        engine.initialize(config)
    points = engine.settings.steps + 1
    chunks = chunks or [(0, total)]
    full = {}
    for index, (start, count) in enumerate(chunks):
        buf = build_view(columns(count, points, equity), Chunk(index, start, count, total))
        result = engine.runChunk(None, buf)
        assert result["rows_processed"] == count
        for name, arr in outputs(buf).items():
            short = name.split(".", 1)[1]
            if short == "time":
                full.setdefault(short, np.array(arr))
                continue
            dst = full.setdefault(short, np.zeros((total,) + arr.shape[1:], arr.dtype))
            dst[start:start + count] = arr
    return full


def hw_forward(spots, t):
    """Instantaneous forward of the flat-forward interpolation of annual spot rates."""
    ln_p = np.concatenate(([0.0], -np.arange(1, len(spots) + 1) * np.log1p(spots)))
    idx = np.minimum(np.floor(t).astype(int), len(spots) - 1)
    return ln_p[idx] - ln_p[idx + 1]


def curve_p(spots, t):
    ln_p = np.concatenate(([0.0], -np.arange(1, len(spots) + 1) * np.log1p(spots)))
    return np.exp(np.interp(t, np.arange(len(ln_p)), ln_p))


def big_b(a, t):
    return (1.0 - np.exp(-a * t)) / a


def var_integral(a, sigma, t):
    """Var of the integral of an OU factor over [0, t], from sigma^2 * integral of B(v)^2."""
    return sigma ** 2 * integrate.quad(lambda v: big_b(a, v) ** 2, 0.0, t)[0]


def step_cov(a, sigma, h, s_eq, rho):
    """Covariance of (e_x, e_I, s * dW_S) over one step, by quadrature of the Ito isometry."""
    q = lambda f: integrate.quad(f, 0.0, h, epsabs=1e-15, epsrel=1e-12)[0]
    vx = sigma ** 2 * q(lambda v: math.exp(-2 * a * v))
    vi = sigma ** 2 * q(lambda v: big_b(a, v) ** 2)
    cxi = sigma ** 2 * q(lambda v: math.exp(-a * v) * big_b(a, v))
    cxw = s_eq * rho * sigma * q(lambda v: math.exp(-a * v))
    ciw = s_eq * rho * sigma * q(lambda v: big_b(a, v))
    return np.array([[vx, cxi, cxw], [cxi, vi, ciw], [cxw, ciw, s_eq ** 2 * h]])


def within(estimate, target, se, k=4.0):
    return abs(estimate - target) <= k * se


# ----------------------------------------------------------------------------------------------
# Shared runs (module scope: each is paid for once)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def monthly():
    """20,000 Hull-White scenarios, monthly, 50 years, correlated equity."""
    return run(HW, 20_000)


@pytest.fixture(scope="module")
def annual():
    """100,000 Hull-White scenarios on an annual grid: big steps make a discretisation error loud."""
    cfg = dict(HW, steps_per_year=1, a=0.3, sigma=0.02, equity={"sigma": 0.25, "rho": -0.5}, seed=7)
    return cfg, run(cfg, 100_000)


# ----------------------------------------------------------------------------------------------
# The curve is repriced, for any step size
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["monthly", "annual"])
def test_expected_discount_factor_reprices_the_curve(which, monthly, annual):
    cfg, out = (HW, monthly) if which == "monthly" else annual
    m = cfg["steps_per_year"]
    a, sigma = cfg["a"], cfg["sigma"]
    for T in MATURITIES:
        p = curve_p(SPOTS, T)
        ratio = out["discount_factor"][:, T * m] / p
        se = ratio.std(ddof=1) / math.sqrt(ratio.size)
        assert within(ratio.mean(), 1.0, se), (which, T, ratio.mean(), se)
        if T >= 10:
            # Power: leaving out the convexity term exp(-V/2) is detected with these scenarios.
            wrong = ratio * math.exp(0.5 * var_integral(a, sigma, T))
            assert not within(wrong.mean(), 1.0, se), (which, T)


def test_a_grid_integral_of_the_short_rate_would_fail(annual):
    """Power of the repricing check against discretisation: a scheme that knows r only on the
    grid and integrates it by the trapezoid rule misprices the curve on an annual grid, by far
    more than 4 SE at every maturity."""
    cfg, out = annual
    r = out["short_rate"]
    grid_df = np.exp(-np.cumsum(0.5 * (r[:, :-1] + r[:, 1:]), axis=1))
    for T in MATURITIES:
        ratio = grid_df[:, T - 1] / curve_p(SPOTS, T)
        se = ratio.std(ddof=1) / math.sqrt(ratio.size)
        assert not within(ratio.mean(), 1.0, se), T


def test_zero_volatility_gives_the_curve_exactly():
    cfg = dict(HW, sigma=0.0, equity={"sigma": 0.0})
    out = run(cfg, 3)
    t = out["time"]
    np.testing.assert_allclose(out["discount_factor"], np.broadcast_to(curve_p(SPOTS, t), (3, t.size)), rtol=1e-13)
    np.testing.assert_allclose(out["short_rate"][0], hw_forward(SPOTS, t), rtol=1e-13)
    np.testing.assert_allclose(out["equity_index"] * out["discount_factor"], 1.0, rtol=1e-13)


# ----------------------------------------------------------------------------------------------
# Factor moments, equity, correlation
# ----------------------------------------------------------------------------------------------

def test_factor_mean_and_variance(monthly):
    a, sigma = HW["a"], HW["sigma"]
    t = monthly["time"]
    alpha = hw_forward(SPOTS, t) + 0.5 * sigma ** 2 * big_b(a, t) ** 2
    x = monthly["short_rate"] - alpha
    n = x.shape[0]
    for T in (0.5, 1, 5, 10, 30, 50):
        k = int(round(T * 12))
        xs = x[:, k]
        var = sigma ** 2 * (1 - math.exp(-2 * a * T)) / (2 * a)
        assert within(xs.mean(), 0.0, math.sqrt(var / n)), T
        se_var = var * math.sqrt(2.0 / (n - 1))
        assert within(xs.var(ddof=1), var, se_var), T
        # Power: a random-walk (Ho-Lee) variance sigma^2 T would be rejected from 5 years on.
        if T >= 5:
            assert not within(xs.var(ddof=1), sigma ** 2 * T, se_var), T


def test_equity_martingale(monthly):
    for T in MATURITIES:
        k = T * 12
        ds = monthly["discount_factor"][:, k] * monthly["equity_index"][:, k]
        se = ds.std(ddof=1) / math.sqrt(ds.size)
        assert within(ds.mean(), 1.0, se), (T, ds.mean(), se)
        if T >= 10:
            # Power: deflating by the initial curve instead of the path's discount factor.
            wrong = monthly["equity_index"][:, k] * curve_p(SPOTS, T)
            assert not within(wrong.mean(), 1.0, wrong.std(ddof=1) / math.sqrt(ds.size)), T


def test_risk_premium_drifts_the_deflated_index():
    cfg = dict(HW, horizon_years=20, equity={"sigma": 0.2, "rho": 0.35, "risk_premium": 0.03}, seed=99)
    out = run(cfg, 20_000)
    for T in (5, 10, 20):
        ds = out["discount_factor"][:, T * 12] * out["equity_index"][:, T * 12]
        se = ds.std(ddof=1) / math.sqrt(ds.size)
        assert within(ds.mean(), math.exp(0.03 * T), se), T
        assert not within(ds.mean(), 1.0, se), T


def test_standard_deviation_of_equity_log_returns(monthly):
    a, sigma = HW["a"], HW["sigma"]
    s, rho = HW["equity"]["sigma"], HW["equity"]["rho"]
    n = monthly["equity_index"].shape[0]
    for T in (1, 10, 30, 50):
        log_s = np.log(monthly["equity_index"][:, T * 12])
        var = var_integral(a, sigma, T) + s * s * T + 2 * rho * s * sigma * integrate.quad(
            lambda v: big_b(a, v), 0, T)[0]
        sd = log_s.std(ddof=1)
        se = math.sqrt(var) / math.sqrt(2.0 * (n - 1))
        assert within(sd, math.sqrt(var), se), (T, sd, math.sqrt(var))
        # Power: ignoring the rate/equity covariance is detected from 10 years on.
        if T >= 10:
            assert not within(sd, math.sqrt(var_integral(a, sigma, T) + s * s * T), se), T
    # Excess log return over one step: exactly s * sqrt(h).
    excess = (np.diff(np.log(monthly["equity_index"][:, :121]), axis=1)
              + np.diff(np.log(monthly["discount_factor"][:, :121]), axis=1) + 0.5 * s * s / 12)
    se = (s / math.sqrt(12)) / math.sqrt(2.0 * (excess.size - 1))
    assert within(excess.std(ddof=1), s / math.sqrt(12), se)


def shocks(cfg, out, steps=None):
    """Per-step (e_x, e_I, s dW_S) recovered from the outputs, pooled over scenarios and steps."""
    a, sigma, m = cfg["a"], cfg["sigma"], cfg["steps_per_year"]
    s = cfg["equity"]["sigma"]
    h = 1.0 / m
    cols = slice(0, None if steps is None else steps + 1)
    t = out["time"][cols]
    ln_d = np.log(out["discount_factor"][:, cols])
    x = out["short_rate"][:, cols] - (hw_forward(SPOTS, t) + 0.5 * sigma ** 2 * big_b(a, t) ** 2)
    v = np.array([var_integral(a, sigma, ti) for ti in t])
    y = np.log(curve_p(SPOTS, t)) - 0.5 * v - ln_d
    e_x = x[:, 1:] - math.exp(-a * h) * x[:, :-1]
    e_i = np.diff(y, axis=1) - big_b(a, h) * x[:, :-1]
    # ln S = -ln D - s^2 t / 2 + s W_S
    e_w = np.diff(np.log(out["equity_index"][:, cols]), axis=1) + np.diff(ln_d, axis=1) + 0.5 * s * s * h
    return np.stack([e_x.ravel(), e_i.ravel(), e_w.ravel()])


def test_step_covariance_is_the_exact_one(annual):
    """x and its integral are drawn jointly and exactly: on an annual grid the sample covariance
    of the step shocks matches the Ito-isometry covariance entry by entry (an Euler scheme would
    have no integral noise at all)."""
    cfg, out = annual
    e = shocks(cfg, out)
    n = e.shape[1]
    target = step_cov(cfg["a"], cfg["sigma"], 1.0, cfg["equity"]["sigma"], cfg["equity"]["rho"])
    sample = np.cov(e)
    for i in range(3):
        for j in range(i, 3):
            se = math.sqrt((target[i, i] * target[j, j] + target[i, j] ** 2) / n)
            assert within(sample[i, j], target[i, j], se), (i, j, sample[i, j], target[i, j])
    # Power: the Euler moments (Var e_I = 0, Cov(e_x, e_I) = 0) are far outside 4 SE.
    se_ii = math.sqrt(2 * target[1, 1] ** 2 / n)
    assert not within(sample[1, 1], 0.0, se_ii)
    # The shocks are centred.
    for i in range(3):
        assert within(e[i].mean(), 0.0, math.sqrt(target[i, i] / n)), i


def test_correlation_of_the_shocks_is_rho(monthly):
    e = shocks(HW, monthly, steps=120)
    a, sigma, h = HW["a"], HW["sigma"], 1.0 / 12
    rho = HW["equity"]["rho"]
    corr = np.corrcoef(e[0], e[2])[0, 1]
    # Over a step, corr(e_x, dW_S) = rho * B(h) / sqrt(h * Var e_x), which is rho to 1e-5 monthly.
    exact = rho * big_b(a, h) / math.sqrt(h * (1 - math.exp(-2 * a * h)) / (2 * a))
    assert abs(exact / rho - 1) < 1e-5
    se = (1 - exact ** 2) / math.sqrt(e.shape[1])
    assert within(corr, exact, se), (corr, exact, se)
    assert not within(corr, rho + 0.01, se)


# ----------------------------------------------------------------------------------------------
# Other models
# ----------------------------------------------------------------------------------------------

def test_vasicek_bond_price():
    a, sigma, theta, r0 = 0.25, 0.02, 0.04, 0.01
    cfg = {"model": "vasicek", "seed": 3, "horizon_years": 30, "steps_per_year": 1,
           "a": a, "sigma": sigma, "theta": theta, "r0": r0}
    out = run(cfg, 100_000, equity=False)
    for T in (1, 5, 10, 30):
        price = math.exp(-theta * T - (r0 - theta) * big_b(a, T) + 0.5 * var_integral(a, sigma, T))
        d = out["discount_factor"][:, T] / price
        se = d.std(ddof=1) / math.sqrt(d.size)
        assert within(d.mean(), 1.0, se), T
        r = out["short_rate"][:, T]
        mean = theta + (r0 - theta) * math.exp(-a * T)
        sd = sigma * math.sqrt((1 - math.exp(-2 * a * T)) / (2 * a))
        assert within(r.mean(), mean, sd / math.sqrt(r.size)), T
        assert within(r.std(ddof=1), sd, sd / math.sqrt(2 * (r.size - 1))), T


def cir_price(a, theta, sigma, r0, T):
    g = math.sqrt(a * a + 2 * sigma * sigma)
    den = (g + a) * (math.exp(g * T) - 1) + 2 * g
    b = 2 * (math.exp(g * T) - 1) / den
    big_a = (2 * g * math.exp((a + g) * T / 2) / den) ** (2 * a * theta / sigma ** 2)
    return big_a * math.exp(-b * r0)


def test_cir_rates_stay_non_negative_and_price_bonds():
    a, sigma, theta, r0 = 0.5, 0.1, 0.04, 0.03
    cfg = {"model": "cir", "seed": 5, "horizon_years": 20, "steps_per_year": 12,
           "a": a, "sigma": sigma, "theta": theta, "r0": r0, "equity": {"sigma": 0.2, "rho": 0.3}}
    engine = EsgEngine()
    engine.initialize(cfg)
    out = run(cfg, 20_000, engine=engine)
    assert (out["short_rate"] >= 0).all()
    for T in (1, 5, 10, 20):
        d = out["discount_factor"][:, T * 12] / cir_price(a, theta, sigma, r0, T)
        se = d.std(ddof=1) / math.sqrt(d.size)
        # Full truncation with a trapezoid integral is a discretisation: allow its O(h) bias
        # (measured below 1e-3 here) on top of 4 SE.
        assert abs(d.mean() - 1.0) <= 4 * se + 1e-3, (T, d.mean(), se)
        ds = out["discount_factor"][:, T * 12] * out["equity_index"][:, T * 12]
        assert within(ds.mean(), 1.0, ds.std(ddof=1) / math.sqrt(ds.size)), T


def test_cir_warns_when_the_feller_condition_fails():
    cfg = {"model": "cir", "seed": 1, "horizon_years": 2, "a": 0.1, "sigma": 0.2, "theta": 0.02, "r0": 0.01}
    engine = EsgEngine()
    engine.initialize(cfg)
    buf = build_view(columns(10, 25), Chunk(0, 0, 10, 10))
    result = engine.runChunk(None, buf)
    assert any("Feller" in w for w in result["warnings"])
    assert (outputs(buf)[RATE_COLUMN] >= 0).all()


def test_deterministic_curve_follows_the_projection_formula():
    spots = [0.01, 0.02, 0.03]
    cfg = {"model": "deterministic", "horizon_years": 3, "steps_per_year": 12, "curve": {"spot": spots},
           "equity": {"risk_premium": 0.01}}
    out = run(cfg, 2)
    for k in range(37):
        idx = min(k // 12, 2)  # t = 3 exactly: the 3-year curve covers the 3-year horizon
        assert out["discount_factor"][0, k] == pytest.approx((1 + spots[idx]) ** (-k / 12), rel=1e-15)
        assert out["short_rate"][1, k] == pytest.approx(math.log1p(spots[idx]), rel=1e-15)
    assert out["discount_factor"][0, 12] == pytest.approx(1.02 ** -1)
    np.testing.assert_allclose(out["equity_index"] * out["discount_factor"], np.exp(0.01 * out["time"])[None, :].repeat(2, 0), rtol=1e-14)


def test_deterministic_rate_paths_from_csv(tmp_path):
    rates = {0: [0.01, 0.02, 0.03], 1: [0.05, 0.04, 0.03], 2: [0.0, 0.0, 0.1]}
    lines = ["scenario_id,year,rate"] + [f"{s},{y + 1},{r}" for s in (2, 0, 1) for y, r in enumerate(rates[s])]
    path = tmp_path / "paths.csv"
    path.write_text("\n".join(lines) + "\n")
    cfg = {"model": "deterministic", "horizon_years": 3, "steps_per_year": 12, "paths": str(path)}
    out = run(cfg, 3, chunks=[(1, 2), (0, 1)])
    assert out["scenario_id"].tolist() == [0, 1, 2]
    for s, rs in rates.items():
        df = 1.0
        for y in range(3):
            assert out["discount_factor"][s, 12 * y] == pytest.approx(df, rel=1e-14)
            assert out["discount_factor"][s, 12 * y + 6] == pytest.approx(df * (1 + rs[y]) ** -0.5, rel=1e-14)
            assert out["short_rate"][s, 12 * y + 3] == pytest.approx(math.log1p(rs[y]), rel=1e-14)
            df /= 1 + rs[y]
        assert out["discount_factor"][s, 36] == pytest.approx(df, rel=1e-14)
    engine = EsgEngine()
    engine.initialize(cfg)
    with pytest.raises(ConfigurationError, match="'paths' holds 3 scenarios but the node has 4 rows"):
        engine.runChunk(None, build_view(columns(4, 37), Chunk(0, 0, 4, 4)))


def test_curve_from_csv_in_any_row_order(tmp_path):
    path = tmp_path / "curve.csv"
    path.write_text("year,spot\n" + "".join(f"{y},{SPOTS[y - 1]}\n" for y in reversed(range(1, 51))))
    by_csv = run(dict(HW, curve={"csv": str(path)}), 50)
    by_list = run(HW, 50)
    for k in by_list:
        assert np.array_equal(by_csv[k], by_list[k]), k


@pytest.mark.parametrize("rule", ["flat_forward", "flat_spot"])
def test_extrapolation_beyond_the_curve(rule):
    spots = [0.02, 0.025, 0.03]
    cfg = {"model": "hull_white", "horizon_years": 6, "steps_per_year": 1, "curve": {"spot": spots},
           "extrapolation": rule, "a": 0.1, "sigma": 0.0}
    d = run(cfg, 1, equity=False)["discount_factor"][0]
    np.testing.assert_allclose(d[:4], [1, 1.02 ** -1, 1.025 ** -2, 1.03 ** -3], rtol=1e-14)
    if rule == "flat_spot":
        np.testing.assert_allclose(d[4:], 1.03 ** -np.arange(4.0, 7.0), rtol=1e-14)
    else:
        last_forward = 1.03 ** 3 / 1.025 ** 2
        np.testing.assert_allclose(d[4:], 1.03 ** -3 * last_forward ** -np.arange(1.0, 4.0), rtol=1e-14)


def test_antithetic_pairs_mirror_each_other():
    cfg = dict(HW, horizon_years=5, antithetic=True)
    out = run(cfg, 10, chunks=[(0, 3), (3, 7)])
    t = out["time"]
    alpha = hw_forward(SPOTS, t) + 0.5 * HW["sigma"] ** 2 * big_b(HW["a"], t) ** 2
    x = out["short_rate"] - alpha
    np.testing.assert_allclose(x[0::2], -x[1::2], atol=1e-15)
    assert not np.allclose(x[0], x[2])
    # ln D + V/2 - ln P = -Y, which mirrors too.
    v = np.array([var_integral(HW["a"], HW["sigma"], ti) for ti in t])
    y = np.log(curve_p(SPOTS, t)) - 0.5 * v - np.log(out["discount_factor"])
    np.testing.assert_allclose(y[0::2], -y[1::2], atol=1e-12)


def test_small_mean_reversion_is_stable():
    """a -> 0 is the Ho-Lee limit: the series branch keeps the step moments accurate."""
    cfg = dict(HW, a=1e-7, sigma=0.01, horizon_years=30, steps_per_year=12, equity={"sigma": 0.0})
    out = run(cfg, 20_000, equity=False)
    x = out["short_rate"][:, -1] - (hw_forward(SPOTS, 30.0) + 0.5 * 0.01 ** 2 * big_b(1e-7, 30.0) ** 2)
    assert within(x.var(ddof=1), 0.01 ** 2 * 30, 0.01 ** 2 * 30 * math.sqrt(2 / 19_999))
    d = out["discount_factor"][:, -1] / curve_p(SPOTS, 30.0)
    assert np.isfinite(d).all()
    assert within(d.mean(), 1.0, d.std(ddof=1) / math.sqrt(d.size))


# ----------------------------------------------------------------------------------------------
# Streams: chunking, workers, seeds, regenerating one scenario
# ----------------------------------------------------------------------------------------------

CHUNK_CFG = dict(HW, horizon_years=7)  # 84 monthly steps: odd tile tails for the tuned sizes below


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("model", ["hull_white", "vasicek", "cir", "hull_white_antithetic"])
def test_one_chunk_equals_three_chunks_of_different_sizes(model, monkeypatch):
    cfg = dict(CHUNK_CFG)
    if model == "hull_white_antithetic":
        cfg["antithetic"] = True
    elif model != "hull_white":
        cfg = dict(cfg, model=model, theta=0.03, r0=0.02, curve=None)
        del cfg["curve"]
    whole = run(cfg, 1001)
    # Small blocks and tiles so that block and tile edges fall everywhere, in a different order.
    monkeypatch.setattr(esg, "BLOCK_SCENARIOS", 37)
    monkeypatch.setattr(esg, "TILE_STEPS", 10)
    pieces = run(cfg, 1001, chunks=[(618, 383), (1, 617), (0, 1)])
    assert_identical(whole, pieces)


def test_columns_without_equity_leave_the_rates_unchanged():
    with_eq = run(CHUNK_CFG, 64)
    without = run(CHUNK_CFG, 64, equity=False)
    assert np.array_equal(with_eq["short_rate"], without["short_rate"])
    assert np.array_equal(with_eq["discount_factor"], without["discount_factor"])


def _chunk_in_worker(args):
    cfg, start, count, total = args
    out = run(cfg, total, chunks=[(start, count)])
    return start, count, {k: (v if k == "time" else v[start:start + count]) for k, v in out.items()}


def test_one_worker_equals_two_worker_processes():
    total, chunks = 600, [(0, 250), (250, 250), (500, 100)]
    one = run(CHUNK_CFG, total, chunks=chunks)
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        done = list(pool.map(_chunk_in_worker, [(CHUNK_CFG, s, c, total) for s, c in reversed(chunks)]))
    two = {k: np.zeros_like(v) for k, v in one.items()}
    for start, count, part in done:
        for k, v in part.items():
            if k == "time":
                two[k] = v
            else:
                two[k][start:start + count] = v
    assert_identical(one, two)


def test_same_seed_same_scenarios_other_seed_other_scenarios():
    a = run(CHUNK_CFG, 50)
    b = run(CHUNK_CFG, 50)
    c = run(dict(CHUNK_CFG, seed=CHUNK_CFG["seed"] + 1), 50)
    assert_identical(a, b)
    for k in ("short_rate", "discount_factor", "equity_index"):
        assert (a[k][:, 1:] != c[k][:, 1:]).all(axis=1).all(), k


def test_generate_regenerates_one_scenario_alone():
    whole = run(CHUNK_CFG, 300)
    for k in (0, 123, 299):
        alone = generate(CHUNK_CFG, k, 1)
        for name in ("short_rate", "discount_factor", "equity_index", "scenario_id"):
            assert alone[name][0].tobytes() == whole[name][k].tobytes(), (k, name)


def test_documented_stream_recipe_rebuilds_a_scenario():
    """The README's recipe, written out independently: Philox(key=seed) advanced to the
    scenario's slice, the Box-Muller formulas, the Cholesky factor of the step covariance and a
    plain step-by-step loop give the engine's scenario to rounding."""
    cfg = CHUNK_CFG
    steps, k = 84, 57
    d = 4 * math.ceil((steps + math.ceil(steps / 2)) / 4)
    bg = np.random.Philox(key=cfg["seed"])
    bg.advance(k * d // 4)
    raw = bg.random_raw(d)

    def normals(w):
        w = int(w)
        u = ((w & 0xFFFFFFFF) + 1) / 2 ** 32
        hi = w >> 32
        hi = hi - 2 ** 32 if hi >= 2 ** 31 else hi
        t = math.tan(hi * math.pi / 2 ** 32)
        r = math.sqrt(-2 * math.log(u))
        return r * (1 - t * t) / (1 + t * t), r * 2 * t / (1 + t * t)

    z = np.zeros((steps, 3))
    for j in range(steps):
        z[j, 0], z[j, 1] = normals(raw[j])
    for i in range((steps + 1) // 2):
        c, s = normals(raw[steps + i])
        z[2 * i, 2] = c
        if 2 * i + 1 < steps:
            z[2 * i + 1, 2] = s
    np.testing.assert_allclose(z, esg.scenario_normals(cfg["seed"], k, steps), rtol=1e-13, atol=1e-15)

    a, sigma, h = cfg["a"], cfg["sigma"], 1 / 12
    s_eq, rho = cfg["equity"]["sigma"], cfg["equity"]["rho"]
    chol = np.linalg.cholesky(step_cov(a, sigma, h, s_eq, rho))
    t = np.arange(steps + 1) * h
    x = y = w = 0.0
    r, df, eq = [0.0] * (steps + 1), [1.0] * (steps + 1), [1.0] * (steps + 1)
    for j in range(steps):
        e = chol @ z[j]
        x, y, w = math.exp(-a * h) * x + e[0], y + big_b(a, h) * x + e[1], w + e[2]
        tj = t[j + 1]
        df[j + 1] = curve_p(SPOTS, tj) * math.exp(-y - 0.5 * var_integral(a, sigma, tj))
        eq[j + 1] = math.exp(w - 0.5 * s_eq ** 2 * tj) / df[j + 1]
        r[j + 1] = x + hw_forward(SPOTS, tj) + 0.5 * sigma ** 2 * big_b(a, tj) ** 2
    r[0] = hw_forward(SPOTS, 0.0)
    alone = generate(cfg, k, 1)
    np.testing.assert_allclose(alone["short_rate"][0], r, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(alone["discount_factor"][0], df, rtol=1e-11)
    np.testing.assert_allclose(alone["equity_index"][0], eq, rtol=1e-11)


def test_normals_are_standard_normal():
    z = esg.pair_normals(np.random.Philox(key=11).random_raw(500_000))
    z = np.concatenate(z)
    n = z.size
    assert within(z.mean(), 0.0, 1 / math.sqrt(n))
    assert within(z.var(ddof=1), 1.0, math.sqrt(2 / n))
    assert within((z ** 4).mean(), 3.0, math.sqrt(96 / n))
    assert abs(z).max() <= math.sqrt(64 * math.log(2)) + 1e-12
    # The upper 1% tail has the right mass: Phi(-2.326) = 0.01.
    assert within((z > 2.3263478740408408).mean(), 0.01, math.sqrt(0.01 * 0.99 / n))


# ----------------------------------------------------------------------------------------------
# Contract: outputs, grid, ids, lifecycle
# ----------------------------------------------------------------------------------------------

def test_grid_ids_and_result():
    engine = EsgEngine()
    engine.initialize(dict(HW, horizon_years=2))
    buf = build_view(columns(5, 25), Chunk(3, 40, 5, 100))
    result = engine.runChunk(None, buf)
    out = outputs(buf)
    assert out[ID_COLUMN].tolist() == [40, 41, 42, 43, 44]
    np.testing.assert_array_equal(out[TIME_COLUMN], np.arange(25) / 12)
    assert result["rows_processed"] == 5
    assert result["bytes_written"] == 3 * 5 * 25 * 8 + 5 * 8 + 25 * 8
    assert result["warnings"] == []
    assert (out[DF_COLUMN][:, 0] == 1).all() and (out[EQUITY_COLUMN][:, 0] == 1).all()
    assert engine.get_info().engine_type == "esg"


def test_grid_column_is_optional():
    engine = EsgEngine()
    engine.initialize(dict(HW, horizon_years=1))
    buf = build_view(columns(2, 13, equity=False, grid=False), Chunk(0, 0, 2, 2))
    engine.runChunk(None, buf)
    assert (outputs(buf)[DF_COLUMN][:, 1:] < 1).all()


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop(DF_COLUMN), "required column 'scenarios.discount_factor'"),
    (lambda c: c.pop(ID_COLUMN), "required column 'scenarios.scenario_id'"),
    (lambda c: c.__setitem__(RATE_COLUMN, np.zeros((4, 25), np.float32)), "'scenarios.short_rate' must be float64"),
    (lambda c: c.__setitem__(ID_COLUMN, np.zeros(4, np.int32)), "'scenarios.scenario_id' must be int64"),
    (lambda c: c.__setitem__(EQUITY_COLUMN, np.zeros((4, 24))), "'scenarios.equity_index' has shape \\[4, 24\\]"),
    (lambda c: c.__setitem__(TIME_COLUMN, np.zeros(13)), "'grid.time' has shape \\[13\\]"),
    (lambda c: c.__setitem__("scenarios.spread", np.zeros(4)), "'scenarios.spread' is not produced"),
])
def test_output_columns_are_checked(change, message):
    engine = EsgEngine()
    engine.initialize(dict(HW, horizon_years=2))
    cols = columns(4, 25)
    change(cols)
    with pytest.raises(ConfigurationError, match=message):
        engine.runChunk(None, build_view(cols, Chunk(0, 0, 4, 4)))


def test_lifecycle():
    engine = EsgEngine()
    with pytest.raises(ExecutionError, match="not initialized"):
        engine.runChunk(None, build_view(columns(1, 13), Chunk(0, 0, 1, 1)))
    engine.initialize(dict(HW, horizon_years=1))
    assert engine.is_initialized
    engine.dispose()
    assert not engine.is_initialized
    engine.dispose()


# ----------------------------------------------------------------------------------------------
# Bad parameters
# ----------------------------------------------------------------------------------------------

def _with(**changes):
    cfg = dict(HW)
    for k, v in changes.items():
        if v is KeyError:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


@pytest.mark.parametrize("config, key", [
    (_with(a=0.0), "'a'"),
    (_with(a=-0.1), "'a'"),
    (_with(sigma=-0.01), "'sigma'"),
    (_with(equity={"sigma": 0.2, "rho": 1.5}), "'equity.rho'"),
    (_with(equity={"sigma": 0.2, "rho": -1.01}), "'equity.rho'"),
    (_with(equity={"sigma": -0.2}), "'equity.sigma'"),
    (_with(equity={"vol": 0.2}), "'equity.vol'"),
    (_with(curve={"spot": []}), "'curve.spot'"),
    (_with(curve={"spot": [0.01, float("nan")]}), "'curve.spot\\[1\\]'"),
    (_with(curve={"spot": [0.01, True]}), "'curve.spot\\[1\\]'"),
    (_with(curve={"flat": 0.01, "spot": [0.01]}), "'curve'"),
    (_with(curve={"zero": [0.01]}), "'curve.zero'"),
    (_with(curve={"spot": SPOTS[:30]}), "'horizon_years'.*'extrapolation'"),
    (_with(curve=KeyError), "'curve'"),
    (_with(scenarios=0), "'scenarios'"),
    (_with(model="lmm"), "'model'"),
    (_with(steps_per_year=0), "'steps_per_year'"),
    (_with(horizon_years=0), "'horizon_years'"),
    (_with(horizon_years=KeyError), "'horizon_years'"),
    (_with(seed=-1), "'seed'"),
    (_with(seed=2 ** 64), "'seed'"),
    (_with(seed="7"), "'seed'"),
    (_with(antithetic="yes"), "'antithetic'"),
    (_with(extrapolation="linear"), "'extrapolation'"),
    (_with(theta=0.03), "'theta' is not used by model 'hull_white'"),
    (_with(volatility=0.01), "unknown config key 'volatility'"),
    (_with(a=KeyError), "'a'"),
    (_with(model="vasicek", curve=KeyError, theta=0.03), "'r0'"),
    (_with(model="cir", curve=KeyError, theta=-0.01, r0=0.02), "'theta'"),
    (_with(model="deterministic", a=KeyError, sigma=KeyError, equity={"sigma": 0.1}), "'equity.sigma'"),
    (_with(model="deterministic", a=KeyError, sigma=KeyError, equity=KeyError, curve=KeyError),
     "'curve' and 'paths'"),
])
def test_bad_parameters_name_the_key(config, key):
    with pytest.raises(ConfigurationError, match=key):
        EsgEngine().initialize(config)


def test_bad_curve_files_name_the_key_file_and_line(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("year,spot\n")
    with pytest.raises(ConfigurationError, match="'curve.csv' gives an empty curve"):
        EsgEngine().initialize(_with(curve={"csv": str(empty)}))
    gap = tmp_path / "gap.csv"
    gap.write_text("year,spot\n1,0.01\n3,0.02\n")
    with pytest.raises(ConfigurationError, match="'curve.csv'.*line 3, column 'year'"):
        EsgEngine().initialize(_with(curve={"csv": str(gap)}, horizon_years=2))
    bad = tmp_path / "bad.csv"
    bad.write_text("year,spot\n1,0.01\n2,abc\n")
    with pytest.raises(ConfigurationError, match="line 3, column 'spot'"):
        EsgEngine().initialize(_with(curve={"csv": str(bad)}, horizon_years=2))
    with pytest.raises(InitializationError, match="'curve.csv': cannot read"):
        EsgEngine().initialize(_with(curve={"csv": str(tmp_path / "missing.csv")}))


def test_zero_scenarios_in_the_node_is_a_configuration_error():
    engine = EsgEngine()
    engine.initialize(dict(HW, horizon_years=1))
    with pytest.raises(ConfigurationError, match="zero scenarios"):
        engine.runChunk(None, build_view(columns(0, 13), Chunk(0, 0, 0, 0)))
    engine.initialize(dict(HW, horizon_years=1, scenarios=5))
    with pytest.raises(ConfigurationError, match="'scenarios' is 5 but the node has 4 rows"):
        engine.runChunk(None, build_view(columns(4, 13), Chunk(0, 0, 4, 4)))
