//! Control messages between the supervisor and a worker process.
//!
//! Only small, fixed-shape messages cross the `ipc-channel`: engine configuration, segment
//! *names*, and chunk row ranges. Bulk data never does: a worker maps the named segments itself.
//! A chunk is dispatched with [`ToWorker::RunChunk`], whose encoded size does not depend on how
//! many bytes the chunk covers — the property the bus tests measure.
//!
//! Handshake: the supervisor opens an `IpcOneShotServer<FromWorker>` and passes its name to the
//! child; the child connects and sends [`FromWorker::Hello`] carrying the sender half of its
//! command channel. Every later worker message travels on the same connection.

use crate::layout::ChunkSpan;
use ipc_channel::ipc::IpcSender;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bumped on any incompatible change of these messages or of the layouts in [`crate::layout`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Metadata an engine reports about itself (the seed's `EngineInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub name: String,
    pub version: String,
    pub engine_type: String,
    pub supports_assumptions_manager: bool,
    /// Largest input or output buffer the engine accepts; 0 means no limit.
    pub max_buffer_size: u64,
}

/// What one `runChunk` call reports (the seed's `ExecutionResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ExecutionResult {
    pub success: bool,
    pub execution_time_ms: f64,
    pub rows_processed: u64,
    pub bytes_written: u64,
    pub warnings: Vec<String>,
    pub error_message: String,
    /// A small JSON document an engine may return (e.g. a solver's summary); recorded in the
    /// manifest. Empty when the engine returns none.
    pub report_json: String,
}

/// What the supervisor tells an engine after re-evaluating the sub-graph it asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// Nodes that were re-run, in the order they ran.
    pub nodes: Vec<String>,
    pub elapsed_ms: f64,
}

/// Assumptions-manager credentials (the seed's `AMCredentials`). The token is never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub am_url: String,
    pub am_token: String,
    pub cache_dir: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("am_url", &self.am_url)
            .field("am_token", &"<redacted>")
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// How an output segment is divided among chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    /// One row per row of the node's chunk axis; a chunk writes rows `row_start..row_start+count`.
    Rows,
    /// One slot per chunk (the segment's first dimension is the chunk count); a chunk writes slot
    /// `chunk.index`, and the supervisor reduces the slots in chunk order.
    PerChunk,
}

/// A named input of a node, bound to a sealed segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputBinding {
    pub name: String,
    pub segment: String,
    /// Sliced to the chunk's rows when true; presented whole otherwise.
    pub chunked: bool,
}

/// A named output of a node, bound to the segment the supervisor allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputBinding {
    pub name: String,
    pub segment: String,
    pub kind: OutputKind,
}

/// Supervisor to worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// `initialize(config, credentials)`; config is the node's JSON object, as text.
    Initialize {
        config_json: String,
        credentials: Option<Credentials>,
    },
    /// Map the node's segments into the worker's contiguous input and output views.
    Attach {
        inputs: Vec<InputBinding>,
        outputs: Vec<OutputBinding>,
    },
    /// `runChunk` over one chunk of the node's rows.
    RunChunk { chunk: ChunkSpan, attempt: u32 },
    /// `dispose()`; the worker stays alive and may be initialized again.
    Dispose,
    /// Leave the process after disposing.
    Shutdown,
    /// Answer to [`FromWorker::Evaluate`]: the upstream outputs the engine reads have been
    /// recomputed in place (same segments), or the evaluation failed.
    Evaluated {
        request: u64,
        outcome: Result<EvaluationReport, String>,
    },
}

/// The operation a worker was performing when something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    Initialize,
    Attach,
    RunChunk { index: u64 },
    Dispose,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Initialize => f.write_str("initialize"),
            Operation::Attach => f.write_str("attach"),
            Operation::RunChunk { index } => write!(f, "runChunk (chunk {index})"),
            Operation::Dispose => f.write_str("dispose"),
        }
    }
}

/// The seed's exception hierarchy, plus what only a host can detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineErrorKind {
    /// `ConfigurationError`: the node's config is wrong; retrying cannot help.
    Configuration,
    /// `InitializationError`: e.g. a table or credential could not be loaded.
    Initialization,
    /// `ExecutionError`, or `runChunk` returned `success = false`.
    Execution,
    /// Memory ran out (`std::bad_alloc`, `MemoryError`, or the host hit `memory_limit_mb`).
    OutOfMemory,
    /// Any other `CalcEngineError` or exception type.
    Other,
    /// A call out of lifecycle order (e.g. `runChunk` before `initialize`).
    Lifecycle,
    /// A segment could not be mapped or failed its header check.
    Bus,
    /// The engine type is not registered in this worker.
    UnknownEngine,
}

impl EngineErrorKind {
    /// Whether trying the same call again, on a fresh worker, can succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            EngineErrorKind::Execution
                | EngineErrorKind::Other
                | EngineErrorKind::Initialization
                | EngineErrorKind::OutOfMemory
        )
    }
}

/// An error raised by an engine or its host, with the exception class preserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineError {
    pub kind: EngineErrorKind,
    /// The exception's class name as the engine's language spells it, e.g. `ConfigurationError`.
    pub class: String,
    pub message: String,
}

impl EngineError {
    pub fn new(
        kind: EngineErrorKind,
        class: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        EngineError {
            kind,
            class: class.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// Worker to supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// First message on the handshake connection.
    Hello {
        protocol_version: u32,
        pid: u32,
        engine: EngineInfo,
        /// Language runtime that hosts the engine, e.g. `CPython 3.11.2 (/usr/lib/...)`.
        runtime: String,
        commands: IpcSender<ToWorker>,
    },
    /// First message instead of `Hello` when the engine could not even be created (unknown
    /// type, import error): the worker exits after sending it.
    Refused {
        protocol_version: u32,
        pid: u32,
        error: EngineError,
    },
    Initialized,
    Attached,
    ChunkDone {
        #[serde(with = "crate::layout::fixed_u64")]
        index: u64,
        result: ExecutionResult,
    },
    Failed {
        op: Operation,
        error: EngineError,
    },
    Disposed,
    /// Sent by an engine during `runChunk` (a solver): re-run the upstream nodes named in the
    /// parameters (`"<node>.<config key>"`) with those config values, on their warm workers,
    /// and every node between them and this one; answered by [`ToWorker::Evaluated`].
    Evaluate {
        request: u64,
        params: Vec<(String, f64)>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_len<T: Serialize>(v: &T) -> usize {
        postcard::to_stdvec(v).unwrap().len()
    }

    #[test]
    fn chunk_messages_have_a_size_independent_of_the_data() {
        let run = |index, start, count, total| ToWorker::RunChunk {
            chunk: ChunkSpan {
                index,
                row_start: start,
                row_count: count,
                total_rows: total,
            },
            attempt: 1,
        };
        let small = wire_len(&run(0, 0, 10, 10));
        let large = wire_len(&run(1023, 1 << 40, 1 << 20, 1 << 50));
        assert_eq!(small, large);
        let done = |index| FromWorker::ChunkDone {
            index,
            result: ExecutionResult::default(),
        };
        assert_eq!(wire_len(&done(0)), wire_len(&done(u64::MAX)));
    }

    #[test]
    fn credentials_never_print_the_token() {
        let c = Credentials {
            am_url: "https://am".into(),
            am_token: "secret-token".into(),
            cache_dir: String::new(),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
