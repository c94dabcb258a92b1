"""Economic scenario generator (``python_esg``): short rates, discount factors and an equity index.

Theory of operation
===================

Models
------
``hull_white`` (default). The short rate is ``r(t) = x(t) + alpha(t)`` with
``dx = -a x dt + sigma dW``, ``x(0) = 0``, and ``alpha`` chosen so that the model reprices the
initial curve ``P(0, t)``. Nothing is discretised in time. Over a step of length ``h``, given
``x(t)``, the pair (``x(t + h)``, ``I = integral of x over the step``) is exactly bivariate normal:

    x(t+h) = e^{-a h} x(t) + e_x,         I = B(h) x(t) + e_I,        B(h) = (1 - e^{-a h}) / a
    Var e_x = sigma^2 (1 - e^{-2 a h}) / (2 a)
    Var e_I = sigma^2 g(a h) / a^3,       g(u) = u - 2 (1 - e^{-u}) + (1 - e^{-2u}) / 2
    Cov     = sigma^2 B(h)^2 / 2

so ``Y(t_k) = integral of x over [0, t_k]`` is a sum of exact increments and is exactly
``N(0, V(t_k))`` with ``V(t) = sigma^2 g(a t) / a^3``. The discount factor is then

    D(t_k) = exp(-integral of r) = P(0, t_k) exp(-Y(t_k) - V(t_k) / 2)

whose expectation is ``P(0, t_k)`` exactly, for any step size: repricing the curve is a property
of the distribution, not of a small step. The reported short rate at a grid point is
``x(t_k) + f(0, t_k) + sigma^2 B(t_k)^2 / 2`` (``f`` the instantaneous forward).

``vasicek``: ``dr = a (theta - r) dt + sigma dW`` from ``r(0) = r0``. Same factor ``x``, with the
deterministic mean ``m(t) = theta + (r0 - theta) e^{-a t}`` in place of ``alpha``; the
simulation is exact in the same way and ``E[D(t)]`` is the Vasicek bond price.

``cir``: ``dr = a (theta - r) dt + sigma sqrt(r) dW``, full-truncation Euler (Lord, Koekkoek and
van Dijk, 2010): the auxiliary variable may go negative, the reported rate is its positive part,
and the step integral of ``r`` is the trapezoid. This is a discretisation, not an exact scheme;
it is offered for users who ask for CIR, and its bias shrinks with the step.

Equity is a total-return index, ``d ln S = r dt + (mu - s^2/2) dt + s dW_S`` with
``corr(dW_S, dW) = rho`` and ``mu`` the real-world risk premium (0 by default). Because
``ln S(t_k) = -ln D(t_k) + (mu - s^2/2) t_k + s W_S(t_k)``, ``D(t) S(t) e^{-mu t}`` is a
martingale on the grid exactly. For the Gaussian models, ``(e_x, e_I, dW_S)`` over a step is one
3-dimensional normal vector (``Cov(e_x, dW_S) = rho sigma B(h)``,
``Cov(e_I, dW_S) = rho sigma (h - B(h)) / a``, ``Var dW_S = h``), drawn with its Cholesky factor,
so the equity/rate correlation is exact too. Without an ``equity`` block the index is the bank
account ``1 / D``.

``deterministic``: no randomness. From a curve, the projection engine's data-source convention,
``df(t_k) = (1 + spot[floor(k/m)])^(-k/m)`` with ``spot[i]`` the (i+1)-year rate (an N-year curve
covers an N-year horizon: at ``t = N`` exactly the last rate is used) and the short rate
``ln(1 + spot[floor(k/m)])``. From rate paths (``scenario_id, year, rate``; the rate of year y
applies over ``(y-1, y]``): ``df`` is the running product of ``1 / (1 + rate)`` over whole
years, with the fraction of a year compounded at that year's rate.

Curves
------
Annual, annually compounded spot rates ``s_n`` for maturities ``n = 1..N``
(``P(0, n) = (1 + s_n)^-n``), given flat, inline or as a CSV ``year, spot``. Between the
maturities ``ln P`` is linear in ``t`` (flat forwards), so ``P`` is continuous and ``alpha`` is
defined everywhere. Beyond ``N`` a horizon needs an ``extrapolation`` rule: ``flat_forward``
(the last one-year forward continues) or ``flat_spot`` (``s_n = s_N``).

Random streams and chunk invariance
-----------------------------------
One Philox4x64-10 generator, key = ``seed``, counter from 0 (``numpy.random.Philox(key=seed)``).
Scenario ``k`` owns the raw 64-bit outputs ``k*D .. k*D + D - 1`` with
``D = draws_per_scenario(T) = 4 * ceil((T + ceil(T/2)) / 4)``; a chunk starting at scenario
``k0`` calls ``advance(k0 * D / 4)`` (Philox advances in blocks of four outputs) and draws its
whole slice in one call. Inside a scenario's slice, output ``j < T`` gives the rate normals
``z1, z2`` of step ``j``; output ``T + i`` gives the equity normal of steps ``2i`` (first) and
``2i + 1`` (second); the rest is padding. The slice layout does not depend on which columns are
written or on the model, so switching the equity off leaves the rates unchanged.

Each raw output ``w`` becomes two normals by Box-Muller in tangent half-angle form, which needs
only ``log``, ``sqrt`` and ``tan`` (vectorised in numpy; ``sin`` and ``cos`` are not):

    u   = ((w mod 2^32) + 1) / 2^32                     in (0, 1]
    psi = signed_int32(w >> 32) * pi / 2^32              in [-pi/2, pi/2)
    R   = sqrt(-2 ln u),   t = tan(psi)
    z1  = R (1 - t^2) / (1 + t^2),    z2 = R * 2 t / (1 + t^2)      (cos and sin of 2 psi)

Both uniforms have 32-bit resolution, so ``|z| <= 6.66`` (the pair's radius exceeds that with
probability 2^-32). :func:`scenario_normals` implements this recipe plainly for one scenario.

Every operation after the draw is elementwise per scenario (there is no reduction across
scenarios and no BLAS), so scenario ``k`` is a function of ``(seed, k, config)`` alone: any chunk
size, block size, worker count or chunk order gives the same bytes. One caveat: numpy's
vectorised ``log``/``tan``/``exp`` may round differently on CPUs with different SIMD support, so
bit-identity is guaranteed on one machine (or a homogeneous grid); across unlike CPUs scenarios
agree to about one ulp.

Antithetic variates (``antithetic: true``): scenarios ``2i`` and ``2i + 1`` both use the stream
slice of index ``i``, the second with every normal negated.

Layout and speed
----------------
Outputs are scenario-major (one row per scenario, ``T + 1`` columns), but the recursions run
along time. Each chunk is cut into blocks of :data:`BLOCK_SCENARIOS` scenarios and each block into
tiles of :data:`TILE_STEPS` steps; a tile's raw draws are transposed to time-major, turned into
normals and shocks with whole-tile numpy operations that stay in cache, stepped with a few vector
operations per time step across the block's scenarios, and written back into the output rows by
one transposed copy per column. See ``worker-py/README.md`` for figures.

Non-goals: calibration to swaption prices, multi-factor models, negative-rate shifted models,
real-world rate models.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from livecalc.buffers import Chunk, build_view, outputs
from livecalc.calc_engine_interface import (
    ConfigurationError,
    EngineInfo,
    ExecutionError,
    ICalcEngine,
    InitializationError,
)

MODELS = ("hull_white", "vasicek", "cir", "deterministic")
EXTRAPOLATIONS = ("none", "flat_forward", "flat_spot")

RATE_COLUMN = "scenarios.short_rate"
DF_COLUMN = "scenarios.discount_factor"
EQUITY_COLUMN = "scenarios.equity_index"
ID_COLUMN = "scenarios.scenario_id"
TIME_COLUMN = "grid.time"
REQUIRED_COLUMNS = (RATE_COLUMN, DF_COLUMN, ID_COLUMN)

# Tuned on a 1 MiB-L2 core: a tile's handful of float64 work arrays (TILE_STEPS x BLOCK_SCENARIOS)
# stay near L2, while the per-step vector operations are still wide enough to amortise numpy's
# call overhead. Read at run time, so tests can shrink them to exercise many blocks and tiles.
BLOCK_SCENARIOS = 4096
TILE_STEPS = 32  # must stay even: equity pairs are shared by steps 2i and 2i+1

_HALF_ANGLE = math.pi * 2.0 ** -32
_SQRT2 = math.sqrt(2.0)
_MAX_SEED = 2 ** 64
_KNOWN_KEYS = {
    "model", "seed", "horizon_years", "steps_per_year", "curve", "extrapolation", "a", "sigma",
    "theta", "r0", "equity", "antithetic", "paths", "scenarios",
}
_MODEL_KEYS = {
    "hull_white": {"curve", "a", "sigma", "equity", "antithetic", "extrapolation"},
    "vasicek": {"a", "sigma", "theta", "r0", "equity", "antithetic"},
    "cir": {"a", "sigma", "theta", "r0", "equity", "antithetic"},
    "deterministic": {"curve", "paths", "equity", "extrapolation"},
}
_COMMON_KEYS = {"model", "seed", "horizon_years", "steps_per_year", "scenarios"}


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Equity:
    sigma: float = 0.0
    rho: float = 0.0
    risk_premium: float = 0.0


@dataclass(frozen=True)
class Curve:
    """Annual spot rates for maturities 1..len(spots) (already extended), ``years`` as given."""

    spots: np.ndarray
    years: int

    def log_discount(self, t: np.ndarray) -> np.ndarray:
        nodes = np.concatenate(([0.0], -np.arange(1, self.spots.size + 1) * np.log1p(self.spots)))
        return np.interp(t, np.arange(nodes.size, dtype=np.float64), nodes)

    def forward(self, t: np.ndarray) -> np.ndarray:
        """Instantaneous forward, right-continuous, except at the curve's last given maturity
        where the last interval's forward is used (so it never depends on the extrapolation)."""
        nodes = np.concatenate(([0.0], -np.arange(1, self.spots.size + 1) * np.log1p(self.spots)))
        fwd = nodes[:-1] - nodes[1:]
        idx = np.floor(t).astype(np.int64)
        idx = np.where(t == self.years, self.years - 1, idx)
        return fwd[np.clip(idx, 0, fwd.size - 1)]


