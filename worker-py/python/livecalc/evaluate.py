"""Ask the supervisor to re-run part of the DAG with new parameter values: the evaluate loop.

A solver engine is the only kind of engine that needs this. Its node sits downstream of the
projection sub-graph; ``evaluate({"projection.multipliers.premium": 1.07})`` asks the supervisor
to re-run node ``projection`` with that config key set to that value, and every node between it
and the calling engine, on workers that are already initialized (no process is spawned, no file
re-read, upstream nodes such as the ESG are not re-run). The call blocks until that is done.

The results are not returned: they arrive where every input arrives, in shared memory. The
calling engine's input buffer is updated in place, so the numpy arrays it obtained from
``livecalc.inputs(input_buffer)`` before the call hold the new values after it returns. What
*is* returned is a small status dict, ``{"ok": bool, "error": str, "elapsed_ms": float}``.

Inside ``livecalc-worker-py`` the Rust host injects a module ``livecalc_worker`` into
``sys.modules``; its ``evaluate`` sends the request over the worker's control channel. Anywhere
else (unit tests, a plain interpreter) there is no supervisor to ask, so tests install a fake
with :func:`set_evaluator` that writes new values into the input arrays the way the supervisor
would.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

from .calc_engine_interface import CalcEngineError, ExecutionError

Evaluator = Callable[[Dict[str, float]], Optional[dict]]

_hook: Optional[Evaluator] = None


class EvaluationError(CalcEngineError):
    """The supervisor could not evaluate the requested parameters (for example a projection
    chunk still failed after its retries). The message is the supervisor's own text."""


def set_evaluator(fn: Evaluator) -> None:
    """Route :func:`evaluate` to ``fn`` (tests). ``fn`` returns the status dict, or ``None``
    for success, or raises :class:`EvaluationError` itself."""
    global _hook
    _hook = fn


def clear_evaluator() -> None:
    global _hook
    _hook = None


def evaluate(params: Dict[str, float]) -> dict:
    """Re-run the sub-graph with ``params`` (``"<node id>.<config key>" -> value``) and wait.

    Returns ``{"ok": True, "error": "", "elapsed_ms": ...}``; a failed evaluation raises
    :class:`EvaluationError` instead, so a caller cannot mistake it for a result.
    """
    request = {}
    for name, value in params.items():
        v = float(value)
        # A NaN sent to a projection would come back as NaN everywhere, far from its cause.
        if not math.isfinite(v):
            raise ExecutionError(f"evaluate(): parameter {name!r} must be finite (got {value!r})")
        request[str(name)] = v

    if _hook is not None:
        result = _hook(request)
        if result is None:
            result = {"ok": True, "error": "", "elapsed_ms": 0.0}
    else:
        try:
            import livecalc_worker  # injected by the Rust host; absent everywhere else
        except ImportError:
            raise ExecutionError("evaluate() is only available inside livecalc-worker-py") from None
        result = livecalc_worker.evaluate(request)

    if not isinstance(result, dict):
        raise ExecutionError(f"evaluate(): expected a status dict, got {type(result).__name__}")
    if not result.get("ok", False):
        raise EvaluationError(str(result.get("error") or "evaluation failed (no message from the supervisor)"))
    return result
