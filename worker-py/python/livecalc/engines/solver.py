"""Solver engine (``python_solver``): find parameters of upstream nodes that meet a target.

Theory of operation
===================

The node sits at the end of a chain (ESG -> projection -> statistics -> solver) and runs as one
chunk (``"rows": 1``). Its whole optimisation happens inside that one ``runChunk`` call. Each
time the optimiser wants to know the metrics at a point ``x`` it calls
:func:`livecalc.evaluate.evaluate` with ``{"<node>.<config key>": x_i}``; the supervisor re-runs
the projection sub-graph on its warm workers and writes the new results into the very shared
memory the solver's input arrays alias. So an *evaluation* is: send parameters, wait, read the
metrics from the input view. Evaluations are the only expensive operation and everything below
is arranged to spend as few as possible:

* every evaluated point is cached by its exact parameter values, so an optimiser that asks twice
  (SLSQP asks for the objective and each constraint at the same point; brentq re-asks its
  bracket ends) pays once;
* a target on a single parameter is first tried with the **linear probe**: evaluate at the
  initial point ``x0`` and at ``x1 = x0 ± 10 %`` of the bounds' range, and take the secant root
  ``x2``. The mean PV is linear in the premium multiplier (premiums scale, claims do not), so
  ``x2`` is the exact root up to rounding and its evaluation confirms it: three evaluations,
  whatever the size of the book. Only if the metric is not linear does the chosen algorithm go on
  (from the points already known);
* SLSQP gets its gradients from forward differences computed here, in one pass shared by the
  objective and every constraint, so a gradient costs ``n`` evaluations, not ``n·(1 + m)``.

**Algorithms.** ``brentq`` (one parameter, a target): after the probe, a bracket is taken from
the points already evaluated, else from the bound on the side where the residual shrinks (the
other bound too, if needed); bounds of one sign are an error. Then Brent's method, stopped by the
residual test. ``secant``: the secant iteration continued from the probe, steps clipped to the
bounds, unsafeguarded (a step past a bound already evaluated means no root inside). ``slsqp``:
scipy's SLSQP with bounds and the constraints as SLSQP constraints; from an infeasible start a
*phase 1* first minimises the sum of squared scaled shortfalls and stops at the first feasible
point (SLSQP started infeasible on an infeasible set otherwise burns thousands of evaluations
in failing line searches; phase 1 ending without one is the infeasibility verdict).
``nelder-mead``: scipy's simplex on transformed coordinates (below) with an exact (L1) penalty
``penalty · sum(violation_j / scale_j)``: with a weight above the constraint's multiplier the
penalised minimum *is* the constrained one. ``differential_evolution``: scipy's, seeded,
``x0`` in the initial population, no polishing, constraints handled by scipy (feasible members
rank above infeasible ones, infeasible ones by violation); it gives up on feasibility when the
least violation has stalled for 20 generations.

The optimisers work in the unit box ``u = (x - lower) / (upper - lower)`` so that parameters
of different sizes are treated alike; Nelder–Mead, which knows no bounds, works on
``u = (1 + sin z) / 2`` with ``z`` unbounded, which maps every ``z`` inside the box and reaches
its faces. Objectives are scaled by their size at the initial point (a target by its residual
there), and constraints by ``max(|value|, |metric at x0|)``, so that the optimisers' tolerances
mean the same thing for a mean PV of 10^8 as for a ratio of 0.3.

**Stopping.** A target is met when ``|metric - target| <= tolerance`` at a feasible point; the
check runs after every evaluation, whichever algorithm is searching, and stops the search at
once. Limits are checked before every evaluation: ``max_evaluations`` and ``timeout_s``. The
deadline is a plain ``time.monotonic()`` comparison (no SIGALRM: the Rust host owns signals),
and the search stops when the time left is shorter than two of the slowest evaluations seen (the
next one and, possibly, the one that restores the best point), so a run with steady evaluation
times ends before its deadline. An evaluation in flight is never interrupted: bounding one
evaluation is the supervisor's chunk timeout. Limits, the target check and failures all stop the
search by raising an exception through scipy, which unwinds it without further evaluations.

**The last evaluation is the solution.** The supervisor writes the projection's outputs as they
stand when the solver returns, so they must belong to the solution. If the best point is not the
last one evaluated (an optimiser's finite-difference probe, a timeout, a failure), it is
evaluated once more at the end. That evaluation is budgeted: the search itself may use
``max_evaluations - 1`` evaluations and keeps the last for this.

**Best point.** Among *feasible* evaluated points (every constraint met within its tolerance):
the smallest ``|metric - target|``, the smallest metric (minimize) or the largest (maximize).

**Failures are reported, not hidden.** A failed evaluation stops the search; the best point so far
is returned (re-evaluated if needed) with ``converged = 0``, stop reason ``evaluation_failed`` and
the supervisor's message as a warning. With nothing evaluated there is nothing to return and the
chunk fails. A NaN or infinite metric fails the chunk: a projection that produces NaN is broken,
and optimising through it would hide that. A constraint set that contradicts itself (detected
from the config alone when the same metric gets incompatible bounds, or when the search ends
with no feasible point), bounds that do not bracket a root for ``brentq``, and a parameter the
metric does not depend on at all (usually a misspelt config key) each fail with a message that
names the problem.

Non-goals: integer or categorical parameters; stochastic objectives (evaluations must be
deterministic: the same parameters give the same metrics); evaluations in parallel.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import optimize

from livecalc import ConfigurationError, EngineInfo, ExecutionError, ICalcEngine, inputs, outputs
from livecalc import evaluate as _evaluate_module
from livecalc.evaluate import EvaluationError

ALGORITHMS = ("brentq", "secant", "slsqp", "nelder-mead", "differential_evolution")
ROOT_ALGORITHMS = ("brentq", "secant")

# Stop-reason codes written to solution.stop_reason (int32). Documented in worker-py/README.md.
STOP_CODES = {
    "converged": 0,
    "max_evaluations": 1,
    "timeout": 2,
    "evaluation_failed": 3,
    "optimizer_stopped": 4,
    "stalled": 5,
}

CONFIG_KEYS = {
    "parameters", "objective", "constraints", "algorithm", "tolerance", "constraint_tolerance",
    "max_evaluations", "timeout_s", "linear_probe", "fd_step", "penalty", "seed", "popsize",
}

# Output columns besides the per-parameter ones: name -> (dtype, required).
SOLUTION_COLUMNS = {
    "objective": (np.float64, True),
    "converged": (np.uint8, True),
    "metric": (np.float64, False),
    "evaluations": (np.int32, False),
    "stop_reason": (np.int32, False),
}
HISTORY_COLUMNS = {
    "evaluation": np.int32,
    "objective": np.float64,
    "metric": np.float64,
    "elapsed_ms": np.float64,
    "evaluation_ms": np.float64,
    "feasible": np.uint8,
}

_NODE = re.compile(r"^[A-Za-z0-9_-]+$")
_METRIC = re.compile(r"^([A-Za-z0-9_-]+)\.([^.:\s]+)(?::(\S+))?$")
_LEVELLED = re.compile(r"^(p|var|cte)(\d{1,3})(?:[._](\d{1,9}))?$")
_PLAIN_AGGS = ("mean", "std", "sum", "min", "max")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parameter:
    name: str          # "<node>.<config key>", sent to the supervisor as is
    column: str        # short name of its output columns
    initial: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Metric:
    """One input column, optionally aggregated over its values (scenarios)."""
    text: str                       # as written in the config; the key of its value
    column: str                     # full input column name "<binding>.<column>"
    agg: Optional[str] = None       # None (a single value) or mean/std/sum/min/max/p/var/cte
    level: Optional[Fraction] = None  # p: percent in [0, 100]; var/cte: fraction in (0, 1)


@dataclass(frozen=True)
class Expr:
    """A metric or a weighted sum of metrics."""
    label: str
    path: str                       # config path, for messages
    terms: Tuple[Tuple[Metric, float], ...]

    def value(self, values: Dict[str, float]) -> float:
        return math.fsum(w * values[m.text] for m, w in self.terms)


@dataclass(frozen=True)
class Constraint:
    expr: Expr
    op: str
    value: float
    tolerance: float
    index: int

    def violation(self, v: float) -> float:
        if self.op == "<=":
            return max(0.0, v - self.value)
        if self.op == ">=":
            return max(0.0, self.value - v)
        return abs(v - self.value)

    def describe(self) -> str:
        return f"constraints[{self.index}] ({self.expr.label} {self.op} {self.value:g})"


@dataclass(frozen=True)
class Settings:
    parameters: Tuple[Parameter, ...]
    objective: Expr
    sense: str                      # "target", "minimize" or "maximize"
    target: float
    constraints: Tuple[Constraint, ...]
    algorithm: str
    tolerance: float
    max_evaluations: int
    timeout_s: Optional[float]
    linear_probe: bool
    fd_step: float
    penalty: float
    seed: int
    popsize: int

    @property
    def is_root_problem(self) -> bool:
        return self.sense == "target" and len(self.parameters) == 1

    def metrics(self) -> List[Tuple[Metric, str]]:
        seen: Dict[str, Tuple[Metric, str]] = {}
        for e in (self.objective, *(c.expr for c in self.constraints)):
            for m, _ in e.terms:
                seen.setdefault(m.text, (m, e.path))
        return list(seen.values())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(obj: dict, key: str, path: str, default: Any = None, required: bool = False) -> Any:
    if key not in obj:
        if required:
            raise ConfigurationError(f"missing config key '{path}'")
        return default
    v = obj[key]
    if not _is_number(v) or not math.isfinite(float(v)):
        raise ConfigurationError(f"config key '{path}' must be a finite number (got {v!r})")
    return float(v)


def _integer(obj: dict, key: str, path: str, default: int, lo: int) -> int:
    if key not in obj:
        return default
    v = obj[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigurationError(f"config key '{path}' must be an integer (got {v!r})")
    if v < lo:
        raise ConfigurationError(f"config key '{path}' must be >= {lo} (got {v})")
    return v


def _object(v: Any, path: str) -> dict:
    if not isinstance(v, dict):
        raise ConfigurationError(f"config key '{path}' must be an object (got {type(v).__name__})")
    return v


def _unknown(obj: dict, allowed: Sequence[str], path: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        where = f"{path}.{extra[0]}" if path else extra[0]
        raise ConfigurationError(f"unknown config key '{where}' (allowed: {', '.join(sorted(allowed))})")


def parse_level(text: str) -> Optional[Fraction]:
    """``"99_5"`` or ``"99.5"`` -> Fraction(199, 2), exactly (no binary rounding)."""
    m = re.fullmatch(r"(\d{1,3})(?:[._](\d{1,9}))?", text)
    if not m:
        return None
    frac = m.group(2) or ""
    return Fraction(int(m.group(1) + frac), 10 ** len(frac))


def parse_metric(text: Any, path: str) -> Metric:
    if not isinstance(text, str):
        raise ConfigurationError(f"config key '{path}' must be a metric name string (got {text!r})")
    m = _METRIC.match(text)
    if not m:
        raise ConfigurationError(
            f"config key '{path}': {text!r} is not a metric; write '<input>.<column>' for a single value "
            f"or '<input>.<column>:<aggregate>' with aggregate mean, std, sum, min, max, p<L>, var<L> or cte<L>")
    column = f"{m.group(1)}.{m.group(2)}"
    agg = m.group(3)
    if agg is None:
        return Metric(text, column)
    if agg in _PLAIN_AGGS:
        return Metric(text, column, agg)
    lv = _LEVELLED.match(agg)
    if lv:
        kind = lv.group(1)
        pct = parse_level(agg[len(kind):])
        if pct is not None:
            if kind == "p" and 0 <= pct <= 100:
                return Metric(text, column, "p", pct)
            if kind in ("var", "cte") and 0 < pct < 100:
                return Metric(text, column, kind, pct / 100)
    raise ConfigurationError(
        f"config key '{path}': unknown aggregate {agg!r} in {text!r} (mean, std, sum, min, max, "
        f"p<L> with 0 <= L <= 100, var<L> and cte<L> with 0 < L < 100; write 99.5 as 99_5 or 99.5)")


def parse_expr(spec: dict, path: str, what: str) -> Expr:
    """``{"metric": "a.b"}`` or ``{"combination": {"a.b": w, ...}}`` inside ``spec``."""
    has_metric, has_combo = "metric" in spec, "combination" in spec
    if has_metric == has_combo:
        raise ConfigurationError(f"config key '{path}' needs exactly one of 'metric' and 'combination' for the {what}")
    name = spec.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError(f"config key '{path}.name' must be a non-empty string")
    if has_metric:
        m = parse_metric(spec["metric"], f"{path}.metric")
        return Expr(name or m.text, f"{path}.metric", ((m, 1.0),))
    combo = _object(spec["combination"], f"{path}.combination")
    if not combo:
        raise ConfigurationError(f"config key '{path}.combination' must name at least one metric")
    terms = []
    for text, w in combo.items():
        p = f"{path}.combination[{text!r}]"
        if not _is_number(w) or not math.isfinite(float(w)):
            raise ConfigurationError(f"config key '{p}' must be a finite weight (got {w!r})")
        terms.append((parse_metric(text, p), float(w)))
    label = name or " + ".join(f"{w:g}*{m.text}" for m, w in terms)
    return Expr(label, f"{path}.combination", tuple(terms))


def parse_config(config: Any) -> Settings:
    if not isinstance(config, dict):
        raise ConfigurationError(f"the solver's config must be an object (got {type(config).__name__})")
    _unknown(config, CONFIG_KEYS, "")

    if "parameters" not in config:
        raise ConfigurationError("missing config key 'parameters'")
    raw_params = config["parameters"]
    if not isinstance(raw_params, list) or not raw_params:
        raise ConfigurationError("config key 'parameters' must be a non-empty list")
    params: List[Parameter] = []
    for i, p in enumerate(raw_params):
        path = f"parameters[{i}]"
        p = _object(p, path)
        _unknown(p, ("name", "initial", "lower", "upper", "column"), path)
        name = p.get("name")
        if not isinstance(name, str) or "." not in name:
            raise ConfigurationError(f"config key '{path}.name' must be '<node id>.<config key>' (got {name!r})")
        node, key = name.split(".", 1)
        if not _NODE.match(node) or not key or key.startswith(".") or key.endswith("."):
            raise ConfigurationError(f"config key '{path}.name' must be '<node id>.<config key>' (got {name!r})")
        lower = _number(p, "lower", f"{path}.lower", required=True)
        upper = _number(p, "upper", f"{path}.upper", required=True)
        initial = _number(p, "initial", f"{path}.initial", required=True)
        if not lower < upper:
            raise ConfigurationError(f"config key '{path}.lower' must be below '{path}.upper' (got {lower:g} >= {upper:g})")
        if not lower <= initial <= upper:
            raise ConfigurationError(
                f"config key '{path}.initial' must lie in [lower, upper] = [{lower:g}, {upper:g}] (got {initial:g})")
        # DAG column names are 1-40 characters without '.', and config keys may be nested.
        column = p.get("column", key.replace(".", "_"))
        if not isinstance(column, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", column):
            raise ConfigurationError(
                f"config key '{path}.column' must be 1-40 letters, digits, '_' or '-' (got {column!r}); "
                f"set it when the config key is too long to name a column")
        if column in SOLUTION_COLUMNS or column in HISTORY_COLUMNS:
            raise ConfigurationError(
                f"parameter column {column!r} of '{path}' clashes with a reserved output column; set '{path}.column'")
        for q in params:
            if q.name == name:
                raise ConfigurationError(f"config key '{path}.name': parameter {name!r} is listed twice")
            if q.column == column:
                raise ConfigurationError(
                    f"config key '{path}': parameters {q.name!r} and {name!r} would share the output column "
                    f"{column!r}; set '{path}.column'")
        params.append(Parameter(name, column, initial, lower, upper))

    if "objective" not in config:
        raise ConfigurationError("missing config key 'objective'")
    obj = _object(config["objective"], "objective")
    _unknown(obj, ("metric", "combination", "name", "target", "minimize", "maximize"), "objective")
    objective = parse_expr(obj, "objective", "objective")
    senses = [k for k in ("target", "minimize", "maximize") if k in obj]
    if len(senses) != 1:
        raise ConfigurationError(
            "config key 'objective' needs exactly one of 'target' (a number), 'minimize': true and 'maximize': true")
    sense = senses[0]
    target = 0.0
    if sense == "target":
        target = _number(obj, "target", "objective.target")
    elif obj[sense] is not True:
        raise ConfigurationError(f"config key 'objective.{sense}' must be true (got {obj[sense]!r})")

    tolerance = _number(config, "tolerance", "tolerance", 1e-6)
    if tolerance <= 0:
        raise ConfigurationError(f"config key 'tolerance' must be > 0 (got {tolerance:g})")
    ctol = _number(config, "constraint_tolerance", "constraint_tolerance")
    if ctol is not None and ctol < 0:
        raise ConfigurationError(f"config key 'constraint_tolerance' must be >= 0 (got {ctol:g})")

    raw_cons = config.get("constraints", [])
    if not isinstance(raw_cons, list):
        raise ConfigurationError("config key 'constraints' must be a list")
    constraints: List[Constraint] = []
    for i, c in enumerate(raw_cons):
        path = f"constraints[{i}]"
        c = _object(c, path)
        _unknown(c, ("metric", "combination", "name", "op", "value"), path)
        expr = parse_expr(c, path, "constraint")
        op = c.get("op")
        if op not in ("<=", ">=", "=="):
            raise ConfigurationError(f"config key '{path}.op' must be '<=', '>=' or '==' (got {op!r})")
        value = _number(c, "value", f"{path}.value", required=True)
        tol = ctol if ctol is not None else tolerance * max(1.0, abs(value))
        constraints.append(Constraint(expr, op, value, tol, i))
    _check_compatible(constraints)

    algorithm = config.get("algorithm")
    if algorithm is None:
        algorithm = "brentq" if sense == "target" and len(params) == 1 else "slsqp"
    if algorithm not in ALGORITHMS:
        raise ConfigurationError(f"config key 'algorithm' must be one of {', '.join(ALGORITHMS)} (got {algorithm!r})")
    if algorithm in ROOT_ALGORITHMS and (sense != "target" or len(params) != 1):
        raise ConfigurationError(
            f"config key 'algorithm': {algorithm} finds one parameter that hits a target; this problem has "
            f"{len(params)} parameter(s) and {'a target' if sense == 'target' else sense}")

    timeout_s = _number(config, "timeout_s", "timeout_s")
    if timeout_s is not None and timeout_s <= 0:
        raise ConfigurationError(f"config key 'timeout_s' must be > 0 (got {timeout_s:g})")
    linear_probe = config.get("linear_probe", True)
    if not isinstance(linear_probe, bool):
        raise ConfigurationError(f"config key 'linear_probe' must be true or false (got {linear_probe!r})")
    fd_step = _number(config, "fd_step", "fd_step", 1e-7)
    if not 0 < fd_step <= 0.1:
        raise ConfigurationError(f"config key 'fd_step' must lie in (0, 0.1] (got {fd_step:g})")
    penalty = _number(config, "penalty", "penalty", 1e3)
    if penalty <= 0:
        raise ConfigurationError(f"config key 'penalty' must be > 0 (got {penalty:g})")

    return Settings(
        parameters=tuple(params), objective=objective, sense=sense, target=target,
        constraints=tuple(constraints), algorithm=algorithm, tolerance=tolerance,
        max_evaluations=_integer(config, "max_evaluations", "max_evaluations", 100, 1),
        timeout_s=timeout_s, linear_probe=linear_probe, fd_step=fd_step, penalty=penalty,
        seed=_integer(config, "seed", "seed", 0, 0), popsize=_integer(config, "popsize", "popsize", 15, 2),
    )


def _check_compatible(constraints: Sequence[Constraint]) -> None:
    """Bounds on one and the same metric that exclude each other make the set infeasible before
    any evaluation; finding that out after a whole search would waste it."""
    by_metric: Dict[Tuple, List[Constraint]] = {}
    for c in constraints:
        key = tuple((m.text, w) for m, w in c.expr.terms)
        by_metric.setdefault(key, []).append(c)
    for group in by_metric.values():
        lows = [c for c in group if c.op in (">=", "==")]
        highs = [c for c in group if c.op in ("<=", "==")]
        for lo in lows:
            for hi in highs:
                if lo.value - lo.tolerance > hi.value + hi.tolerance:
                    raise ConfigurationError(
                        f"the constraint set is infeasible: {lo.describe()} and {hi.describe()} cannot both hold")


# ----------------------------------------------------------------------------------------------
# Metrics, read from the input view after every evaluation
# ----------------------------------------------------------------------------------------------

def aggregate(values: np.ndarray, metric: Metric) -> float:
    """The statistic a metric names, over one column's values (the scenarios).

    ``p<L>``: numpy's linear percentile (Hyndman–Fan type 7), as ``cpp_pv_statistics``.
    ``var<L>`` and ``cte<L>`` are of the *loss* ``-x``: the ``ceil(a·S)``-th smallest loss, and
    the mean of the ``k = ceil((1 - a)·S)`` largest losses (the ``k`` smallest values of ``x``),
    both returned as losses. ``a`` is exact (a Fraction), so 99.5 % of 1,000 is a tail of 5.
    """
    x = values
    if metric.agg is None:
        return float(x[0])
    if metric.agg == "mean":
        return float(np.mean(x))
    if metric.agg == "std":
        return float(np.std(x, ddof=1))
    if metric.agg == "sum":
        return float(np.sum(x))
    if metric.agg == "min":
        return float(np.min(x))
    if metric.agg == "max":
        return float(np.max(x))
    if metric.agg == "p":
        return float(np.percentile(x, float(metric.level)))
    s = x.shape[0]
    a = metric.level
    if metric.agg == "var":
        j = math.ceil(a * s)
        # The j-th smallest loss is the (s - j + 1)-th smallest value.
        return float(-np.partition(x, s - j)[s - j])
    k = math.ceil((1 - a) * s)
    return float(-np.mean(np.partition(x, k - 1)[:k]))


class MetricReader:
    """Binds every metric of the config to its input column once; :meth:`read` then recomputes
    them from the same shared memory after each evaluation."""

    def __init__(self, settings: Settings, view):
        self._bound: List[Tuple[Metric, np.ndarray]] = []
        for metric, path in settings.metrics():
            if metric.column not in view:
                raise ConfigurationError(
                    f"config key '{path}': the solver's input has no column {metric.column!r} "
                    f"(it has: {', '.join(sorted(view)) or 'none'})")
            arr = view[metric.column]
            if arr.dtype.kind not in "fiu":
                raise ConfigurationError(f"config key '{path}': input column {metric.column!r} is not numeric")
            if metric.agg is None:
                if arr.size != 1:
                    raise ConfigurationError(
                        f"config key '{path}': input column {metric.column!r} holds {arr.size} values; name an "
                        f"aggregate ('{metric.column}:mean', ':p99_5', ':cte99', ...) or a single-value column")
            elif arr.ndim == 2 and 1 not in arr.shape:
                raise ConfigurationError(
                    f"config key '{path}': input column {metric.column!r} has shape {list(arr.shape)}; "
                    f"an aggregate needs one value per scenario")
            needed = 2 if metric.agg == "std" else 1
            if arr.size < needed:
                raise ConfigurationError(
                    f"config key '{path}': {metric.text} needs at least {needed} values in {metric.column!r} "
                    f"(it has {arr.size})")
            # reshape of a contiguous column is a view: later evaluations show through it.
            self._bound.append((metric, arr.reshape(-1)))

    def read(self) -> Dict[str, float]:
        out = {}
        for metric, arr in self._bound:
            x = arr if arr.dtype == np.float64 else arr.astype(np.float64)
            out[metric.text] = aggregate(x, metric)
        return out


# ----------------------------------------------------------------------------------------------
# The search: evaluations, cache, limits, best point
# ----------------------------------------------------------------------------------------------

class _Stop(Exception):
    """Ends the search from inside an optimiser's callback (not an error)."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason
        self.message = message


