//! `livecalc-worker-py`: a worker process hosting one Python `ICalcEngine` in embedded CPython.
//!
//! Started by the supervisor only. The engine is named by a registered name (`python_esg`, see
//! `livecalc/registry.py`) or as `python:package.module:ClassName`; `livecalc._host` creates it
//! and adapts calls. The host loop, views and fault injection come from `livecalc-worker-host`.

mod embed;

use livecalc_protocol::{Credentials, EngineError, EngineErrorKind, EngineInfo, ExecutionResult};
use livecalc_worker_host::{Engine, Evaluator, InputBuffer, OutputBuffer};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::process::ExitCode;

struct PyEngine {
    host: Py<PyModule>,
    engine: Py<PyAny>,
}

impl PyEngine {
    fn create(engine_type: &str) -> Result<PyEngine, EngineError> {
        embed::start()?;
        Python::attach(|py| {
            let host = py
                .import("livecalc._host")
                .map_err(|e| embed::engine_error(py, e))?;
            let engine = host.call_method1("create", (engine_type,)).map_err(|e| {
                let mut err = embed::engine_error(py, e);
                if matches!(
                    err.class.as_str(),
                    "LookupError" | "ModuleNotFoundError" | "ImportError" | "AttributeError"
                ) {
                    err.kind = EngineErrorKind::UnknownEngine;
                }
                err
            })?;
            Ok(PyEngine {
                host: host.unbind(),
                engine: engine.unbind(),
            })
        })
    }
}

impl Engine for PyEngine {
    fn info(&self) -> Result<EngineInfo, EngineError> {
        Python::attach(|py| {
            let t: (String, String, String, bool, u64) = self
                .host
                .call_method1(py, "info", (self.engine.bind(py),))
                .and_then(|v| v.extract(py))
                .map_err(|e| embed::engine_error(py, e))?;
            Ok(EngineInfo {
                name: t.0,
                version: t.1,
                engine_type: t.2,
                supports_assumptions_manager: t.3,
                max_buffer_size: t.4,
            })
        })
    }

    fn runtime(&self) -> String {
        Python::attach(|py| {
            self.host
                .call_method0(py, "runtime")
                .and_then(|v| v.extract::<String>(py))
                .unwrap_or_else(|e| format!("CPython (unknown: {e})"))
        })
    }

    fn initialize(
        &mut self,
        config_json: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(), EngineError> {
        Python::attach(|py| {
            let creds = match credentials {
                None => py.None(),
                Some(c) => {
                    let d = PyDict::new(py);
                    let set = |k: &str, v: &str| d.set_item(k, v);
                    set("am_url", &c.am_url)
                        .and_then(|_| set("am_token", &c.am_token))
                        .and_then(|_| set("cache_dir", &c.cache_dir))
                        .map_err(|e| embed::engine_error(py, e))?;
                    d.into_any().unbind()
                }
            };
            self.host
                .call_method1(py, "initialize", (self.engine.bind(py), config_json, creds))
                .map_err(|e| embed::engine_error(py, e))?;
            let ok: bool = self
                .engine
                .getattr(py, "is_initialized")
                .and_then(|v| v.extract(py))
                .map_err(|e| embed::engine_error(py, e))?;
            if !ok {
                return Err(EngineError::new(
                    EngineErrorKind::Lifecycle,
                    "LifecycleError",
                    "initialize() returned but is_initialized is False",
                ));
            }
            Ok(())
        })
    }

    fn run_chunk(
        &mut self,
        input: Option<InputBuffer>,
        output: OutputBuffer,
        evaluator: &mut dyn Evaluator,
    ) -> Result<ExecutionResult, EngineError> {
        let _lent = embed::lend_evaluator(evaluator);
        Python::attach(|py| {
            // SAFETY: the host keeps both views mapped for the whole call. Afterwards nothing in
            // Python may refer to them: the memoryviews are released below, and
            // `_host.run_chunk` checks by reference count that the engine kept no array derived
            // from them; if it did, the worker exits (`embed::EXIT_KEPT_VIEW`) before the views
            // can be unmapped or remapped underneath that array.
            let views = (|| -> PyResult<_> {
                let inp = match input {
                    Some(b) => {
                        // SAFETY: see above; the input memoryview is created read-only.
                        let mv = unsafe { embed::memoryview(py, b.ptr.cast_mut(), b.len, false)? };
                        Some(mv)
                    }
                    None => None,
                };
                // SAFETY: see above.
                let out = unsafe { embed::memoryview(py, output.ptr, output.len, true)? };
                Ok((inp, out))
            })();
            let (inp, out) = views.map_err(|e| embed::engine_error(py, e))?;
            let result =
                self.host
                    .call_method1(py, "run_chunk", (self.engine.bind(py), inp.as_ref(), &out));
            let release = |mv: &Bound<'_, PyAny>| {
                // A still-exported buffer (an engine kept a numpy view) makes release() fail;
                // that engine is buggy, and its chunk is failed rather than left dangling.
                mv.call_method0("release").map(|_| ())
            };
            let released = inp
                .as_ref()
                .map(release)
                .transpose()
                .and_then(|_| release(&out));
            let t: (bool, f64, u64, u64, Vec<String>, String, String) = result
                .and_then(|v| v.extract(py))
                .map_err(|e| embed::engine_error(py, e))?;
            if let Err(e) = released {
                return Err(EngineError::new(
                    EngineErrorKind::Execution,
                    "BufferError",
                    format!(
                        "engine kept a reference to a shared-memory buffer after runChunk: {e}"
                    ),
                ));
            }
            Ok(ExecutionResult {
                success: t.0,
                execution_time_ms: t.1,
                rows_processed: t.2,
                bytes_written: t.3,
                warnings: t.4,
                error_message: t.5,
                report_json: t.6,
            })
        })
    }

    fn dispose(&mut self) {
        Python::attach(|py| {
            if let Err(e) = self.engine.call_method0(py, "dispose") {
                // dispose must not fail; log and carry on.
                let err = embed::engine_error(py, e);
                tracing::warn!(%err, "dispose raised");
            }
        })
    }
}

fn main() -> ExitCode {
    livecalc_worker_host::run(PyEngine::create)
}