@dataclass(frozen=True)
class Settings:
    model: str
    seed: int
    horizon_years: int
    steps_per_year: int
    antithetic: bool
    equity: Equity
    a: float
    sigma: float
    theta: float
    r0: float
    curve: Optional[Curve]
    paths: Optional[np.ndarray]  # [n_paths, years] annual rates
    path_ids: Optional[np.ndarray]
    scenarios: Optional[int]

    @property
    def steps(self) -> int:
        return self.horizon_years * self.steps_per_year

    @property
    def dt(self) -> float:
        return 1.0 / self.steps_per_year


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(cfg: Mapping[str, Any], key: str, label: str, default: Any = None) -> float:
    if key not in cfg:
        if default is None:
            raise ConfigurationError(f"missing config key '{label}'")
        return float(default)
    v = cfg[key]
    if not _is_number(v) or not math.isfinite(float(v)):
        raise ConfigurationError(f"config key '{label}' must be a finite number (got {v!r})")
    return float(v)


def _integer(cfg: Mapping[str, Any], key: str, default: Any = None) -> int:
    if key not in cfg:
        if default is None:
            raise ConfigurationError(f"missing config key '{key}'")
        return int(default)
    v = cfg[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigurationError(f"config key '{key}' must be an integer (got {v!r})")
    return v


def parse_config(config: Mapping[str, Any]) -> Settings:
    """Validate a node config; every problem raises ConfigurationError naming the key."""
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"the config must be an object (got {type(config).__name__})")
    unknown = sorted(set(config) - _KNOWN_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown config key '{unknown[0]}' (expected one of: {', '.join(sorted(_KNOWN_KEYS))})")

    model = config.get("model", "hull_white")
    if model not in MODELS:
        raise ConfigurationError(f"config key 'model' must be one of {', '.join(MODELS)} (got {model!r})")
    # A key the chosen model ignores is an error: a silently unused curve or theta is a wrong result.
    unused = sorted(set(config) - _COMMON_KEYS - _MODEL_KEYS[model])
    if unused:
        raise ConfigurationError(f"config key '{unused[0]}' is not used by model '{model}'")

    seed = _integer(config, "seed", 0)
    if not 0 <= seed < _MAX_SEED:
        raise ConfigurationError(f"config key 'seed' must lie in [0, 2^64) (got {seed})")
    horizon = _integer(config, "horizon_years")
    if horizon < 1:
        raise ConfigurationError(f"config key 'horizon_years' must be >= 1 (got {horizon})")
    m = _integer(config, "steps_per_year", 12)
    if not 1 <= m <= 366:
        raise ConfigurationError(f"config key 'steps_per_year' must lie in 1..366, usually 1 or 12 (got {m})")
    scenarios = None
    if "scenarios" in config:
        scenarios = _integer(config, "scenarios")
        if scenarios < 1:
            raise ConfigurationError(f"config key 'scenarios' must be >= 1 (got {scenarios}): zero scenarios")
    antithetic = config.get("antithetic", False)
    if not isinstance(antithetic, bool):
        raise ConfigurationError(f"config key 'antithetic' must be true or false (got {antithetic!r})")
    extrapolation = config.get("extrapolation", "none")
    if extrapolation not in EXTRAPOLATIONS:
        raise ConfigurationError(
            f"config key 'extrapolation' must be one of {', '.join(EXTRAPOLATIONS)} (got {extrapolation!r})")

    equity = _parse_equity(config.get("equity"))
    if model == "deterministic" and equity.sigma != 0.0:
        raise ConfigurationError("config key 'equity.sigma' must be 0 for model 'deterministic' (no randomness)")

    a = sigma = theta = r0 = 0.0
    if model != "deterministic":
        a = _number(config, "a", "a")
        if a <= 0:
            raise ConfigurationError(f"config key 'a' must be > 0 (got {a})")
        sigma = _number(config, "sigma", "sigma")
        if sigma < 0:
            raise ConfigurationError(f"config key 'sigma' must be >= 0 (got {sigma})")
    if model in ("vasicek", "cir"):
        theta = _number(config, "theta", "theta")
        r0 = _number(config, "r0", "r0")
        if model == "cir" and theta < 0:
            raise ConfigurationError(f"config key 'theta' must be >= 0 for model 'cir' (got {theta})")
        if model == "cir" and r0 < 0:
            raise ConfigurationError(f"config key 'r0' must be >= 0 for model 'cir' (got {r0})")

    curve = paths = path_ids = None
    if model == "hull_white":
        if "curve" not in config:
            raise ConfigurationError("missing config key 'curve' ({\"flat\": r}, {\"spot\": [...]} or {\"csv\": path})")
        curve = _parse_curve(config["curve"], extrapolation, horizon)
    elif model == "deterministic":
        if ("curve" in config) == ("paths" in config):
            raise ConfigurationError("model 'deterministic' needs exactly one of config keys 'curve' and 'paths'")
        if "curve" in config:
            curve = _parse_curve(config["curve"], extrapolation, horizon)
        else:
            path_ids, paths = _parse_paths(config["paths"], extrapolation, horizon)

    return Settings(model=model, seed=seed, horizon_years=horizon, steps_per_year=m, antithetic=antithetic,
                    equity=equity, a=a, sigma=sigma, theta=theta, r0=r0, curve=curve, paths=paths,
                    path_ids=path_ids, scenarios=scenarios)


def _parse_equity(spec: Any) -> Equity:
    if spec is None:
        return Equity()
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"config key 'equity' must be an object (got {spec!r})")
    unknown = sorted(set(spec) - {"sigma", "rho", "risk_premium"})
    if unknown:
        raise ConfigurationError(f"unknown config key 'equity.{unknown[0]}' (expected sigma, rho, risk_premium)")
    sigma = _number(spec, "sigma", "equity.sigma", 0.0)
    if sigma < 0:
        raise ConfigurationError(f"config key 'equity.sigma' must be >= 0 (got {sigma})")
    rho = _number(spec, "rho", "equity.rho", 0.0)
    if not -1.0 <= rho <= 1.0:
        raise ConfigurationError(f"config key 'equity.rho' must lie in [-1, 1] (got {rho})")
    premium = _number(spec, "risk_premium", "equity.risk_premium", 0.0)
    return Equity(sigma=sigma, rho=rho, risk_premium=premium)