@dataclass
class Evaluation:
    number: int                     # 1-based
    x: Tuple[float, ...]
    elapsed_ms: float               # since the solve started, at the end of this evaluation
    duration_ms: float
    values: Dict[str, float] = field(default_factory=dict)   # metric text -> value
    metric: float = math.nan        # the objective's metric (expression) value
    objective: float = math.nan     # metric - target, or the metric itself
    constraint_values: Tuple[float, ...] = ()
    violations: Tuple[float, ...] = ()
    feasible: bool = False
    error: Optional[str] = None
    restore: bool = False


class Search:
    def __init__(self, settings: Settings, reader: MetricReader,
                 evaluate_fn: Callable[[Dict[str, float]], dict], clock: Callable[[], float] = time.monotonic):
        self.s = settings
        self.reader = reader
        self.evaluate_fn = evaluate_fn
        self.clock = clock
        self.start = clock()
        self.deadline = self.start + settings.timeout_s if settings.timeout_s else None
        # One evaluation is kept back so the best point can always be the last one evaluated.
        self.budget = max(1, settings.max_evaluations - 1)
        self.history: List[Evaluation] = []
        self.cache: Dict[Tuple[float, ...], Evaluation] = {}
        self.best: Optional[Evaluation] = None
        self.slowest_s = 0.0

    # -- evaluations ---------------------------------------------------------------------------

    def at(self, x: Sequence[float]) -> Evaluation:
        key = tuple(float(v) for v in x)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        self._admit()
        e = self._run(key)
        self.cache[key] = e
        self._judge(e)
        return e

    def _admit(self) -> None:
        n = len(self.history)
        if n >= self.budget:
            raise _Stop("max_evaluations",
                        f"reached max_evaluations = {self.s.max_evaluations} (the search may use "
                        f"{self.budget}; one is kept to re-evaluate the best point)")
        if self.deadline is not None:
            now = self.clock()
            if now >= self.deadline or (n and now + 2 * self.slowest_s > self.deadline):
                raise _Stop("timeout",
                            f"timeout_s = {self.s.timeout_s:g} s: {now - self.start:.3f} s elapsed, the slowest "
                            f"evaluation took {self.slowest_s:.3f} s and another one (plus one to restore the best "
                            f"point) would not finish in time")

    def _run(self, x: Tuple[float, ...], restore: bool = False) -> Evaluation:
        params = {p.name: v for p, v in zip(self.s.parameters, x)}
        t0 = self.clock()
        number = len(self.history) + 1
        try:
            self.evaluate_fn(params)
        except EvaluationError as err:
            t1 = self.clock()
            self.history.append(Evaluation(number, x, (t1 - self.start) * 1e3, (t1 - t0) * 1e3,
                                           error=str(err), restore=restore))
            raise
        values = self.reader.read()
        t1 = self.clock()
        self.slowest_s = max(self.slowest_s, t1 - t0)
        e = Evaluation(number, x, (t1 - self.start) * 1e3, (t1 - t0) * 1e3, values=values, restore=restore)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            self.history.append(e)
            raise ExecutionError(
                f"metric {bad[0]!r} is {values[bad[0]]} at {self.describe(x)} (evaluation {number}): the projection "
                f"produced a non-finite value there, so there is nothing to optimise")
        e.metric = self.s.objective.value(values)
        e.objective = e.metric - self.s.target if self.s.sense == "target" else e.metric
        e.constraint_values = tuple(c.expr.value(values) for c in self.s.constraints)
        e.violations = tuple(c.violation(v) for c, v in zip(self.s.constraints, e.constraint_values))
        e.feasible = all(v <= c.tolerance for c, v in zip(self.s.constraints, e.violations))
        self.history.append(e)
        return e

    def _judge(self, e: Evaluation) -> None:
        # Ties go to the newer point: it needs no re-evaluation at the end.
        if e.feasible and (self.best is None or self.rank(e) <= self.rank(self.best)):
            self.best = e
        if self.s.sense == "target" and abs(e.objective) <= self.s.tolerance:
            if e.feasible:
                raise _Stop("converged", f"|{self.s.objective.label} - target| = {abs(e.objective):.6g} "
                                         f"<= tolerance {self.s.tolerance:g}")
            if self.s.is_root_problem:
                bad = [c.describe() + f" is {v:.6g}" for c, v, viol in
                       zip(self.s.constraints, e.constraint_values, e.violations) if viol > c.tolerance]
                raise ConfigurationError(
                    f"the constraint set is infeasible: the target is met at {self.describe(e.x)}, "
                    f"but there {'; '.join(bad)}")

    def rank(self, e: Evaluation) -> float:
        if self.s.sense == "target":
            return abs(e.objective)
        return e.metric if self.s.sense == "minimize" else -e.metric

    def restore_best(self) -> Evaluation:
        """Evaluate the best point again, outside the limits: see "The last evaluation is the
        solution" in the module docstring."""
        return self._run(self.best.x, restore=True)

    # -- helpers -------------------------------------------------------------------------------

    def describe(self, x: Sequence[float]) -> str:
        return ", ".join(f"{p.name} = {v:.10g}" for p, v in zip(self.s.parameters, x))

    @property
    def succeeded(self) -> List[Evaluation]:
        return [e for e in self.history if e.error is None]


