"""Glue called by the Rust host in livecalc-worker-py. Not part of the engine API.

The host passes shared memory as ``memoryview`` objects; they become numpy ``uint8`` arrays here,
without a copy, and are released when ``runChunk`` returns so that no engine keeps a reference
to memory the host may unmap.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback

import numpy as np

from . import registry
from .calc_engine_interface import (
    CalcEngineError,
    ConfigurationError,
    ExecutionError,
    ICalcEngine,
    InitializationError,
)


def create(engine_type: str) -> ICalcEngine:
    module_name, class_name = registry.resolve(engine_type).split(":", 1)
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise LookupError(f"module {module_name!r} has no class {class_name!r}")
    engine = cls()
    if not isinstance(engine, ICalcEngine):
        raise TypeError(f"{module_name}.{class_name} does not implement livecalc.ICalcEngine")
    return engine


def info(engine: ICalcEngine):
    i = engine.get_info()
    return (i.name, i.version, i.engine_type, bool(i.supports_assumptions_manager), int(i.max_buffer_size))


def initialize(engine: ICalcEngine, config_json: str, credentials):
    engine.initialize(json.loads(config_json), credentials)


def run_chunk(engine: ICalcEngine, input_mv, output_mv):
    inp = np.frombuffer(input_mv, dtype=np.uint8) if input_mv is not None else None
    out = np.frombuffer(output_mv, dtype=np.uint8)
    # Every array an engine derives from a buffer keeps a reference to it (numpy's base chain
    # stops at these arrays, whose own base is a memoryview). More references after runChunk
    # than before means the engine kept a view of shared memory the host will unmap.
    refs_in = sys.getrefcount(inp) if inp is not None else 0
    refs_out = sys.getrefcount(out)
    start = time.perf_counter()
    result = engine.runChunk(inp, out) or {}
    kept = (inp is not None and sys.getrefcount(inp) > refs_in) or sys.getrefcount(out) > refs_out
    del inp, out
    if kept:
        raise _KeptView(
            f"{type(engine).__name__}.runChunk kept a reference to a shared-memory buffer "
            "(a numpy view of its input or output) after returning; copy what must outlive the call"
        )
    if not isinstance(result, dict):
        raise ExecutionError(f"runChunk must return a dict, got {type(result).__name__}")
    elapsed = float(result.get("execution_time_ms", (time.perf_counter() - start) * 1e3))
    warnings = [str(w) for w in result.get("warnings", [])]
    report = result.get("report")
    report_json = json.dumps(report, allow_nan=False, default=float) if report is not None else ""
    return (
        bool(result.get("success", True)),
        elapsed,
        int(result.get("rows_processed", 0)),
        int(result.get("bytes_written", 0)),
        warnings,
        str(result.get("error_message", "")),
        report_json,
    )


class _KeptView(Exception):
    """An engine kept a view of shared memory: the worker must not run another chunk."""


def classify(exc: BaseException, tb=None):
    """(kind, class name, message, traceback text) for the supervisor."""
    if isinstance(exc, ConfigurationError):
        kind = "configuration"
    elif isinstance(exc, InitializationError):
        kind = "initialization"
    elif isinstance(exc, ExecutionError):
        kind = "execution"
    elif isinstance(exc, MemoryError):
        kind = "out_of_memory"
    elif isinstance(exc, _KeptView):
        kind = "kept_view"
    elif isinstance(exc, (LookupError, ImportError, TypeError)) and getattr(exc, "_livecalc_lookup", False):
        kind = "unknown_engine"
    else:
        kind = "other"
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return kind, type(exc).__name__, str(exc), text


def runtime() -> str:
    return (f"CPython {sys.version.split()[0]} ({sys.base_prefix}), "
            f"numpy {np.__version__} from {np.__file__.rsplit('/numpy/', 1)[0]}")
