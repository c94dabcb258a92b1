//! Hosting of C++ `ICalcEngine` implementations: the cxx bridge ([`ffi`]) and [`CppEngine`],
//! the adapter that lets `livecalc-worker-host` drive a C++ engine. The binary
//! `livecalc-worker-cpp` is a one-line `main` over [`create`]; tests and benchmarks use the same
//! adapter to call the real engines through the real bridge.

pub mod ffi;

use livecalc_protocol::{Credentials, EngineError, EngineErrorKind, EngineInfo, ExecutionResult};
use livecalc_worker_host::{Engine, Evaluator, InputBuffer, OutputBuffer};

/// One C++ engine instance behind the bridge.
pub struct CppEngine {
    handle: cxx::UniquePtr<ffi::EngineHandle>,
}

/// The seed's C++ `initialize` takes `std::map<std::string, std::string>`: strings go through
/// unquoted, every other JSON value as its JSON text.
fn flatten_config(config_json: &str) -> Result<Vec<ffi::ConfigEntry>, EngineError> {
    let value: serde_json::Value = serde_json::from_str(config_json).map_err(|e| {
        EngineError::new(
            EngineErrorKind::Configuration,
            "ConfigurationError",
            format!("config is not JSON: {e}"),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(EngineError::new(
            EngineErrorKind::Configuration,
            "ConfigurationError",
            "config must be a JSON object",
        ));
    };
    Ok(obj
        .iter()
        .map(|(k, v)| ffi::ConfigEntry {
            key: k.clone(),
            value: match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        })
        .collect())
}

impl std::fmt::Debug for CppEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CppEngine")
    }
}

impl Engine for CppEngine {
    fn info(&self) -> Result<EngineInfo, EngineError> {
        let i = self.handle.info().map_err(|e| ffi::engine_error(&e))?;
        Ok(EngineInfo {
            name: i.name,
            version: i.version,
            engine_type: i.engine_type,
            supports_assumptions_manager: i.supports_assumptions_manager,
            max_buffer_size: i.max_buffer_size,
        })
    }

    fn runtime(&self) -> String {
        format!("C++ (engines: {})", ffi::registered_engines().join(", "))
    }

    fn initialize(
        &mut self,
        config_json: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(), EngineError> {
        let config = flatten_config(config_json)?;
        let empty = Credentials {
            am_url: String::new(),
            am_token: String::new(),
            cache_dir: String::new(),
        };
        let c = credentials.unwrap_or(&empty);
        self.handle
            .pin_mut()
            .initialize(
                &config,
                credentials.is_some(),
                &c.am_url,
                &c.am_token,
                &c.cache_dir,
            )
            .map_err(|e| ffi::engine_error(&e))?;
        if !self.handle.is_initialized().unwrap_or(false) {
            return Err(EngineError::new(
                EngineErrorKind::Lifecycle,
                "LifecycleError",
                "initialize() returned but is_initialized() is false",
            ));
        }
        Ok(())
    }

    fn run_chunk(
        &mut self,
        input: Option<InputBuffer>,
        output: OutputBuffer,
        // C++ engines do not drive other engines (yet): the seed's interface has no way to.
        _evaluator: &mut dyn Evaluator,
    ) -> Result<ExecutionResult, EngineError> {
        let (in_ptr, in_len) = input.map_or((std::ptr::null(), 0), |b| (b.ptr, b.len));
        // SAFETY: the host guarantees both views stay mapped for the whole call: the input view
        // read-only over in_len bytes (or null and 0), the output view writable over output.len.
        let r = unsafe {
            self.handle
                .pin_mut()
                .run_chunk(in_ptr, in_len, output.ptr, output.len)
        }
        .map_err(|e| ffi::engine_error(&e))?;
        Ok(ExecutionResult {
            success: r.success,
            execution_time_ms: r.execution_time_ms,
            rows_processed: r.rows_processed,
            bytes_written: r.bytes_written,
            warnings: r.warnings,
            error_message: r.error_message,
            report_json: String::new(),
        })
    }

    fn dispose(&mut self) {
        let _ = self.handle.pin_mut().dispose();
    }
}

/// Create the C++ engine a DAG names `cpp:<name>` (or by a built-in alias such as
/// `cpp_projection`).
pub fn create(engine_type: &str) -> Result<CppEngine, EngineError> {
    let name = engine_type.strip_prefix("cpp:").unwrap_or(engine_type);
    let name = match name {
        "cpp_my_engine" => "my_engine",
        "cpp_projection" => "projection",
        "cpp_pv_statistics" => "pv_statistics",
        "cpp_checksum" => "checksum",
        other => other,
    };
    Ok(CppEngine {
        handle: ffi::create_engine(name)?,
    })
}
