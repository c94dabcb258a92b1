"""LiveCalc's Python side: the ICalcEngine contract, zero-copy buffer views and built-in engines.

Engines run inside ``livecalc-worker-py``, which embeds CPython and hands every ``runChunk`` call
numpy arrays that alias POSIX shared memory.
"""

from .buffers import Chunk, View, build_view, inputs, outputs
from .calc_engine_interface import (
    CalcEngineError,
    ConfigurationError,
    EngineInfo,
    ExecutionError,
    ICalcEngine,
    InitializationError,
)

__all__ = [
    "CalcEngineError",
    "Chunk",
    "ConfigurationError",
    "EngineInfo",
    "ExecutionError",
    "ICalcEngine",
    "InitializationError",
    "View",
    "build_view",
    "inputs",
    "outputs",
]
