//! The FFI boundary of livecalc-worker-cpp: the only module that talks to C++.
//!
//! Every C++ entry point is declared as returning `Result`, so cxx wraps it in the `trycatch`
//! of `bridge.hpp`: an engine's exception becomes an `Err` carrying
//! `"<ExceptionClass>\x1f<message>"`, split here into a typed [`EngineError`] whose class
//! survives to the supervisor. Nothing can unwind into Rust or reach `std::terminate`.

use livecalc_protocol::{EngineError, EngineErrorKind};

// cxx generates the wrappers; the safety contract of `run_chunk` is documented on its
// declaration below, which clippy cannot see through the macro.
#[allow(missing_debug_implementations, clippy::missing_safety_doc)]
#[cxx::bridge(namespace = "livecalc::bridge")]
mod sys {
    struct BridgeInfo {
        name: String,
        version: String,
        engine_type: String,
        supports_assumptions_manager: bool,
        max_buffer_size: u64,
    }

    struct BridgeResult {
        success: bool,
        execution_time_ms: f64,
        rows_processed: u64,
        bytes_written: u64,
        warnings: Vec<String>,
        error_message: String,
    }

    struct ConfigEntry {
        key: String,
        value: String,
    }

    unsafe extern "C++" {
        include!("livecalc-worker-cpp/src/bridge.hpp");

        type EngineHandle;

        fn create_engine(name: &str) -> Result<UniquePtr<EngineHandle>>;
        fn registered_engines() -> Result<Vec<String>>;
        fn info(self: &EngineHandle) -> Result<BridgeInfo>;
        fn initialize(
            self: Pin<&mut EngineHandle>,
            config: &[ConfigEntry],
            has_credentials: bool,
            am_url: &str,
            am_token: &str,
            cache_dir: &str,
        ) -> Result<()>;
        /// # Safety
        /// `input` must be null with `input_size == 0`, or valid for reads of `input_size` bytes;
        /// `output` must be valid for writes of `output_size` bytes, for the whole call.
        unsafe fn run_chunk(
            self: Pin<&mut EngineHandle>,
            input: *const u8,
            input_size: usize,
            output: *mut u8,
            output_size: usize,
        ) -> Result<BridgeResult>;
        fn dispose(self: Pin<&mut EngineHandle>) -> Result<()>;
        fn is_initialized(self: &EngineHandle) -> Result<bool>;
    }
}

pub use sys::{ConfigEntry, EngineHandle};

/// Split cxx's exception text back into class and message, and classify it by the seed's
/// hierarchy.
pub fn engine_error(e: &cxx::Exception) -> EngineError {
    let text = e.what();
    let (class, message) = text
        .split_once('\x1f')
        .unwrap_or(("UnknownException", text));
    let kind = match class {
        "ConfigurationError" => EngineErrorKind::Configuration,
        "InitializationError" => EngineErrorKind::Initialization,
        "ExecutionError" => EngineErrorKind::Execution,
        "bad_alloc" | "bad_array_new_length" => EngineErrorKind::OutOfMemory,
        _ => EngineErrorKind::Other,
    };
    EngineError::new(kind, class, message)
}

pub fn create_engine(name: &str) -> Result<cxx::UniquePtr<EngineHandle>, EngineError> {
    sys::create_engine(name).map_err(|e| {
        let mut err = engine_error(&e);
        if err.kind == EngineErrorKind::Configuration {
            err.kind = EngineErrorKind::UnknownEngine;
        }
        err
    })
}

pub fn registered_engines() -> Vec<String> {
    sys::registered_engines().unwrap_or_default()
}
