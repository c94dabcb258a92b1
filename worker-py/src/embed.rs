//! The FFI boundary of livecalc-worker-py: the embedded CPython interpreter.
//!
//! Theory of operation:
//! - **One interpreter, chosen at build time.** The binary links Debian's `libpython3.11`
//!   (`PYO3_PYTHON=/usr/bin/python3.11`, set in `.cargo/config.toml`). The project's `.venv` is
//!   created from that same interpreter, and its `site-packages` is added with
//!   `site.addsitedir` at start-up; a venv made from a different Python is refused with a clear
//!   error instead of importing the wrong numpy.
//! - **The Rust host owns signals.** pyo3 initializes CPython without installing Python's
//!   signal handlers, so SIGTERM/SIGINT keep their default actions and the supervisor's
//!   stop sequence works the same for C++ and Python workers.
//! - **Zero-copy buffers.** Shared memory reaches Python as `memoryview`s created over the
//!   mapped views with `PyMemoryView_FromMemory` (read-only for inputs), turned into numpy
//!   arrays by `livecalc._host`, and released when `runChunk` returns.

use livecalc_protocol::{EngineError, EngineErrorKind};
use livecalc_worker_host::Evaluator;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::cell::Cell;
use std::path::PathBuf;

thread_local! {
    /// The evaluator lent by the host for the duration of one `runChunk` call.
    static EVALUATOR: Cell<Option<*mut (dyn Evaluator + 'static)>> = const { Cell::new(None) };
}

/// Keeps the evaluator reachable from Python while alive; clears it on drop (also on unwind).
pub struct Lent(());

impl Drop for Lent {
    fn drop(&mut self) {
        EVALUATOR.with(|e| e.set(None));
    }
}

/// Make `evaluator` callable from Python as `livecalc_worker.evaluate` until the guard drops.
pub fn lend_evaluator(evaluator: &mut dyn Evaluator) -> Lent {
    let ptr: *mut (dyn Evaluator + '_) = evaluator;
    // SAFETY: only the lifetime is erased; the pointer is cleared by `Lent::drop` before the
    // borrow it came from ends (the guard lives inside the borrowing call).
    let ptr: *mut (dyn Evaluator + 'static) = unsafe { std::mem::transmute(ptr) };
    EVALUATOR.with(|e| e.set(Some(ptr)));
    Lent(())
}

/// `livecalc_worker.evaluate(params: dict[str, float]) -> dict`: re-run the upstream
/// sub-graph with these parameters and wait. The GIL stays held: the worker runs no other
/// Python thread that could use it meanwhile.
#[pyfunction]
fn evaluate<'py>(py: Python<'py>, params: Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
    let mut list = Vec::with_capacity(params.len());
    for (k, v) in params.iter() {
        list.push((k.extract::<String>()?, v.extract::<f64>()?));
    }
    let Some(ptr) = EVALUATOR.with(|e| e.get()) else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "evaluate() can only be called from inside runChunk",
        ));
    };
    // SAFETY: the pointer was lent by `lend_evaluator` for the current runChunk call, on this
    // thread, and is cleared before that call returns; nothing else uses it meanwhile.
    let evaluator = unsafe { &mut *ptr };
    let outcome = evaluator.evaluate(&list);
    let out = PyDict::new(py);
    match outcome {
        Ok(report) => {
            out.set_item("ok", true)?;
            out.set_item("error", "")?;
            out.set_item("elapsed_ms", report.elapsed_ms)?;
            out.set_item("nodes", report.nodes)?;
        }
        Err(message) => {
            out.set_item("ok", false)?;
            out.set_item("error", message)?;
            out.set_item("elapsed_ms", 0.0)?;
            out.set_item("nodes", Vec::<String>::new())?;
        }
    }
    Ok(out)
}

/// Register `livecalc_worker` in `sys.modules`.
fn install_worker_module(py: Python<'_>) -> PyResult<()> {
    let m = PyModule::new(py, "livecalc_worker")?;
    m.add_function(wrap_pyfunction!(evaluate, &m)?)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("livecalc_worker", m)?;
    Ok(())
}

/// Exit code of a worker whose engine kept a view of shared memory after `runChunk`.
pub const EXIT_KEPT_VIEW: i32 = livecalc_protocol::faults::EXIT_KEPT_VIEW;

/// Where the `livecalc` package lives: `LIVECALC_PYTHON_SRC`, else the source tree this binary
/// was built from.
fn package_dir() -> PathBuf {
    std::env::var_os("LIVECALC_PYTHON_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/python")))
}

/// The project's virtual environment: `LIVECALC_VENV`, else `.venv` at the workspace root.
fn venv_dir() -> PathBuf {
    std::env::var_os("LIVECALC_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv")))
}

fn startup_error(message: String) -> EngineError {
    EngineError::new(
        EngineErrorKind::Initialization,
        "PythonStartupError",
        message,
    )
}