def _parse_curve(spec: Any, extrapolation: str, horizon: int) -> Curve:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigurationError(
            "config key 'curve' must be one of {\"flat\": r}, {\"spot\": [...]} or {\"csv\": path}"
            f" (got {spec!r})")
    (kind, value), = spec.items()
    if kind == "flat":
        rate = _number(spec, "flat", "curve.flat")
        if rate <= -1:
            raise ConfigurationError(f"config key 'curve.flat' must be > -1 (got {rate})")
        # A flat curve has no end: give it one more year than the horizon needs.
        return Curve(spots=np.full(horizon + 1, rate), years=horizon + 1)
    if kind == "spot":
        if not isinstance(value, list):
            raise ConfigurationError(f"config key 'curve.spot' must be a list of annual spot rates (got {value!r})")
        spots = []
        for i, v in enumerate(value):
            if not _is_number(v) or not math.isfinite(float(v)) or float(v) <= -1:
                raise ConfigurationError(f"config key 'curve.spot[{i}]' must be a finite number > -1 (got {v!r})")
            spots.append(float(v))
        label = "curve.spot"
    elif kind == "csv":
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"config key 'curve.csv' must be a file path (got {value!r})")
        spots = _read_curve_csv(value)
        label = "curve.csv"
    else:
        raise ConfigurationError(f"unknown config key 'curve.{kind}' (expected flat, spot or csv)")
    if not spots:
        raise ConfigurationError(f"config key '{label}' gives an empty curve")
    return Curve(spots=_extend(np.asarray(spots), extrapolation, horizon, label), years=len(spots))


def _extend(spots: np.ndarray, rule: str, horizon: int, label: str) -> np.ndarray:
    n = spots.size
    if horizon > n and rule == "none":
        raise ConfigurationError(
            f"config key 'horizon_years' ({horizon}) is beyond the {n} years of '{label}' and no"
            " 'extrapolation' rule is set (flat_forward or flat_spot)")
    if rule == "none" or horizon + 1 <= n:
        return spots
    extra = np.arange(n + 1, horizon + 2, dtype=np.float64)
    if rule == "flat_spot":
        return np.concatenate((spots, np.full(extra.size, spots[-1])))
    ln_p_n = -n * math.log1p(spots[-1])
    ln_p_prev = -(n - 1) * math.log1p(spots[-2]) if n > 1 else 0.0
    ln_p = ln_p_n - (ln_p_prev - ln_p_n) * (extra - n)
    return np.concatenate((spots, np.expm1(-ln_p / extra)))


