//! The validated DAG: what the compiler produces and every later stage consumes.
//!
//! Nothing here can be in an invalid state the compiler would have rejected: inputs are
//! resolved, the node list is in topological order, every output column has a concrete shape.

use livecalc_protocol::{Credentials, DType, OutputKind};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Which worker binary hosts an engine, and the name it knows the engine by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineKind {
    Cpp(String),
    Python(String),
}

impl EngineKind {
    pub fn worker_binary(&self) -> &'static str {
        match self {
            EngineKind::Cpp(_) => "livecalc-worker-cpp",
            EngineKind::Python(_) => "livecalc-worker-py",
        }
    }

    pub fn engine_arg(&self) -> &str {
        match self {
            EngineKind::Cpp(s) | EngineKind::Python(s) => s,
        }
    }
}

/// How a column is stored: plain numbers, or strings mapped to `int32` codes by declared levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Plain(DType),
    Category { levels: Vec<String> },
}

impl ColumnType {
    pub fn dtype(&self) -> DType {
        match self {
            ColumnType::Plain(d) => *d,
            ColumnType::Category { .. } => DType::Int32,
        }
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The producing node's (or source's) row count.
    Rows,
    Fixed(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: ColumnType,
    pub shape: Vec<Dim>,
}

impl ColumnSpec {
    /// The concrete shape, given the producer's row count.
    pub fn concrete_shape(&self, rows: u64) -> Vec<u64> {
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Rows => rows,
                Dim::Fixed(n) => *n,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Csv,
    Parquet,
    /// A synthetic `int64` column `0..rows` (benchmarks and bus tests).
    Sequence,
}

#[derive(Debug, Clone)]
pub struct DataSource {
    pub name: String,
    pub path: Option<PathBuf>,
    pub format: SourceFormat,
    pub columns: Vec<ColumnSpec>,
    pub rows: u64,
}

/// How the segments of a per-chunk output are combined once every chunk is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// Element-wise sum of the slots, in chunk order (so results never depend on worker count).
    Sum,
    /// Slot 0 (an output every chunk writes identically, such as a time grid).
    First,
}

#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    pub columns: Vec<ColumnSpec>,
    /// `None` for a one-row-per-row output.
    pub reduce: Option<Reduce>,
}

impl OutputSpec {
    pub fn kind(&self) -> OutputKind {
        if self.reduce.is_some() {
            OutputKind::PerChunk
        } else {
            OutputKind::Rows
        }
    }

    /// Rows of the delivered table: the node's rows, or the reduced columns' length.
    pub fn table_rows(&self, node_rows: u64) -> u64 {
        match self.reduce {
            None => node_rows,
            Some(_) => self
                .columns
                .first()
                .map(|c| c.concrete_shape(node_rows)[0])
                .unwrap_or(0),
        }
    }
}

/// Where a node input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Producer {
    Source(String),
    Node { node: String, output: String },
}

impl std::fmt::Display for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Producer::Source(s) => f.write_str(s),
            Producer::Node { node, output } => write!(f, "{node}.{output}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub from: Producer,
    pub chunked: bool,
}

/// Restart policy of a node (used by the resilience layer).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries per chunk, the first included.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub factor: f64,
    pub max_delay: Duration,
    /// Relative jitter of each delay (0.1 = ±10%).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(20),
            factor: 2.0,
            max_delay: Duration::from_secs(2),
            jitter: 0.1,
        }
    }
}

/// At most `max_restarts` worker restarts within `window`; one more fails the node.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartLimit {
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for RestartLimit {
    fn default() -> Self {
        RestartLimit {
            max_restarts: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// What a node delivers when a chunk still fails after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The node, and the run, fail.
    Fail,
    /// The node finishes `partial`: every completed chunk is delivered, the rest listed.
    Partial,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// Position in the DAG file's `engines` list (nodes themselves are in topological order).
    pub decl_index: usize,
    /// The type string as written in the DAG.
    pub type_name: String,
    pub kind: EngineKind,
    pub config: Value,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    pub rows: u64,
    pub chunk_size: u64,
    pub workers: u32,
    pub timeout: Duration,
    pub startup_timeout: Duration,
    pub retry: RetryPolicy,
    pub restart_limit: RestartLimit,
    pub on_failure: OnFailure,
    /// Run even when an input comes from a node that finished `partial`.
    pub accept_partial_inputs: bool,
    /// Address-space limit of each worker (`RLIMIT_AS`), in MiB.
    pub memory_limit_mb: Option<u64>,
    /// Fault-injection plan passed to the workers verbatim (JSON array).
    pub faults: Option<Value>,
    /// Upstream nodes this engine may ask to re-evaluate with new parameters (a solver).
    pub evaluates: Vec<String>,
    /// Keep this node's workers initialized after it completes: a downstream solver may ask
    /// for it to be re-run.
    pub warm: bool,
}

impl Node {
    pub fn output(&self, name: &str) -> Option<&OutputSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }

    pub fn chunk_count(&self) -> u64 {
        self.rows.div_ceil(self.chunk_size)
    }
}

/// A DAG output to deliver as Parquet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRef {
    pub node: String,
    pub output: String,
}

/// A compiled, validated DAG.
#[derive(Debug, Clone)]
pub struct Dag {
    pub path: PathBuf,
    /// Folder relative paths resolve against; the workers' working directory.
    pub dir: PathBuf,
    /// SHA-256 of the DAG file's bytes, hex.
    pub hash: String,
    /// SHA-256 of what the results depend on: the DAG after `${VAR}` expansion and the size and
    /// modification time of every file it names.
    pub resolved_hash: String,
    pub sources: Vec<DataSource>,
    /// In topological order.
    pub nodes: Vec<Node>,
    pub outputs: Vec<OutputRef>,
    pub credentials: Option<Credentials>,
}

impl Dag {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn source(&self, name: &str) -> Option<&DataSource> {
        self.sources.iter().find(|s| s.name == name)
    }
}
