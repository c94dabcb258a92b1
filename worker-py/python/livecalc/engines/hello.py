"""The seed's "Implementing a New Engine" example, made concrete: a premium rater.

Input buffer (input ``policies``, one row per policy):
  - ``policies.policy_id``   int64
  - ``policies.age``         int32    age at entry, years
  - ``policies.sum_assured`` float64

Output buffer (output ``priced``, one row per policy):
  - ``priced.policy_id`` int64    copied through
  - ``priced.premium``   float64  sum_assured * base_rate * (1 + age_loading * (age - 30))

Config: ``base_rate`` (required, > 0), ``age_loading`` (default 0.0).
"""

from __future__ import annotations

import time

import numpy as np

from livecalc import (
    ConfigurationError,
    EngineInfo,
    ExecutionError,
    ICalcEngine,
    inputs,
    outputs,
)


class HelloEngine(ICalcEngine):
    def __init__(self):
        self._initialized = False
        self._base_rate = 0.0
        self._age_loading = 0.0

    def initialize(self, config, credentials=None):
        if "base_rate" not in config:
            raise ConfigurationError("missing config key 'base_rate'")
        base_rate = config["base_rate"]
        if not isinstance(base_rate, (int, float)) or isinstance(base_rate, bool) or base_rate <= 0:
            raise ConfigurationError(f"config key 'base_rate' must be a positive number, got {base_rate!r}")
        self._base_rate = float(base_rate)
        self._age_loading = float(config.get("age_loading", 0.0))
        self._initialized = True

    def get_info(self):
        return EngineInfo(name="Python Hello Rater", version="1.0.0", engine_type="custom",
                          supports_assumptions_manager=False)

    def runChunk(self, input_buffer, output_buffer):
        if not self._initialized:
            raise ExecutionError("engine not initialized")
        start = time.perf_counter()
        src = inputs(input_buffer)
        dst = outputs(output_buffer)
        age = src["policies.age"].astype(np.float64)
        premium = dst["priced.premium"]
        np.multiply(src["policies.sum_assured"], self._base_rate, out=premium)
        premium *= 1.0 + self._age_loading * (age - 30.0)
        dst["priced.policy_id"][:] = src["policies.policy_id"]
        rows = premium.shape[0]
        return {
            "execution_time_ms": (time.perf_counter() - start) * 1e3,
            "rows_processed": rows,
            "bytes_written": rows * 16,
            "warnings": [],
        }

    def dispose(self):
        self._initialized = False

    @property
    def is_initialized(self):
        return self._initialized