def _open(path: str, label: str):
    try:
        return open(path, newline="")
    except OSError as e:
        raise InitializationError(f"config key '{label}': cannot read {path!r}: {e.strerror or e}") from None


def _read_table(path: str, label: str, columns: Tuple[str, ...]) -> List[Tuple[int, List[float]]]:
    """Rows of the named columns as (line number, values); errors name file, line and column."""
    with _open(path, label) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ConfigurationError(f"config key '{label}': {path} is empty")
        names = [h.strip().lower() for h in header]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigurationError(
                f"config key '{label}': {path} has no column '{missing[0]}' (header: {', '.join(names)})")
        where = [names.index(c) for c in columns]
        rows = []
        for line, rec in enumerate(reader, start=2):
            if not rec or all(not x.strip() for x in rec):
                continue
            vals = []
            for c, i in zip(columns, where):
                text = rec[i].strip() if i < len(rec) else ""
                try:
                    v = float(text)
                except ValueError:
                    v = math.nan
                if not math.isfinite(v):
                    raise ConfigurationError(
                        f"config key '{label}': {path} line {line}, column '{c}': not a finite number ({text!r})")
                vals.append(v)
            rows.append((line, vals))
    return rows


def _read_curve_csv(path: str) -> List[float]:
    rows = _read_table(path, "curve.csv", ("year", "spot"))
    rows.sort(key=lambda r: r[1][0])
    for expect, (line, (year, spot)) in enumerate(rows, start=1):
        if year != expect:
            raise ConfigurationError(
                f"config key 'curve.csv': {path} line {line}, column 'year': years must run 1, 2, 3..."
                f" without gaps (expected {expect}, got {year:g})")
        if spot <= -1:
            raise ConfigurationError(f"config key 'curve.csv': {path} line {line}, column 'spot': must be > -1")
    return [spot for _, (_, spot) in rows]


def _parse_paths(value: Any, rule: str, horizon: int) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"config key 'paths' must be a CSV or Parquet file path (got {value!r})")
    if value.lower().endswith((".parquet", ".pq")):
        table = _read_parquet_paths(value)
    else:
        table = _read_table(value, "paths", ("scenario_id", "year", "rate"))
    if not table:
        raise ConfigurationError(f"config key 'paths': {value} has no rows")
    by_id: Dict[int, Dict[int, float]] = {}
    for line, (sid, year, rate) in table:
        if not sid.is_integer() or not year.is_integer() or year < 1:
            raise ConfigurationError(
                f"config key 'paths': {value} line {line}: scenario_id and year must be integers, year >= 1")
        if rate <= -1:
            raise ConfigurationError(f"config key 'paths': {value} line {line}, column 'rate': must be > -1")
        years = by_id.setdefault(int(sid), {})
        if int(year) in years:
            raise ConfigurationError(
                f"config key 'paths': {value} line {line}: scenario {int(sid)} year {int(year)} appears twice")
        years[int(year)] = rate
    ids = np.array(sorted(by_id), dtype=np.int64)
    n_years = len(by_id[int(ids[0])])
    for sid in ids:
        if sorted(by_id[int(sid)]) != list(range(1, n_years + 1)):
            raise ConfigurationError(
                f"config key 'paths': {value}: scenario {sid} does not have years 1..{n_years} like scenario {ids[0]}")
    rates = np.array([[by_id[int(s)][y] for y in range(1, n_years + 1)] for s in ids])
    if horizon > n_years:
        if rule == "none":
            raise ConfigurationError(
                f"config key 'horizon_years' ({horizon}) is beyond the {n_years} years of 'paths' and no"
                " 'extrapolation' rule is set (flat_forward or flat_spot: the last rate continues)")
        rates = np.concatenate((rates, np.repeat(rates[:, -1:], horizon - n_years, axis=1)), axis=1)
    return ids, rates


def _read_parquet_paths(path: str) -> List[Tuple[int, List[float]]]:
    try:
        import pyarrow.parquet as pq  # optional: only rate paths stored as Parquet need it
    except ImportError:
        raise ConfigurationError(
            f"config key 'paths': reading {path} needs the pyarrow package, which is not installed;"
            " give the paths as CSV") from None
    try:
        table = pq.read_table(path, columns=["scenario_id", "year", "rate"])
    except OSError as e:
        raise InitializationError(f"config key 'paths': cannot read {path!r}: {e}") from None
    except Exception as e:  # pyarrow raises its own types for a missing column
        raise ConfigurationError(f"config key 'paths': {path}: {e}") from None
    cols = [np.asarray(table.column(c).to_numpy(), dtype=np.float64) for c in ("scenario_id", "year", "rate")]
    for c, name in zip(cols, ("scenario_id", "year", "rate")):
        bad = np.flatnonzero(~np.isfinite(c))
        if bad.size:
            raise ConfigurationError(f"config key 'paths': {path} row {bad[0] + 1}, column '{name}': not a finite number")
    return [(i + 1, [cols[0][i], cols[1][i], cols[2][i]]) for i in range(cols[0].size)]


# ----------------------------------------------------------------------------------------------
# Random stream
# ----------------------------------------------------------------------------------------------