# ----------------------------------------------------------------------------------------------
# Algorithms. Each returns (stop reason, message) when it ends on its own; limits, the target
# check and failures arrive as exceptions.
# ----------------------------------------------------------------------------------------------

class _Scales:
    """Sizes at the initial point that make objectives and constraints O(1) for the optimisers."""

    def __init__(self, s: Settings, e0: Evaluation):
        if s.sense == "target":
            self.objective = max(abs(e0.objective), s.tolerance)
        else:
            self.objective = abs(e0.metric) or 1.0
        self.constraints = tuple(max(abs(c.value), abs(v)) or 1.0
                                 for c, v in zip(s.constraints, e0.constraint_values))


class _Box:
    """Parameters <-> the unit box. A point whose parameters are known (the initial point, a
    point handed from one phase to the next) maps back to exactly those parameters, so the
    optimiser's first call hits the cache instead of costing an evaluation an ulp away."""

    def __init__(self, params: Sequence[Parameter]):
        self.lo = np.array([p.lower for p in params])
        self.hi = np.array([p.upper for p in params])
        self._anchors: Dict[bytes, Tuple[float, ...]] = {}
        self.x0 = tuple(p.initial for p in params)
        self.u0 = self.u(self.x0)

    def u(self, x: Sequence[float]) -> np.ndarray:
        u = np.clip((np.asarray(x, dtype=np.float64) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        self._anchors[u.tobytes()] = tuple(x)
        return u

    def x(self, u) -> Tuple[float, ...]:
        u = np.asarray(u, dtype=np.float64)
        hit = self._anchors.get(u.tobytes())
        if hit is not None:
            return hit
        return tuple(float(v) for v in np.clip(self.lo + u * (self.hi - self.lo), self.lo, self.hi))


def _secant_step(x0: float, r0: float, x1: float, r1: float) -> float:
    return x1 - r1 * (x1 - x0) / (r1 - r0)


def _second_point(search: Search, e0: Evaluation) -> Evaluation:
    """``x0 + 10 %`` of the range (``x0 - 10 %`` near the upper bound): far enough apart that
    rounding in the metric barely moves the secant through the two points."""
    p = search.s.parameters[0]
    x0 = e0.x[0]
    h = 0.1 * (p.upper - p.lower)
    e1 = search.at((x0 + h if x0 + h <= p.upper else x0 - h,))
    if e1.objective == e0.objective:
        node, key = p.name.split(".", 1)
        raise ExecutionError(
            f"{search.s.objective.label} is {e0.metric!r} both at {p.name} = {x0:g} and at {e1.x[0]:g}: the "
            f"parameter has no effect on it (does node '{node}' read config key '{key}'?)")
    return e1


def _probe(search: Search, e0: Evaluation) -> None:
    """The linear probe: the initial point, a second point and the secant root through them,
    which is the exact root when the metric is linear in the parameter. Meeting the target
    stops the search by exception; a root outside the bounds is not evaluated."""
    p = search.s.parameters[0]
    e1 = _second_point(search, e0)
    x2 = _secant_step(e0.x[0], e0.objective, e1.x[0], e1.objective)
    if p.lower <= x2 <= p.upper:
        search.at((x2,))


def _run_brentq(search: Search, e0: Evaluation) -> Tuple[str, str]:
    s = search.s
    p = s.parameters[0]
    if s.linear_probe:
        _probe(search, e0)

    def bracket():
        pts = sorted((e.x[0], e.objective) for e in search.succeeded)
        for (xa, ra), (xb, rb) in zip(pts, pts[1:]):
            if (ra < 0) != (rb < 0) and xa != xb:
                return xa, xb
        return None

    ab = bracket()
    if ab is None:
        # All residuals share a sign: try first the bound on the side where |residual| falls.
        pts = sorted((e.x[0], abs(e.objective)) for e in search.succeeded)
        order = (p.lower, p.upper) if pts[0][1] <= pts[-1][1] else (p.upper, p.lower)
        search.at((order[0],))
        ab = bracket()
    if ab is None:
        lo_e = search.at((p.lower,))
        hi_e = search.at((p.upper,))
        ab = bracket()
        if ab is None:
            raise ConfigurationError(
                f"the bounds of '{p.name}' do not bracket a root: {s.objective.label} - target is "
                f"{lo_e.objective:.6g} at lower = {p.lower:g} and {hi_e.objective:.6g} at upper = {p.upper:g} "
                f"(same sign); widen parameters[0].lower/upper or check the target {s.target:g}")
    # xtol is tiny on purpose: the residual test in Search stops brentq as soon as the target
    # is met; brentq ending by itself means the bracket shrank to rounding without meeting it.
    root, info = optimize.brentq(lambda v: search.at((v,)).objective, ab[0], ab[1],
                                 xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=10_000,
                                 full_output=True, disp=False)
    return "stalled", (f"the root is bracketed to floating-point resolution at {p.name} = {root:.17g}, but "
                       f"|{s.objective.label} - target| there exceeds the tolerance {s.tolerance:g} "
                       f"(the metric jumps or is noisy near the root)")


def _run_secant(search: Search, e0: Evaluation) -> Tuple[str, str]:
    """Plain secant iteration (the linear probe is its first step), clipped to the bounds."""
    s = search.s
    p = s.parameters[0]
    # Its first step is the linear probe's secant root.
    prev, cur = e0, _second_point(search, e0)
    while True:
        if cur.objective == prev.objective:
            return "stalled", (f"{s.objective.label} is the same at {p.name} = {prev.x[0]:.10g} and "
                               f"{cur.x[0]:.10g}: the secant has no slope to follow")
        x_new = _secant_step(prev.x[0], prev.objective, cur.x[0], cur.objective)
        if not math.isfinite(x_new):
            return "stalled", "the secant step is not finite"
        clipped = min(max(x_new, p.lower), p.upper)
        if (clipped,) in search.cache and clipped != x_new:
            edge = "lower" if clipped == p.lower else "upper"
            r = search.cache[(clipped,)].objective
            raise ConfigurationError(
                f"no root of {s.objective.label} - target within the bounds of '{p.name}': the secant points "
                f"beyond {edge} = {clipped:g}, where {s.objective.label} - target is already {r:.6g}; widen "
                f"parameters[0].{edge} or check the target {s.target:g}")
        if clipped == cur.x[0] or (clipped,) in search.cache:
            return "stalled", (f"the secant step from {p.name} = {cur.x[0]:.17g} leads back to an evaluated point "
                               f"(or is below floating-point resolution) while |{s.objective.label} - target| = "
                               f"{abs(cur.objective):.6g} exceeds the tolerance {s.tolerance:g}")
        prev, cur = cur, search.at((clipped,))


def _first_order(search: Search, scales: _Scales):
    """The scaled objective and constraints as functions of an evaluation."""
    s = search.s

    def f(e: Evaluation) -> float:
        if s.sense == "target":
            return (e.objective / scales.objective) ** 2
        v = e.metric / scales.objective
        return v if s.sense == "minimize" else -v

    def g(e: Evaluation) -> np.ndarray:
        # >= 0 when satisfied; equalities are == 0.
        out = []
        for c, v, sc in zip(s.constraints, e.constraint_values, scales.constraints):
            out.append((c.value - v) / sc if c.op == "<=" else (v - c.value) / sc)
        return np.array(out)

    return f, g


class _Feasible(Exception):
    """Ends SLSQP's phase 1 at the first feasible point."""


class _Infeasible(Exception):
    """Ends a search that has stopped making progress towards any feasible point."""


# DE gives up on feasibility when the least violation has not fallen by 0.1 % in 20 generations.
DE_STALL_GENERATIONS = 20
DE_STALL_PROGRESS = 1e-3


def _scaled_violation(s: Settings, e: Evaluation) -> float:
    return math.fsum(v / max(1.0, abs(c.value)) for v, c in zip(e.violations, s.constraints))


def _run_slsqp(search: Search, e0: Evaluation, scales: _Scales) -> Tuple[str, str]:
    s = search.s
    box = _Box(s.parameters)
    n = len(s.parameters)
    f, g = _first_order(search, scales)

    def at(u) -> Evaluation:
        return search.at(box.x(u))

    def differences(u) -> Tuple[Evaluation, List[Tuple[Evaluation, float]]]:
        # One forward-difference pass serves the objective's gradient and every constraint's
        # Jacobian row (and phase 1's gradient): n evaluations per point, cached.
        u = np.asarray(u, dtype=np.float64)
        pts = []
        for i in range(n):
            v = u.copy()
            v[i] = u[i] + s.fd_step if u[i] + s.fd_step <= 1.0 else u[i] - s.fd_step
            pts.append((at(v), v[i] - u[i]))
        return at(u), pts

    def grad_f(u) -> np.ndarray:
        base, pts = differences(u)
        if s.sense == "target":
            # Chain rule on (r/s)^2: a difference of r is better conditioned than one of its square.
            r0 = base.objective
            return np.array([2.0 * (r0 / scales.objective) * ((e.objective - r0) / h) / scales.objective
                             for e, h in pts])
        return np.array([(f(e) - f(base)) / h for e, h in pts])

    def jac_g(u, j) -> np.ndarray:
        base, pts = differences(u)
        g0 = g(base)[j]
        return np.array([(g(e)[j] - g0) / h for e, h in pts])

    start = box.u0
    if s.constraints and not e0.feasible:
        # Phase 1: least squares of the scaled violations, stopped at the first feasible point.
        # SLSQP started from an infeasible point of an infeasible set spends thousands of
        # evaluations in failing line searches; phase 1 settles the question in a few dozen.
        eq = np.array([c.op == "==" for c in s.constraints])

        def shortfall(e: Evaluation) -> np.ndarray:
            gv = g(e)
            return np.where(eq, gv, np.minimum(gv, 0.0))

        def phase1(u) -> float:
            e = at(u)
            if search.best is not None:
                raise _Feasible()
            return float(np.sum(shortfall(e) ** 2))

        def phase1_grad(u) -> np.ndarray:
            # Chain rule, 2 h(u) h'(u): near zero a difference of the square is all truncation error.
            base, pts = differences(u)
            if search.best is not None:
                raise _Feasible()
            h0, g0 = shortfall(base), g(base)
            active = eq | (g0 < 0.0)
            return np.array([float(np.sum(2.0 * h0 * np.where(active, (g(e) - g0) / step, 0.0)))
                             for e, step in pts])

        # Its own stopping test sits below the constraint tolerances, so a feasible set is
        # reached (and phase 1 stopped by _Feasible) before SLSQP considers itself done.
        ftol = max(min((0.01 * c.tolerance / sc) ** 2 for c, sc in zip(s.constraints, scales.constraints)), 1e-300)
        try:
            res1 = optimize.minimize(phase1, start, method="SLSQP", jac=phase1_grad, bounds=[(0.0, 1.0)] * n,
                                     options={"maxiter": 100_000, "ftol": ftol})
        except _Feasible:
            start = box.u(search.best.x)
        else:
            return "optimizer_stopped", (f"slsqp phase 1 (least constraint violation) ended without a feasible "
                                         f"point: {res1.message}")

    cons = [{"type": "eq" if c.op == "==" else "ineq",
             "fun": (lambda u, j=j: g(at(u))[j]),
             "jac": (lambda u, j=j: jac_g(u, j))}
            for j, c in enumerate(s.constraints)]
    # For a target the residual test ends the search; SLSQP's own test is kept far below it.
    ftol = (0.01 * s.tolerance / scales.objective) ** 2 if s.sense == "target" else s.tolerance
    res = optimize.minimize(lambda u: f(at(u)), start, method="SLSQP", jac=grad_f,
                            bounds=[(0.0, 1.0)] * n, constraints=cons, options={"maxiter": 100_000, "ftol": ftol})
    return _verdict(search, bool(res.success), f"slsqp: {res.message}")


def _run_nelder_mead(search: Search, e0: Evaluation, scales: _Scales) -> Tuple[str, str]:
    s = search.s
    box = _Box(s.parameters)
    n = len(s.parameters)
    f, _ = _first_order(search, scales)
    z0 = np.arcsin(np.clip(2.0 * box.u0 - 1.0, -1.0, 1.0))

    def x_of(z) -> Tuple[float, ...]:
        z = np.asarray(z, dtype=np.float64)
        if np.array_equal(z, z0):
            return box.x0
        return box.x((1.0 + np.sin(z)) / 2.0)

    def fun(z) -> float:
        e = search.at(x_of(z))
        v = abs(e.objective) / scales.objective if s.sense == "target" else f(e)
        # Exact (L1) penalty: with a weight above the constraint's multiplier the penalised
        # minimum is the constrained one, which a quadratic penalty only approaches.
        return v + s.penalty * sum(viol / sc for viol, sc in zip(e.violations, scales.constraints))

    # 0.5 rad moves a parameter by about a quarter of its range from the middle of the box.
    simplex = np.vstack([z0] + [z0 + 0.5 * np.eye(n)[i] for i in range(n)])
    if s.sense == "target":
        xatol, fatol = 1e-12, 0.01 * s.tolerance / scales.objective
    else:
        xatol, fatol = s.tolerance, s.tolerance
    res = optimize.minimize(fun, z0, method="Nelder-Mead",
                            options={"initial_simplex": simplex, "xatol": xatol, "fatol": fatol,
                                     "maxiter": 1_000_000, "maxfev": 1_000_000, "adaptive": n > 2})
    return _verdict(search, bool(res.success), f"nelder-mead: {res.message}")


def _run_differential_evolution(search: Search, e0: Evaluation, scales: _Scales) -> Tuple[str, str]:
    s = search.s
    box = _Box(s.parameters)
    n = len(s.parameters)
    f, _ = _first_order(search, scales)

    def fun(u) -> float:
        e = search.at(box.x(u))
        return abs(e.objective) / scales.objective if s.sense == "target" else f(e)

    constraints = ()
    stall = {"least": math.inf, "generations": 0}
    if s.constraints:
        # scipy's DE ranks infeasible members by violation below every feasible one (Lampinen);
        # the bounds are widened by each constraint's tolerance, or an equality would never hold.
        lb = [c.value - c.tolerance if c.op in (">=", "==") else -np.inf for c in s.constraints]
        ub = [c.value + c.tolerance if c.op in ("<=", "==") else np.inf for c in s.constraints]
        constraints = (optimize.NonlinearConstraint(
            lambda u: np.array(search.at(box.x(u)).constraint_values), lb, ub),)

    def callback(intermediate_result):
        # A population that is all infeasible has infinite energies and never meets DE's
        # convergence test: without this, an infeasible set would cost the whole budget.
        if not s.constraints or search.best is not None:
            return
        least = min(_scaled_violation(s, e) for e in search.succeeded)
        if least < stall["least"] * (1.0 - DE_STALL_PROGRESS):
            stall.update(least=least, generations=0)
        else:
            stall["generations"] += 1
            if stall["generations"] >= DE_STALL_GENERATIONS:
                raise _Infeasible(f"differential_evolution: no feasible point, and the least constraint violation "
                                  f"has not fallen by {DE_STALL_PROGRESS:.1%} in {DE_STALL_GENERATIONS} generations")

    try:
        res = optimize.differential_evolution(
            # atol as well as tol: DE's test std(E) <= atol + tol |mean E| never passes at an optimum of 0.
            fun, [(0.0, 1.0)] * n, x0=box.u0, rng=s.seed, popsize=s.popsize, tol=s.tolerance, atol=s.tolerance,
            maxiter=1_000_000, polish=False, init="latinhypercube", updating="immediate", constraints=constraints,
            callback=callback)
    except _Infeasible as stuck:
        return "optimizer_stopped", str(stuck)
    return _verdict(search, bool(res.success), f"differential_evolution: {res.message}")


def _verdict(search: Search, success: bool, message: str) -> Tuple[str, str]:
    s = search.s
    if s.sense == "target":
        # Reaching here means no evaluation met the target (that would have stopped the search).
        best = search.best
        closest = f"; closest |{s.objective.label} - target| = {abs(best.objective):.6g}" if best else ""
        return "optimizer_stopped", f"{message} without meeting the target{closest}"
    return ("converged" if success else "optimizer_stopped"), message


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    reason: str
    message: str
    converged: bool
    solution: Evaluation
    warnings: List[str]
    outputs_match_solution: bool


def solve(settings: Settings, reader: MetricReader, evaluate_fn=None,
          clock: Callable[[], float] = time.monotonic) -> Tuple[Search, Outcome]:
    """Run the search and end with the solution as the last evaluation."""
    evaluate_fn = evaluate_fn or _evaluate_module.evaluate
    search = Search(settings, reader, evaluate_fn, clock)
    warnings: List[str] = []
    failure: Optional[str] = None
    try:
        e0 = search.at(box_start(settings))
        scales = _Scales(settings, e0)
        algo = settings.algorithm
        if algo == "brentq":
            reason, message = _run_brentq(search, e0)
        elif algo == "secant":
            reason, message = _run_secant(search, e0)
        else:
            if settings.is_root_problem and settings.linear_probe:
                _probe(search, e0)
            runner = {"slsqp": _run_slsqp, "nelder-mead": _run_nelder_mead,
                      "differential_evolution": _run_differential_evolution}[algo]
            reason, message = runner(search, e0, scales)
    except _Stop as stop:
        reason, message = stop.reason, stop.message
    except EvaluationError as err:
        failure = str(err)
        reason = "evaluation_failed"
        message = f"evaluation {len(search.history)} failed: {failure}"

    done = search.succeeded
    if not done:
        if failure is not None:
            raise ExecutionError(f"the first evaluation ({search.describe(search.history[0].x)}) failed: {failure}")
        raise ExecutionError(f"stopped before the first evaluation: {message}")
    if search.best is None:
        least = min(done, key=lambda e: _scaled_violation(settings, e))
        broken = "; ".join(f"{c.describe()} is {v:.6g}" for c, v, viol in
                           zip(settings.constraints, least.constraint_values, least.violations) if viol > c.tolerance)
        if reason in ("max_evaluations", "timeout", "evaluation_failed"):
            raise ExecutionError(
                f"stopped ({reason}: {message}) after {len(search.history)} evaluations without finding a point "
                f"that satisfies the constraints; the least violation is at {search.describe(least.x)}, where {broken}")
        raise ConfigurationError(
            f"the constraint set is infeasible: none of the {len(done)} evaluated points satisfies it "
            f"({message}); the least violation is at {search.describe(least.x)}, where {broken}")

    best = search.best
    converged = reason == "converged"
    if failure is not None:
        warnings.append(f"evaluation failed, returning the best point so far: {failure}")
    elif not converged:
        warnings.append(f"not converged ({reason}): {message}")

    solution, matches = best, True
    if search.history[-1] is not best:
        try:
            again = search.restore_best()
        except EvaluationError as err:
            matches = False
            converged = False
            if reason != "evaluation_failed":
                reason, message = "evaluation_failed", f"re-evaluating the best point failed: {err}"
            warnings.append(f"re-evaluating the best point ({search.describe(best.x)}) failed, so the "
                            f"projection outputs belong to another point: {err}")
        else:
            if again.values != best.values:
                warnings.append(f"re-evaluating the best point gave other metrics ({again.metric!r} against "
                                f"{best.metric!r}): evaluations are not deterministic")
            solution = again
    return search, Outcome(reason, message, converged, solution, warnings, matches)


def box_start(settings: Settings) -> Tuple[float, ...]:
    return tuple(p.initial for p in settings.parameters)


class SolverEngine(ICalcEngine):
    def __init__(self):
        self._settings: Optional[Settings] = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            raise ExecutionError("engine not initialized")
        return self._settings

    def initialize(self, config, credentials=None):
        self._settings = None
        self._settings = parse_config(config)

    def get_info(self):
        return EngineInfo(name="Python Solver", version="1.0.0", engine_type="solver",
                          supports_assumptions_manager=False)

    def runChunk(self, input_buffer, output_buffer):
        if self._settings is None:
            raise ExecutionError("engine not initialized")
        s = self._settings
        started = time.perf_counter()
        if input_buffer is None:
            raise ConfigurationError("the solver needs an input holding its metrics (e.g. a statistics node's output)")
        src = inputs(input_buffer)
        dst = outputs(output_buffer)
        chunk = dst.chunk
        if chunk.index != 0 or chunk.row_start != 0 or chunk.row_count != chunk.total_rows:
            raise ConfigurationError(
                f"the solver runs as one chunk (set \"rows\": 1 on its node); got chunk {chunk.index}, rows "
                f"{chunk.row_start}..{chunk.row_start + chunk.row_count} of {chunk.total_rows}")
        # Everything that can be checked without an evaluation is checked before the first one.
        solution_cols, history_cols = _bind_outputs(dst, s)
        reader = MetricReader(s, src)

        search, outcome = solve(s, reader)

        written = _write(s, search, outcome, solution_cols, history_cols)
        return {
            "execution_time_ms": (time.perf_counter() - started) * 1e3,
            "rows_processed": 1,
            "bytes_written": written,
            "warnings": outcome.warnings,
            "report": report(s, search, outcome),
        }

    def dispose(self):
        self._settings = None

    @property
    def is_initialized(self):
        return self._settings is not None


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def _bind_outputs(view, s: Settings) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    param_cols = {p.column for p in s.parameters}
    solution: Dict[str, np.ndarray] = {}
    history: Dict[str, np.ndarray] = {}
    length = None
    for name, arr in view.items():
        binding, _, col = name.partition(".")
        if binding == "solution":
            if col in param_cols:
                dtype = np.float64
            elif col in SOLUTION_COLUMNS:
                dtype = SOLUTION_COLUMNS[col][0]
            else:
                raise ConfigurationError(
                    f"unknown output column {name!r} (solution has one float64 column per parameter: "
                    f"{', '.join(sorted(param_cols))}; and {', '.join(SOLUTION_COLUMNS)})")
            if arr.size != 1:
                raise ConfigurationError(f"output column {name!r} must hold one value (shape [1]), got {list(arr.shape)}")
            target = solution
        elif binding == "history":
            if col in param_cols:
                dtype = np.float64
            elif col in HISTORY_COLUMNS:
                dtype = HISTORY_COLUMNS[col]
            else:
                raise ConfigurationError(
                    f"unknown output column {name!r} (history has one float64 column per parameter: "
                    f"{', '.join(sorted(param_cols))}; and {', '.join(HISTORY_COLUMNS)})")
            if arr.ndim == 2 and arr.shape[0] != 1:
                raise ConfigurationError(f"output column {name!r} must have shape [N] (one slot per chunk), "
                                         f"got {list(arr.shape)}")
            if length is None:
                length = arr.size
            elif arr.size != length:
                raise ConfigurationError(f"history columns must all have the same length; {name!r} has "
                                         f"{arr.size}, others {length}")
            if arr.size < s.max_evaluations:
                raise ConfigurationError(
                    f"output column {name!r} holds {arr.size} evaluations but max_evaluations is "
                    f"{s.max_evaluations}; declare shape [{s.max_evaluations}] or lower max_evaluations")
            target = history
        else:
            raise ConfigurationError(f"unknown output {binding!r}: the solver writes 'solution' and 'history'")
        if arr.dtype != np.dtype(dtype):
            raise ConfigurationError(f"output column {name!r} must be {np.dtype(dtype).name}, got {arr.dtype.name}")
        target[col] = arr.reshape(-1)
    required = [p.column for p in s.parameters] + [c for c, (_, req) in SOLUTION_COLUMNS.items() if req]
    for col in required:
        if col not in solution:
            dtype = "float64" if col not in SOLUTION_COLUMNS else np.dtype(SOLUTION_COLUMNS[col][0]).name
            raise ConfigurationError(f"output 'solution' lacks column {col!r} ({dtype}, shape [1])")
    return solution, history


def _write(s: Settings, search: Search, outcome: Outcome,
           solution: Dict[str, np.ndarray], history: Dict[str, np.ndarray]) -> int:
    sol = outcome.solution
    values: Dict[str, Any] = {p.column: x for p, x in zip(s.parameters, sol.x)}
    values.update(objective=sol.objective, metric=sol.metric, converged=int(outcome.converged),
                  evaluations=len(search.history), stop_reason=STOP_CODES[outcome.reason])
    written = 0
    for col, arr in solution.items():
        arr[0] = values[col]
        written += arr.nbytes
    rows = search.history
    for col, arr in history.items():
        # Unused slots: evaluation -1, NaN in float columns, feasible 0.
        arr[:] = -1 if col == "evaluation" else (0 if col == "feasible" else np.nan)
        k = len(rows)
        if col == "evaluation":
            arr[:k] = [e.number for e in rows]
        elif col == "objective":
            arr[:k] = [e.objective for e in rows]
        elif col == "metric":
            arr[:k] = [e.metric for e in rows]
        elif col == "elapsed_ms":
            arr[:k] = [e.elapsed_ms for e in rows]
        elif col == "evaluation_ms":
            arr[:k] = [e.duration_ms for e in rows]
        elif col == "feasible":
            arr[:k] = [int(e.feasible) for e in rows]
        else:
            i = [p.column for p in s.parameters].index(col)
            arr[:k] = [e.x[i] for e in rows]
        written += arr.nbytes
    return written


def _json_float(v: float) -> Optional[float]:
    # serde_json, which reads the report, has no NaN.
    return float(v) if math.isfinite(v) else None


def report(s: Settings, search: Search, outcome: Outcome) -> Dict[str, Any]:
    sol = outcome.solution
    metrics = {s.objective.label: sol.metric}
    metrics.update(sol.values)
    for c, v in zip(s.constraints, sol.constraint_values):
        metrics[c.expr.label] = v
    rows = search.history
    return {
        "algorithm": s.algorithm,
        "objective": ({"metric": s.objective.label, "target": s.target} if s.sense == "target"
                      else {"metric": s.objective.label, s.sense: True}),
        "parameters": {p.name: float(x) for p, x in zip(s.parameters, sol.x)},
        "objective_value": _json_float(sol.objective),
        "metrics": {k: _json_float(v) for k, v in metrics.items()},
        "constraints": [{"metric": c.expr.label, "op": c.op, "value": c.value, "achieved": _json_float(v),
                         "satisfied": viol <= c.tolerance}
                        for c, v, viol in zip(s.constraints, sol.constraint_values, sol.violations)],
        "converged": outcome.converged,
        "stop_reason": outcome.reason,
        "stop_code": STOP_CODES[outcome.reason],
        "message": outcome.message,
        "evaluations": len(rows),
        "outputs_match_solution": outcome.outputs_match_solution,
        "history": {
            "evaluation": [e.number for e in rows],
            "parameters": {p.name: [float(e.x[i]) for e in rows] for i, p in enumerate(s.parameters)},
            "objective": [_json_float(e.objective) for e in rows],
            "metric": [_json_float(e.metric) for e in rows],
            "elapsed_ms": [round(e.elapsed_ms, 3) for e in rows],
            "evaluation_ms": [round(e.duration_ms, 3) for e in rows],
            "feasible": [e.feasible for e in rows],
            "error": [e.error for e in rows],
            "restore": [e.restore for e in rows],
        },
    }