/// Start the interpreter and make `livecalc`, the venv's packages, the DAG folder (the working
/// directory) and `LIVECALC_PYTHONPATH` importable.
pub fn start() -> Result<(), EngineError> {
    Python::initialize();
    Python::attach(|py| -> Result<(), EngineError> {
        let sys = py
            .import("sys")
            .map_err(|e| startup_error(format!("cannot import sys: {e}")))?;
        let version: (u8, u8) = sys
            .getattr("version_info")
            .and_then(|v| Ok((v.get_item(0)?.extract()?, v.get_item(1)?.extract()?)))
            .map_err(|e| startup_error(e.to_string()))?;
        let venv = venv_dir();
        let cfg = venv.join("pyvenv.cfg");
        let site_packages = venv.join(format!(
            "lib/python{}.{}/site-packages",
            version.0, version.1
        ));
        if cfg.exists() {
            let text = std::fs::read_to_string(&cfg).unwrap_or_default();
            let venv_version = text
                .lines()
                .find_map(|l| {
                    l.split_once('=')
                        .filter(|(k, _)| k.trim() == "version")
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_default();
            let ours = format!("{}.{}.", version.0, version.1);
            if !venv_version.starts_with(&ours) || !site_packages.is_dir() {
                return Err(startup_error(format!(
                    "virtual environment {} was made by Python {venv_version}, but this worker embeds Python {}.{}: recreate it with scripts/setup.sh",
                    venv.display(),
                    version.0,
                    version.1
                )));
            }
            py.import("site")
                .and_then(|site| {
                    site.call_method1("addsitedir", (site_packages.to_string_lossy().as_ref(),))
                })
                .map_err(|e| {
                    startup_error(format!("cannot add {}: {e}", site_packages.display()))
                })?;
        }
        let path = sys
            .getattr("path")
            .and_then(|p| p.cast_into::<PyList>().map_err(PyErr::from))
            .map_err(|e| startup_error(e.to_string()))?;
        let mut front = vec![package_dir()];
        if let Ok(cwd) = std::env::current_dir() {
            front.push(cwd);
        }
        if let Some(extra) = std::env::var_os("LIVECALC_PYTHONPATH") {
            front.extend(std::env::split_paths(&extra));
        }
        for (i, dir) in front.iter().enumerate() {
            path.insert(i, dir.to_string_lossy().as_ref())
                .map_err(|e| startup_error(e.to_string()))?;
        }
        install_worker_module(py).map_err(|e| startup_error(e.to_string()))?;
        Ok(())
    })
}

/// A Python exception, classified by the seed's hierarchy; the traceback goes to the log.
pub fn engine_error(py: Python<'_>, err: PyErr) -> EngineError {
    let classified = py.import("livecalc._host").and_then(|host| {
        host.call_method1("classify", (err.value(py), err.traceback(py)))?
            .extract::<(String, String, String, String)>()
    });
    match classified {
        Ok((kind, class, message, traceback)) => {
            tracing::error!(class = %class, "python exception\n{traceback}");
            let kind = match kind.as_str() {
                "configuration" => EngineErrorKind::Configuration,
                "initialization" => EngineErrorKind::Initialization,
                "execution" => EngineErrorKind::Execution,
                "out_of_memory" => EngineErrorKind::OutOfMemory,
                "kept_view" => {
                    // Its arrays would dangle once the views are unmapped, or alias another
                    // segment mapped at the same address: this process must not go on.
                    tracing::error!("{message}; the worker exits (code {EXIT_KEPT_VIEW})");
                    std::process::exit(EXIT_KEPT_VIEW);
                }
                "unknown_engine" => EngineErrorKind::UnknownEngine,
                _ => EngineErrorKind::Other,
            };
            EngineError::new(kind, class, message)
        }
        Err(_) => EngineError::new(EngineErrorKind::Other, "PythonError", err.to_string()),
    }
}

/// A `memoryview` over `len` bytes at `ptr`, read-only unless `writable`.
///
/// # Safety
/// `ptr..ptr+len` must stay mapped (and, if `writable`, writable) until the memoryview is
/// released; the caller releases it before the mapping can go away.
pub unsafe fn memoryview<'py>(
    py: Python<'py>,
    ptr: *mut u8,
    len: usize,
    writable: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let flags = if writable {
        pyo3::ffi::PyBUF_WRITE
    } else {
        pyo3::ffi::PyBUF_READ
    };
    // SAFETY: the caller guarantees the memory's validity for the memoryview's lifetime; the
    // attached `py` token proves we hold the interpreter.
    unsafe {
        let raw =
            pyo3::ffi::PyMemoryView_FromMemory(ptr.cast(), len as pyo3::ffi::Py_ssize_t, flags);
        Bound::from_owned_ptr_or_err(py, raw)
    }
}