def draws_per_scenario(steps: int) -> int:
    """Raw 64-bit Philox outputs one scenario owns: one per step for the rate normals, one per
    two steps for the equity normal, rounded up to whole Philox blocks of four outputs."""
    used = steps + (steps + 1) // 2
    return 4 * ((used + 3) // 4)


def raw_draws(seed: int, first: int, count: int, steps: int) -> np.ndarray:
    """The stream slices of scenarios ``first .. first+count-1``, shape [count, D], uint64."""
    d = draws_per_scenario(steps)
    bg = np.random.Philox(key=seed)
    bg.advance(first * d // 4)
    return bg.random_raw(count * d).reshape(count, d)


def pair_normals(raw: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The two standard normals each raw 64-bit output encodes (the recipe in the module doc)."""
    raw = np.asarray(raw, dtype=np.uint64)
    lo = (raw & np.uint64(0xFFFFFFFF)).astype(np.float64)
    hi = (raw >> np.uint64(32)).astype(np.uint32).view(np.int32).astype(np.float64)
    radius = np.sqrt(-2.0 * np.log((lo + 1.0) * 2.0 ** -32))
    t = np.tan(hi * _HALF_ANGLE)
    return radius * (1.0 - t * t) / (1.0 + t * t), radius * 2.0 * t / (1.0 + t * t)


def scenario_normals(seed: int, scenario: int, steps: int, antithetic: bool = False) -> np.ndarray:
    """Standard normals of one scenario, shape [steps, 3]: columns z1, z2 (rate) and z3 (equity).

    This is the whole stream definition in plain numpy, for regenerating a scenario alone in
    another tool; :func:`generate` regenerates the engine's output bit for bit.
    """
    slot = scenario // 2 if antithetic else scenario
    raw = raw_draws(seed, slot, 1, steps)[0]
    z1, z2 = pair_normals(raw[:steps])
    e_cos, e_sin = pair_normals(raw[steps:steps + (steps + 1) // 2])
    z3 = np.empty(steps)
    z3[0::2] = e_cos
    z3[1::2] = e_sin[:steps // 2]
    z = np.column_stack((z1, z2, z3))
    return -z if antithetic and scenario % 2 else z


# ----------------------------------------------------------------------------------------------
# Hull-White / Vasicek step algebra
# ----------------------------------------------------------------------------------------------

def _g(u: np.ndarray) -> np.ndarray:
    """u - 2(1 - e^-u) + (1 - e^-2u)/2 = a^3 Var(integral of x) / sigma^2, stable near 0."""
    u = np.asarray(u, dtype=np.float64)
    direct = u + 2.0 * np.expm1(-u) - 0.5 * np.expm1(-2.0 * u)
    # The direct form cancels like u^3; its power series (terms (-1)^n (2 - 2^(n-1)) u^n / n!)
    # converges fast below 1/2.
    small = np.minimum(u, 0.5)
    series = np.zeros_like(u)
    for n in range(25, 2, -1):
        series = (series + (-1) ** n * (2.0 - 2.0 ** (n - 1)) / math.factorial(n)) * small
    series *= small * small
    return np.where(u < 0.5, series, direct)


def _h(u: np.ndarray) -> np.ndarray:
    """u - (1 - e^-u) = a^2 Cov(integral of x, W) / sigma, stable near 0."""
    u = np.asarray(u, dtype=np.float64)
    direct = u + np.expm1(-u)
    small = np.minimum(u, 0.5)
    series = np.zeros_like(u)
    for n in range(25, 1, -1):
        series = (series + (-1) ** n / math.factorial(n)) * small
    series *= small
    return np.where(u < 0.5, series, direct)


def _cholesky_psd(cov: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a positive semi-definite matrix (zero pivots give zero columns,
    so sigma = 0 or rho = +-1 need no special case)."""
    n = cov.shape[0]
    low = np.zeros_like(cov)
    for j in range(n):
        d = cov[j, j] - np.dot(low[j, :j], low[j, :j])
        low[j, j] = math.sqrt(d) if d > 0 else 0.0
        for i in range(j + 1, n):
            low[i, j] = (cov[i, j] - np.dot(low[i, :j], low[j, :j])) / low[j, j] if low[j, j] > 0 else 0.0
    return low


def step_covariance(a: float, sigma: float, h: float, equity: Equity) -> np.ndarray:
    """Covariance of (e_x, e_I, s * dW_S) over one step of length h (see the module doc)."""
    u = a * h
    b = -math.expm1(-u) / a
    var_x = sigma * sigma * -math.expm1(-2.0 * u) / (2.0 * a)
    var_i = sigma * sigma * float(_g(u)) / a ** 3
    cov_xi = 0.5 * sigma * sigma * b * b
    s, rho = equity.sigma, equity.rho
    cov_xw = s * rho * sigma * b
    cov_iw = s * rho * sigma * float(_h(u)) / (a * a)
    return np.array([[var_x, cov_xi, cov_xw], [cov_xi, var_i, cov_iw], [cov_xw, cov_iw, s * s * h]])


def integrated_variance(a: float, sigma: float, t: np.ndarray) -> np.ndarray:
    """V(t) = Var of the integral of x over [0, t]."""
    return sigma * sigma * _g(a * np.asarray(t, dtype=np.float64)) / a ** 3


@dataclass(frozen=True)
class _GaussianPlan:
    phi_m1: float  # e^{-a h} - 1
    b: float  # B(h)
    chol: np.ndarray  # 3x3, rows e_x, e_I, e_W over the normals z1, z2, z3
    alpha: np.ndarray  # [T+1] deterministic part of r on the grid
    log_df0: np.ndarray  # [T+1] ln D = log_df0 - Y
    log_s0: np.ndarray  # [T+1] ln S = log_s0 + Y + W


@dataclass(frozen=True)
class _CirPlan:
    a_h: float
    a_h_theta: float
    sigma_sqrt_h: float
    eq_rate: float  # s sqrt(h) rho
    eq_own: float  # s sqrt(h) sqrt(1 - rho^2)
    drift: np.ndarray  # [T+1] (mu - s^2/2) t


def _gaussian_plan(st: Settings, t: np.ndarray) -> _GaussianPlan:
    a, sigma, h, eq = st.a, st.sigma, st.dt, st.equity
    chol = _cholesky_psd(step_covariance(a, sigma, h, eq))
    b_t = -np.expm1(-a * t) / a
    v = integrated_variance(a, sigma, t)
    if st.model == "hull_white":
        alpha = st.curve.forward(t) + 0.5 * sigma * sigma * b_t * b_t
        log_df0 = st.curve.log_discount(t) - 0.5 * v
    else:  # vasicek: r = m(t) + x, integral of m is theta t + (r0 - theta) B(t)
        alpha = st.theta + (st.r0 - st.theta) * np.exp(-a * t)
        log_df0 = -(st.theta * t + (st.r0 - st.theta) * b_t)
    log_s0 = (eq.risk_premium - 0.5 * eq.sigma ** 2) * t - log_df0
    return _GaussianPlan(phi_m1=math.expm1(-a * h), b=-math.expm1(-a * h) / a, chol=chol, alpha=alpha,
                         log_df0=log_df0, log_s0=log_s0)


def _cir_plan(st: Settings, t: np.ndarray) -> _CirPlan:
    eq, h = st.equity, st.dt
    return _CirPlan(a_h=st.a * h, a_h_theta=st.a * h * st.theta, sigma_sqrt_h=st.sigma * math.sqrt(h),
                    eq_rate=eq.sigma * math.sqrt(h) * eq.rho,
                    eq_own=eq.sigma * math.sqrt(h) * math.sqrt(max(0.0, 1.0 - eq.rho ** 2)),
                    drift=(eq.risk_premium - 0.5 * eq.sigma ** 2) * t)


def _deterministic_paths(st: Settings, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(short rate, discount factor), each [n, T+1], for the deterministic model."""
    m, k = st.steps_per_year, np.arange(t.size)
    if st.curve is not None:
        curve = st.curve
        idx = k // m
        # An N-year curve covers an N-year horizon: at t = N exactly use the last rate.
        idx = np.where((k % m == 0) & (idx == curve.years), curve.years - 1, idx)
        spot = curve.spots[idx]
        return np.log1p(spot)[None, :], np.power(1.0 + spot, -t)[None, :]
    rates = st.paths
    log_growth = np.concatenate((np.zeros((rates.shape[0], 1)), np.cumsum(np.log1p(rates), axis=1)), axis=1)
    whole = k // m
    frac = (k % m) / m
    this_year = np.log1p(rates[:, np.minimum(whole, rates.shape[1] - 1)])
    log_df = -(log_growth[:, whole] + frac * this_year)
    return this_year, np.exp(log_df)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------

class _Workspace:
    """Flat scratch buffers reused across tiles: every tile view is contiguous, so numpy runs the
    same vectorised loop on it whatever the block width."""

    def __init__(self, block: int, tile: int):
        self.block, self.tile = block, tile
        pairs = (tile + 1) // 2
        self.raw = np.empty(tile * block, np.uint64)
        self.raw_eq = np.empty(pairs * block, np.uint64)
        self.f = [np.empty(tile * block) for _ in range(4)]
        self.g = [np.empty(pairs * block) for _ in range(3)]
        self.shock = np.empty(tile * 3 * block)
        self.state = np.empty((tile + 1) * 3 * block)
        self.vec = [np.empty(2 * block) for _ in range(3)]

    @staticmethod
    def take(buf: np.ndarray, *shape: int) -> np.ndarray:
        return buf[:math.prod(shape)].reshape(shape)


class EsgEngine(ICalcEngine):
    def __init__(self):
        self._settings: Optional[Settings] = None
        self._plan: Any = None
        self._fixed: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._time: Optional[np.ndarray] = None
        self._warnings: List[str] = []
        self._ws: Optional[_Workspace] = None

    # -- lifecycle ---------------------------------------------------------------------------

    def initialize(self, config, credentials=None):
        st = parse_config(config or {})
        t = np.arange(st.steps + 1, dtype=np.float64) / st.steps_per_year
        warnings = []
        plan = fixed = None
        if st.model in ("hull_white", "vasicek"):
            plan = _gaussian_plan(st, t)
        elif st.model == "cir":
            plan = _cir_plan(st, t)
            if 2.0 * st.a * st.theta < st.sigma ** 2:
                warnings.append("cir: 2*a*theta < sigma^2 (Feller condition fails): rates reach zero and are truncated")
        else:
            fixed = _deterministic_paths(st, t)
        self._settings, self._plan, self._fixed, self._time = st, plan, fixed, t
        self._warnings = warnings
        self._ws = None

    def get_info(self):
        return EngineInfo(name="LiveCalc ESG", version="1.0.0", engine_type="esg",
                          supports_assumptions_manager=False)

    def dispose(self):
        self._settings = self._plan = self._fixed = self._time = self._ws = None

    @property
    def is_initialized(self):
        return self._settings is not None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise ExecutionError("engine not initialized")
        return self._settings

    # -- one chunk ---------------------------------------------------------------------------

    def runChunk(self, input_buffer, output_buffer):
        st = self.settings
        start = time.perf_counter()
        try:
            dst = outputs(output_buffer)
        except (ValueError, KeyError) as e:
            raise ExecutionError(f"output buffer: {e}") from None
        chunk = dst.chunk
        if chunk.total_rows == 0 or chunk.row_count == 0:
            raise ConfigurationError("the node has zero scenarios: set the node's 'rows' (and 'scenarios') to >= 1")
        if st.scenarios is not None and chunk.total_rows != st.scenarios:
            raise ConfigurationError(
                f"config key 'scenarios' is {st.scenarios} but the node has {chunk.total_rows} rows")
        cols = self._columns(dst, chunk)
        k0, n = chunk.row_start, chunk.row_count
        warnings = list(self._warnings)

        if st.model == "deterministic":
            self._deterministic(cols, k0, n, chunk.total_rows, warnings)
        else:
            self._stochastic(cols, k0, n)

        if st.path_ids is not None:
            cols[ID_COLUMN][:] = st.path_ids[k0:k0 + n]
        else:
            cols[ID_COLUMN][:] = np.arange(k0, k0 + n, dtype=np.int64)
        if TIME_COLUMN in cols:
            cols[TIME_COLUMN][:] = self._time
        return {
            "execution_time_ms": (time.perf_counter() - start) * 1e3,
            "rows_processed": n,
            "bytes_written": int(sum(a.nbytes for a in cols.values())),
            # Every chunk would repeat the same notes: the first chunk speaks for the node.
            "warnings": warnings if chunk.index == 0 else [],
        }

    def _columns(self, dst, chunk: Chunk) -> Dict[str, np.ndarray]:
        steps = self.settings.steps + 1
        want = {
            RATE_COLUMN: (np.float64, (chunk.row_count, steps)),
            DF_COLUMN: (np.float64, (chunk.row_count, steps)),
            EQUITY_COLUMN: (np.float64, (chunk.row_count, steps)),
            ID_COLUMN: (np.int64, (chunk.row_count,)),
            TIME_COLUMN: (np.float64, (steps,)),
        }
        for name in dst:
            if name not in want:
                raise ConfigurationError(
                    f"output column '{name}' is not produced by python_esg (it writes {', '.join(want)})")
        for name in REQUIRED_COLUMNS:
            if name not in dst:
                raise ConfigurationError(f"the node's outputs do not declare the required column '{name}'")
        cols = {}
        for name, arr in dst.items():
            dtype, shape = want[name]
            if arr.dtype != dtype:
                raise ConfigurationError(f"output column '{name}' must be {np.dtype(dtype).name}, not {arr.dtype.name}")
            if arr.shape != shape:
                raise ConfigurationError(
                    f"output column '{name}' has shape {list(arr.shape)} in this chunk but must be {list(shape)}"
                    f" ({chunk.row_count} rows in the chunk, horizon_years*steps_per_year + 1 = {steps} points)")
            cols[name] = arr
        return cols

    def _deterministic(self, cols, k0: int, n: int, total: int, warnings: List[str]) -> None:
        st = self.settings
        rate, df = self._fixed
        if st.paths is not None:
            if total > rate.shape[0]:
                raise ConfigurationError(
                    f"config key 'paths' holds {rate.shape[0]} scenarios but the node has {total} rows")
            if total < rate.shape[0]:
                warnings.append(f"paths: using the first {total} of {rate.shape[0]} scenarios")
            rows = slice(k0, k0 + n)
        else:
            rows = slice(0, 1)  # one scenario from a curve, repeated on every row
        cols[RATE_COLUMN][:] = rate[rows]
        cols[DF_COLUMN][:] = df[rows]
        if EQUITY_COLUMN in cols:
            cols[EQUITY_COLUMN][:] = np.exp(st.equity.risk_premium * self._time) / df[rows]

    def _stochastic(self, cols, k0: int, n: int) -> None:
        st = self.settings
        block, tile = int(BLOCK_SCENARIOS), int(TILE_STEPS)
        if block < 1 or tile < 2 or tile % 2:
            raise ExecutionError(f"bad tuning BLOCK_SCENARIOS={block}, TILE_STEPS={tile} (tile must be even)")
        if self._ws is None or (self._ws.block, self._ws.tile) != (block, tile):
            self._ws = _Workspace(block, tile)
        out_r, out_d = cols[RATE_COLUMN], cols[DF_COLUMN]
        out_s = cols.get(EQUITY_COLUMN)
        # Equal blocks (never a sliver at the end): a block's width is the vector length of every
        # per-step operation, so a thin last block would pay numpy's call overhead for nothing.
        size = -(-n // -(-n // block))
        for lo in range(0, n, size):
            hi = min(n, lo + size)
            ids = np.arange(k0 + lo, k0 + hi)
            if st.antithetic:
                # Scenario k reads stream slice k // 2, negated when k is odd.
                slots = ids // 2
                raw = raw_draws(st.seed, int(slots[0]), int(slots[-1] - slots[0]) + 1, st.steps)[slots - slots[0]]
                sign = np.where(ids % 2 == 1, -1.0, 1.0)
            else:
                raw = raw_draws(st.seed, k0 + lo, hi - lo, st.steps)
                sign = None
            rows = slice(lo, hi)
            kernel = self._cir_block if st.model == "cir" else self._gaussian_block
            kernel(raw, sign, out_r[rows], out_d[rows], None if out_s is None else out_s[rows])

    # -- kernels -----------------------------------------------------------------------------

    def _normals(self, raw_tile: np.ndarray, scale, radius: np.ndarray, tan: np.ndarray, tmp: np.ndarray):
        """Box-Muller on a contiguous [rows, n] tile of raw draws.

        Leaves c = R(1-t^2)/(1+t^2)/sqrt(2) in ``tmp`` and s = R t/(1+t^2)/sqrt(2) in ``tan``
        (times ``scale``, a scalar or a row of antithetic signs), so z1 = sqrt(2) c and
        z2 = 2 sqrt(2) s; the constant factors are folded into the coefficients that use them,
        which saves passes over the tile.
        """
        halves = raw_tile.view(np.uint32).reshape(raw_tile.shape + (2,))
        # ln u directly (u = (lo + 1) 2^-32 is exact): 32 ln 2 - ln(lo + 1) would cancel near u = 1.
        np.add(halves[..., 0], 1.0, out=radius)
        radius *= 2.0 ** -32
        np.log(radius, out=radius)
        np.negative(radius, out=radius)
        np.sqrt(radius, out=radius)
        if scale is not None:
            radius *= scale
        np.multiply(halves[..., 1].view(np.int32), _HALF_ANGLE, out=tan)
        np.tan(tan, out=tan)
        np.multiply(tan, tan, out=tmp)
        np.add(tmp, 1.0, out=tmp)
        np.divide(radius, tmp, out=radius)
        np.subtract(2.0, tmp, out=tmp)  # 1 - t^2 = 2 - (1 + t^2)
        np.multiply(tmp, radius, out=tmp)
        np.multiply(tan, radius, out=tan)

    def _equity_shocks(self, raw, j0: int, m: int, n: int, sign, coef: float, shock_w: np.ndarray) -> None:
        """Add coef * z3 to shock_w[m, n] for steps j0..j0+m-1 (j0 even)."""
        ws, steps = self._ws, self.settings.steps
        pairs = (m + 1) // 2
        raw_e = ws.take(ws.raw_eq, pairs, n)
        np.copyto(raw_e, raw[:, steps + j0 // 2:steps + j0 // 2 + pairs].T)
        r_e, t_e, c_e = (ws.take(g, pairs, n) for g in ws.g)
        scale = coef * _SQRT2 if sign is None else sign * (coef * _SQRT2)
        self._normals(raw_e, scale, r_e, t_e, c_e)
        shock_w[0::2] += c_e
        odd = t_e[:m // 2]
        odd *= 2.0
        shock_w[1::2] += odd

    def _gaussian_block(self, raw, sign, out_r, out_d, out_s) -> None:
        st, plan, ws = self.settings, self._plan, self._ws
        n, steps, tile = raw.shape[0], st.steps, ws.tile
        with_w = out_s is not None and st.equity.sigma > 0
        k = 3 if with_w else 2
        c = plan.chol
        c1 = c[:, 0] * _SQRT2
        c2 = c[:, 1] * 2.0 * _SQRT2
        mix = np.array([[plan.phi_m1], [plan.b]])
        sign_row = None if sign is None else sign[None, :]
        state0 = ws.take(ws.state, 1, k, n)[0]
        state0[...] = 0.0
        out_r[:, 0] = plan.alpha[0]
        out_d[:, 0] = 1.0
        if out_s is not None:
            out_s[:, 0] = 1.0
        for j0 in range(0, steps, tile):
            j1 = min(steps, j0 + tile)
            m = j1 - j0
            raw_t = ws.take(ws.raw, m, n)
            np.copyto(raw_t, raw[:, j0:j1].T)
            radius, s_part, c_part, scratch = (ws.take(f, m, n) for f in ws.f)
            self._normals(raw_t, sign_row, radius, s_part, c_part)
            shock = ws.take(ws.shock, m, k, n)
            np.multiply(c_part, c1[0], out=shock[:, 0])
            np.multiply(c_part, c1[1], out=shock[:, 1])
            np.multiply(s_part, c2[1], out=scratch)
            shock[:, 1] += scratch
            if with_w:
                np.multiply(c_part, c1[2], out=shock[:, 2])
                np.multiply(s_part, c2[2], out=scratch)
                shock[:, 2] += scratch
                self._equity_shocks(raw, j0, m, n, sign_row, c[2, 2], shock[:, 2])
            state = ws.take(ws.state, m + 1, k, n)
            mixed = ws.take(ws.vec[0], 2, n)
            # The only sequential part, so it is kept to three vector operations per step across
            # the block: x' = x + (e^{-ah} - 1) x + e_x ; Y' = Y + B x + e_I ; W' = W + e_W.
            for i in range(m):
                np.add(state[i], shock[i], out=state[i + 1])
                np.multiply(state[i, 0], mix, out=mixed)
                state[i + 1, 0:2] += mixed
            # Finish each column in the time-major tile (in cache), then one transposed copy into
            # the scenario-major output rows.
            grid = slice(j0 + 1, j1 + 1)
            np.add(state[1:, 0], plan.alpha[grid, None], out=scratch)
            np.copyto(out_r[:, grid], scratch.T)
            np.subtract(plan.log_df0[grid, None], state[1:, 1], out=scratch)
            np.exp(scratch, out=scratch)
            np.copyto(out_d[:, grid], scratch.T)
            if out_s is not None:
                if with_w:
                    np.add(state[1:, 1], state[1:, 2], out=scratch)
                    scratch += plan.log_s0[grid, None]
                else:
                    np.add(state[1:, 1], plan.log_s0[grid, None], out=scratch)
                np.exp(scratch, out=scratch)
                np.copyto(out_s[:, grid], scratch.T)
            state[0] = state[m]

    def _cir_block(self, raw, sign, out_r, out_d, out_s) -> None:
        st, plan, ws = self.settings, self._plan, self._ws
        n, steps, tile = raw.shape[0], st.steps, ws.tile
        with_w = out_s is not None and st.equity.sigma > 0
        sign_row = None if sign is None else sign[None, :]
        # state rows: r~ (full-truncation variable), integral of r, s W_S
        state0 = ws.take(ws.state, 1, 3, n)[0]
        state0[0] = st.r0
        state0[1:] = 0.0
        out_r[:, 0] = st.r0
        out_d[:, 0] = 1.0
        if out_s is not None:
            out_s[:, 0] = 1.0
        half_h = 0.5 * st.dt
        for j0 in range(0, steps, tile):
            j1 = min(steps, j0 + tile)
            m = j1 - j0
            raw_t = ws.take(ws.raw, m, n)
            np.copyto(raw_t, raw[:, j0:j1].T)
            radius, s_part, c_part, scratch = (ws.take(f, m, n) for f in ws.f)
            self._normals(raw_t, sign_row, radius, s_part, c_part)
            shock = ws.take(ws.shock, m, 2, n)
            np.multiply(c_part, plan.sigma_sqrt_h * _SQRT2, out=shock[:, 0])
            if with_w:
                np.multiply(c_part, plan.eq_rate * _SQRT2, out=shock[:, 1])
                self._equity_shocks(raw, j0, m, n, sign_row, plan.eq_own, shock[:, 1])
            state = ws.take(ws.state, m + 1, 3, n)
            pos, root, pos_next = (ws.take(v, n) for v in ws.vec)
            np.maximum(state[0, 0], 0.0, out=pos)
            for i in range(m):
                cur, nxt = state[i], state[i + 1]
                np.sqrt(pos, out=root)
                np.multiply(root, shock[i, 0], out=root)
                np.add(cur[0], root, out=nxt[0])
                np.multiply(pos, plan.a_h, out=root)
                nxt[0] -= root
                nxt[0] += plan.a_h_theta
                np.maximum(nxt[0], 0.0, out=pos_next)
                np.add(pos, pos_next, out=root)
                root *= half_h
                np.add(cur[1], root, out=nxt[1])
                if with_w:
                    np.add(cur[2], shock[i, 1], out=nxt[2])
                pos, pos_next = pos_next, pos
            grid = slice(j0 + 1, j1 + 1)
            np.maximum(state[1:, 0], 0.0, out=scratch)
            np.copyto(out_r[:, grid], scratch.T)
            np.negative(state[1:, 1], out=scratch)
            np.exp(scratch, out=scratch)
            np.copyto(out_d[:, grid], scratch.T)
            if out_s is not None:
                np.add(state[1:, 1], plan.drift[grid, None], out=scratch)
                if with_w:
                    scratch += state[1:, 2]
                np.exp(scratch, out=scratch)
                np.copyto(out_s[:, grid], scratch.T)
            state[0] = state[m]


# ----------------------------------------------------------------------------------------------
# Without a supervisor
# ----------------------------------------------------------------------------------------------

def generate(config: Mapping[str, Any], first: int = 0, count: int = 1, equity: bool = True) -> Dict[str, np.ndarray]:
    """Scenarios ``first .. first+count-1`` exactly as the engine writes them in any run.

    Returns ``short_rate``, ``discount_factor``, ``equity_index`` (when ``equity``),
    ``scenario_id`` and ``time``. ``generate(cfg, k, 1)`` regenerates scenario k alone.
    """
    engine = EsgEngine()
    engine.initialize(dict(config))
    steps = engine.settings.steps + 1
    cols = {RATE_COLUMN: np.zeros((count, steps)), DF_COLUMN: np.zeros((count, steps))}
    if equity:
        cols[EQUITY_COLUMN] = np.zeros((count, steps))
    cols[ID_COLUMN] = np.zeros(count, np.int64)
    cols[TIME_COLUMN] = np.zeros(steps)
    total = engine.settings.scenarios or first + count
    buf = build_view(cols, Chunk(0, first, count, total))
    engine.runChunk(None, buf)
    return {name.split(".", 1)[1]: np.array(arr) for name, arr in outputs(buf).items()}
