"""The ICalcEngine contract for Python engines, as the LiveCalc seed defines it.

An engine subclasses :class:`ICalcEngine`. ``livecalc-worker-py`` creates one instance per worker
process and drives its lifecycle: ``initialize`` once, ``runChunk`` many times, ``dispose``.
``runChunk`` receives two numpy ``uint8`` arrays that *are* the shared memory: read the input
columns with :func:`livecalc.inputs` and write results through :func:`livecalc.outputs`; nothing
is copied in either direction.

Raise :class:`ConfigurationError` for a bad config (never retried), :class:`InitializationError`
when a resource cannot be loaded, :class:`ExecutionError` from ``runChunk``. The host reports the
class name and traceback to the supervisor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np


@dataclass(frozen=True)
class EngineInfo:
    name: str
    version: str
    engine_type: str
    supports_assumptions_manager: bool = False
    max_buffer_size: int = 0  # 0: no limit


class CalcEngineError(RuntimeError):
    """Base class of every error an engine raises on purpose."""


class InitializationError(CalcEngineError):
    pass


class ConfigurationError(CalcEngineError):
    pass


class ExecutionError(CalcEngineError):
    pass


class ICalcEngine(ABC):
    @abstractmethod
    def initialize(self, config: Dict[str, Any], credentials: Optional[Dict[str, str]] = None) -> None:
        """Initialize the engine with its node config (JSON types kept) and AM credentials."""

    @abstractmethod
    def get_info(self) -> EngineInfo:
        """Engine metadata."""

    @abstractmethod
    def runChunk(self, input_buffer: Optional[np.ndarray], output_buffer: np.ndarray) -> Dict[str, Any]:
        """Compute one chunk and write it into ``output_buffer``.

        Returns a dict with optional keys ``execution_time_ms``, ``rows_processed``,
        ``bytes_written`` and ``warnings``.
        """

    @abstractmethod
    def dispose(self) -> None:
        """Release resources. Must not raise."""

    @property
    @abstractmethod
    def is_initialized(self) -> bool:
        """Whether ``initialize`` has succeeded and ``dispose`` has not been called since."""
