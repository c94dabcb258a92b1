//! The run loop: one thread that owns the whole state of a run.
//!
//! Theory of operation:
//! 1. Before any process starts: prepare the output folder and the journal, check `/dev/shm`
//!    has room for every segment the run will need, load the data sources into sealed segments.
//! 2. A node starts when every node it reads from has finished (succeeded, or `partial` if the
//!    node accepts partial inputs): its output segments are allocated (state `Writing`), chunks
//!    found in the journal of a resumed run are restored, and `min(workers, chunks left)` worker
//!    processes are spawned.
//! 3. Each worker goes `Connecting -> Initializing -> Attaching -> Idle <-> Busy`, driven by
//!    [`Event`]s from the pool's helper threads; an idle worker is given the next pending chunk
//!    in chunk order. Deadlines (handshake, initialize, chunk timeout, stop grace, delayed
//!    restarts) are computed from the state each time round the loop; no timer thread exists.
//! 4. A completed chunk is hashed and written to the journal. When a worker fails in any way
//!    (crash, signal, timeout, lost channel, typed engine error) the failure is classified
//!    ([`policy::Cause`]); its chunk goes back to pending if the cause is retriable and attempts
//!    remain, and a fresh worker is spawned after a backoff delay, within the node's restart
//!    limit. A chunk is never re-run while the worker that last ran it is alive, and its output
//!    region is cleared before it is, so a half-written region is never read.
//! 5. When no chunk is pending or running, the node's completed chunks are verified against
//!    their hashes (a region overwritten by another worker is restored from the journal), its
//!    outputs are sealed, per-chunk outputs are reduced in chunk order, and its workers are told
//!    to shut down. A node with failed chunks fails the run, or, with `on_failure: partial`,
//!    finishes `partial` and the run continues.
//! 6. SIGINT/SIGTERM, or a failing node, stops every worker (SIGTERM to the group, grace,
//!    SIGKILL). Finally, whatever happened: delivered outputs are written as Parquet, the
//!    manifest is written, every segment is unlinked. The loop does not return while a worker
//!    process is alive.

pub mod journal;
pub mod manifest;
pub mod policy;

use crate::bus::{files, Bus, BusError, SegmentId};
use crate::config::model::{Dag, Node, OnFailure, OutputSpec, Producer, SourceFormat};
use crate::pool::{self, Event, ProcessEnd, WorkerId};
use ipc_channel::ipc::IpcSender;
use journal::Journal;
use livecalc_protocol::layout::{ColumnEntry, SegmentState};
use livecalc_protocol::{
    ChunkSpan, EngineInfo, FromWorker, InputBinding, OutputBinding, OutputKind, ToWorker,
    PROTOCOL_VERSION,
};
use manifest::*;
use nix::sys::signal::Signal;
use policy::{Backoff, Cause};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    /// Grace period between SIGTERM and SIGKILL when stopping a worker.
    pub grace: Duration,
    /// Continue the interrupted run whose journal is in `out_dir`.
    pub resume: bool,
}

impl RunOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            out_dir: out_dir.into(),
            grace: Duration::from_secs(2),
            resume: false,
        }
    }
}

/// What stops a run before any engine starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("output folder {path}: {message}")]
    OutDir { path: PathBuf, message: String },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("data source '{source_name}': {message}")]
    Load {
        source_name: String,
        message: String,
    },
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot write the manifest in {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The result of a run that got as far as starting.
#[derive(Debug)]
pub struct RunOutcome {
    pub manifest: Manifest,
}

impl RunOutcome {
    pub fn status(&self) -> RunStatus {
        self.manifest.status
    }
}

/// Where a worker stands. Each variant carries only what is valid in that state.
#[derive(Debug)]
enum Phase {
    Connecting {
        deadline: Instant,
    },
    Initializing {
        deadline: Instant,
    },
    Attaching {
        deadline: Instant,
        since: Instant,
    },
    Idle,
    Busy {
        chunk: usize,
        deadline: Instant,
        sent: u64,
        sent_at: Instant,
    },
    /// The control channel closed while the worker was active; its exit status, expected
    /// shortly, tells why.
    Lost {
        was: Box<Phase>,
        deadline: Instant,
    },
    Stopping {
        deadline: Instant,
        killed: bool,
    },
    Gone,
}

impl Phase {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Connecting { deadline }
            | Phase::Initializing { deadline }
            | Phase::Attaching { deadline, .. }
            | Phase::Busy { deadline, .. }
            | Phase::Lost { deadline, .. }
            | Phase::Stopping { deadline, .. } => Some(*deadline),
            Phase::Idle | Phase::Gone => None,
        }
    }

    fn is_active(&self) -> bool {
        !matches!(self, Phase::Stopping { .. } | Phase::Gone)
    }

    fn busy_chunk(&self) -> Option<usize> {
        match self {
            Phase::Busy { chunk, .. } => Some(*chunk),
            Phase::Lost { was, .. } => was.busy_chunk(),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Worker {
    node: usize,
    index: u32,
    pid: u32,
    server_name: String,
    phase: Phase,
    commands: Option<IpcSender<ToWorker>>,
    spawned_at: Instant,
    /// Set when the worker replaces a failed one: the recovery it completes once ready.
    replaces: Option<usize>,
    /// Its exit status has been collected: its pid (and group) may belong to someone else now,
    /// so it is never signalled again.
    reaped: bool,
    /// The node config generation it was last initialized with (see `NodeRun::config_gen`).
    config_gen: u64,
    /// How it ended, when it ended before its handshake was seen: the handshake (or the
    /// unblocking connection) is still on its way and may say why (`Refused`).
    exited_early: Option<ProcessEnd>,
}

#[derive(Debug, Clone, PartialEq)]
enum ChunkState {
    Pending,
    Running { worker: WorkerId },
    Done { hash: u64 },
    Failed { kind: &'static str, message: String },
}

#[derive(Debug)]
struct Chunk {
    span: ChunkSpan,
    state: ChunkState,
    attempts: u32,
    control_bytes: u64,
    /// The worker that last ran this chunk: it must be gone before the chunk runs again.
    fence: Option<WorkerId>,
    causes: Vec<String>,
    resumed: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum NodeStatus {
    Waiting,
    Running,
    Succeeded,
    Partial,
    Failed(String),
    Cancelled(String),
}

#[derive(Debug)]
struct OutputSegments {
    /// Where workers write.
    live: SegmentId,
    /// The chunk-order reduction of a per-chunk output, once the node is done.
    reduced: Option<SegmentId>,
}

impl OutputSegments {
    fn delivered(&self) -> SegmentId {
        self.reduced.unwrap_or(self.live)
    }
}

#[derive(Debug)]
struct NodeRun {
    status: NodeStatus,
    chunks: Vec<Chunk>,
    outputs: Vec<OutputSegments>,
    workers: Vec<WorkerId>,
    engine: Option<EngineInfo>,
    runtime: Option<String>,
    warnings: Vec<String>,
    started: Option<Instant>,
    finished: Option<Instant>,
    engine_ms: f64,
    ready_ms: Vec<f64>,
    round_trip_us: Vec<f64>,
    attach_ms: Vec<f64>,
    backoff: Backoff,
    /// Restart times, for the restart limit.
    restarts: Vec<Instant>,
    /// Replacement workers waiting for their backoff delay.
    respawns: Vec<Instant>,
    recoveries: Vec<Recovery>,
    /// Recoveries whose replacement worker is not yet ready, oldest first.
    open_recoveries: VecDeque<usize>,
    /// The config the workers are initialized with: the DAG's, plus evaluation parameters.
    config: serde_json::Value,
    /// Times this node was re-run for a solver.
    evaluations: u32,
    /// Bumped whenever `config` changes; a worker initialized with an older generation is
    /// initialized again before it gets a chunk.
    config_gen: u64,
    /// The engine's last `report_json`, parsed.
    report: Option<serde_json::Value>,
    /// Upstream nodes that were `partial` when this node started (with accept_partial_inputs):
    /// this node's outputs are then derived from incomplete data and never called complete.
    partial_inputs: Vec<String>,
}

/// An evaluation request waiting for the previous one's re-runs: (solver worker, request id,
/// parameters).
type PendingEvaluation = (WorkerId, u64, Vec<(String, f64)>);

/// A re-evaluation requested by a solver, in progress.
#[derive(Debug)]
struct Evaluation {
    worker: WorkerId,
    request: u64,
    /// Nodes to re-run, in topological order.
    nodes: Vec<usize>,
    started: Instant,
}

struct Run<'a> {
    dag: &'a Dag,
    opts: &'a RunOptions,
    bus: Bus,
    /// Completed chunks, persisted for `--resume`; `None` once removed after success.
    journal: Option<Journal>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    t0: Instant,
    nodes: Vec<NodeRun>,
    workers: Vec<Worker>,
    sources: HashMap<String, SegmentId>,
    abort: Option<String>,
    signals_seen: u32,
    errors: Vec<String>,
    evaluation: Option<Evaluation>,
    /// A request that arrived while warm nodes were still busy (e.g. from a solver's
    /// replacement while its predecessor's evaluation finishes): started when they are idle.
    pending_evaluation: Option<PendingEvaluation>,
}

/// Run a compiled DAG to completion.
pub fn run(dag: &Dag, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    prepare_out_dir(&opts.out_dir, opts.resume)?;
    let journal = if opts.resume {
        Journal::resume(&opts.out_dir, dag, hash_regions).map_err(RunError::Resume)?
    } else {
        Journal::create(&opts.out_dir, dag).map_err(|e| RunError::OutDir {
            path: opts.out_dir.clone(),
            message: format!("cannot create the run journal: {e}"),
        })?
    };
    let bus = Bus::new()?;
    Bus::check_space(planned_bytes(dag))?;
    let (tx, rx) = mpsc::channel();
    let signals = listen_for_signals(tx.clone())?;
    let mut run = Run {
        dag,
        opts,
        bus,
        journal: Some(journal),
        tx,
        rx,
        t0,
        nodes: dag
            .nodes
            .iter()
            .map(|n| NodeRun {
                status: NodeStatus::Waiting,
                chunks: plan_chunks(n),
                outputs: Vec::new(),
                workers: Vec::new(),
                engine: None,
                runtime: None,
                warnings: Vec::new(),
                started: None,
                finished: None,
                engine_ms: 0.0,
                ready_ms: Vec::new(),
                round_trip_us: Vec::new(),
                attach_ms: Vec::new(),
                backoff: Backoff::new(&n.retry, seed_of(&n.id)),
                restarts: Vec::new(),
                respawns: Vec::new(),
                recoveries: Vec::new(),
                open_recoveries: VecDeque::new(),
                config: n.config.clone(),
                evaluations: 0,
                config_gen: 0,
                report: None,
                partial_inputs: Vec::new(),
            })
            .collect(),
        workers: Vec::new(),
        sources: HashMap::new(),
        abort: None,
        signals_seen: 0,
        errors: Vec::new(),
        evaluation: None,
        pending_evaluation: None,
    };
    let loaded = run.load_sources();
    if let Err(e) = loaded {
        signals.close();
        run.bus.release_all();
        return Err(e);
    }
    run.event_loop();
    signals.close();
    let manifest = run.finish(started_at);
    manifest
        .write(&opts.out_dir)
        .map_err(|source| RunError::Manifest {
            path: opts.out_dir.clone(),
            source,
        })?;
    Ok(RunOutcome { manifest })
}

fn seed_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn listen_for_signals(tx: Sender<Event>) -> Result<signal_hook::iterator::Handle, RunError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(RunError::Signals)?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        })
        .map_err(RunError::Signals)?;
    Ok(handle)
}

fn prepare_out_dir(dir: &Path, resume: bool) -> Result<(), RunError> {
    let err = |message: String| RunError::OutDir {
        path: dir.to_path_buf(),
        message,
    };
    if resume {
        return if dir.is_dir() {
            Ok(())
        } else {
            Err(RunError::Resume(format!(
                "{} does not exist",
                dir.display()
            )))
        };
    }
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let mut entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
    let non_empty = entries.next().is_some();
    let ours =
        dir.join("manifest.json").is_file() || Journal::dir_in(dir).join("run.json").is_file();
    if non_empty && !ours {
        return Err(err(
            "is not empty and holds no earlier LiveCalc run (no manifest.json); choose an empty or new folder"
                .into(),
        ));
    }
    Ok(())
}

/// Chunk boundaries depend only on the row count and the chunk size, never on workers.
fn plan_chunks(n: &Node) -> Vec<Chunk> {
    (0..n.chunk_count())
        .map(|i| {
            let start = i * n.chunk_size;
            Chunk {
                span: ChunkSpan {
                    index: i,
                    row_start: start,
                    row_count: n.chunk_size.min(n.rows - start),
                    total_rows: n.rows,
                },
                state: ChunkState::Pending,
                attempts: 0,
                control_bytes: 0,
                fence: None,
                causes: Vec::new(),
                resumed: false,
            }
        })
        .collect()
}

fn output_columns(
    o: &OutputSpec,
    rows: u64,
    chunks: u64,
) -> Vec<(String, livecalc_protocol::DType, Vec<u64>)> {
    o.columns
        .iter()
        .map(|c| {
            let mut shape = c.concrete_shape(rows);
            if o.reduce.is_some() {
                shape.insert(0, chunks);
            }
            (c.name.clone(), c.ty.dtype(), shape)
        })
        .collect()
}

/// Every byte of shared memory the run will allocate, counted before anything is.
fn planned_bytes(dag: &Dag) -> u64 {
    let mut total = 0;
    for s in &dag.sources {
        let cols: Vec<_> = s
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty.dtype(), c.concrete_shape(s.rows)))
            .collect();
        total += Bus::planned_size(&cols);
    }
    for n in &dag.nodes {
        for o in &n.outputs {
            total += Bus::planned_size(&output_columns(o, n.rows, n.chunk_count()));
            if o.reduce.is_some() {
                total += Bus::planned_size(&output_columns(o, n.rows, 1));
            }
        }
    }
    total
}

fn postcard_len<T: serde::Serialize>(msg: &T) -> u64 {
    postcard::to_stdvec(msg)
        .map(|v| v.len() as u64)
        .unwrap_or(0)
}

/// A fast 64-bit hash of byte regions (word-wise multiply-rotate), to notice a completed
/// chunk's output being overwritten.
///
/// The hash depends only on the bytes in sequence, not on how they are split into parts, so the
/// hash of a chunk's regions is also the check of its journal record (one pass per chunk).
fn hash_regions(parts: &[&[u8]]) -> u64 {
    let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(29);
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    let mut carry = [0u8; 8];
    let mut held = 0usize;
    let mut total = 0u64;
    for p in parts {
        total += p.len() as u64;
        let mut rest: &[u8] = p;
        if held > 0 {
            let take = (8 - held).min(rest.len());
            carry[held..held + take].copy_from_slice(&rest[..take]);
            held += take;
            rest = &rest[take..];
            if held < 8 {
                continue;
            }
            h = mix(h, u64::from_le_bytes(carry));
        }
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            h = mix(h, u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let tail = words.remainder();
        carry[..tail.len()].copy_from_slice(tail);
        held = tail.len();
    }
    carry[held..].fill(0);
    if held > 0 {
        h = mix(h, u64::from_le_bytes(carry));
    }
    mix(h, total)
}

/// Set `key` in an engine config to `value`; a dotted key (`multipliers.premium`) walks into
/// nested objects, creating them where missing.
fn set_config_path(config: &mut serde_json::Value, key: &str, value: f64) {
    let mut at = config;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if !at.is_object() {
            *at = serde_json::json!({});
        }
        let obj = at.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            obj.insert(part.to_string(), serde_json::json!(value));
            return;
        }
        at = obj
            .entry(part.to_string())
            .or_insert_with(|| serde_json::json!({}));
    }
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

impl Run<'_> {
    fn ms(&self, t: Instant) -> f64 {
        t.duration_since(self.t0).as_secs_f64() * 1e3
    }

    fn load_sources(&mut self) -> Result<(), RunError> {
        for s in &self.dag.sources {
            let cols: Vec<_> = s
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.ty.dtype(), c.concrete_shape(s.rows)))
                .collect();
            let id = self.bus.allocate(&s.name, s.rows, &cols)?;
            self.bus.set_state(id, SegmentState::Writing);
            let entries = self.bus.header(id).columns.clone();
            let mut sinks: Vec<files::ColumnSink<'_>> = s
                .columns
                .iter()
                .zip(&entries)
                .map(|(spec, e)| files::ColumnSink {
                    spec,
                    // SAFETY: the segment is not yet known to any worker; each entry is a
                    // distinct, non-overlapping column of it.
                    bytes: unsafe { self.bus.column_bytes_mut(id, e) },
                })
                .collect();
            let rows = files::load(s, &mut sinks).map_err(|message| RunError::Load {
                source_name: s.name.clone(),
                message,
            })?;
            if rows != s.rows {
                return Err(RunError::Load {
                    source_name: s.name.clone(),
                    message: format!(
                        "read {rows} rows, expected {} (did the file change?)",
                        s.rows
                    ),
                });
            }
            self.bus.set_state(id, SegmentState::Sealed);
            self.sources.insert(s.name.clone(), id);
            if s.format != SourceFormat::Sequence {
                tracing::info!(source = %s.name, rows, "loaded data source");
            }
        }
        Ok(())
    }

    fn event_loop(&mut self) {
        loop {
            if self.abort.is_none() {
                self.start_ready_nodes();
            }
            let running = self
                .nodes
                .iter()
                .any(|n| matches!(n.status, NodeStatus::Running | NodeStatus::Waiting));
            if !running {
                // Warm workers kept for re-evaluation have nothing left to wait for.
                for k in 0..self.workers.len() {
                    self.stop(WorkerId(k));
                }
            }
            let live = self.workers.iter().any(|w| !matches!(w.phase, Phase::Gone));
            let running = self.nodes.iter().any(|n| n.status == NodeStatus::Running);
            if !live && !running {
                for n in &mut self.nodes {
                    if n.status == NodeStatus::Waiting {
                        n.status = NodeStatus::Cancelled("an upstream node did not succeed".into());
                    }
                }
                break;
            }
            let next = self
                .workers
                .iter()
                .filter_map(|w| w.phase.deadline())
                .chain(self.nodes.iter().flat_map(|n| n.respawns.iter().copied()))
                .min();
            let event = match next {
                Some(d) => {
                    let now = Instant::now();
                    if d <= now {
                        self.on_deadlines(now);
                        continue;
                    }
                    match self.rx.recv_timeout(d - now) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => {
                            self.on_deadlines(Instant::now());
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match self.rx.recv() {
                    Ok(e) => e,
                    Err(_) => break,
                },
            };
            self.on_event(event);
        }
    }

    fn start_ready_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].status != NodeStatus::Waiting {
                continue;
            }
            let node = &self.dag.nodes[i];
            let mut ready = true;
            for inp in &node.inputs {
                if let Producer::Node { node: up, .. } = &inp.from {
                    let j = self.node_index(up);
                    match &self.nodes[j].status {
                        NodeStatus::Succeeded => {}
                        NodeStatus::Partial if node.accept_partial_inputs => {
                            if !self.nodes[i].partial_inputs.contains(up) {
                                self.nodes[i].partial_inputs.push(up.clone());
                            }
                        }
                        NodeStatus::Partial => {
                            self.nodes[i].status = NodeStatus::Cancelled(format!(
                                "upstream node '{up}' is partial and this node does not set accept_partial_inputs"
                            ));
                            ready = false;
                            break;
                        }
                        NodeStatus::Failed(_) | NodeStatus::Cancelled(_) => {
                            self.nodes[i].status = NodeStatus::Cancelled(format!(
                                "upstream node '{up}' did not succeed"
                            ));
                            ready = false;
                            break;
                        }
                        NodeStatus::Waiting | NodeStatus::Running => ready = false,
                    }
                }
            }
            if ready && self.nodes[i].status == NodeStatus::Waiting {
                self.start_node(i);
            }
        }
    }

    fn node_index(&self, id: &str) -> usize {
        self.dag
            .nodes
            .iter()
            .position(|n| n.id == id)
            .expect("the compiler resolved every node reference")
    }

    fn start_node(&mut self, i: usize) {
        if !self.nodes[i].outputs.is_empty() {
            self.restart_warm(i);
            return;
        }
        let node = &self.dag.nodes[i];
        let now = Instant::now();
        self.nodes[i].status = NodeStatus::Running;
        self.nodes[i].started = Some(now);
        let chunks = node.chunk_count();
        for o in &node.outputs {
            let cols = output_columns(o, node.rows, chunks);
            match self.bus.allocate(&node.id, node.rows, &cols) {
                Ok(id) => {
                    self.bus.set_state(id, SegmentState::Writing);
                    self.nodes[i].outputs.push(OutputSegments {
                        live: id,
                        reduced: None,
                    });
                }
                Err(e) => {
                    self.fail_node(i, format!("node '{}': {e}", node.id));
                    return;
                }
            }
        }
        self.restore_from_journal(i);
        self.skip_rows_missing_upstream(i);
        let left = self.nodes[i]
            .chunks
            .iter()
            .filter(|c| c.state == ChunkState::Pending)
            .count() as u64;
        tracing::info!(node = %node.id, rows = node.rows, chunks, left, workers = node.workers, "node started");
        if left == 0 {
            self.check_node_finished(i);
            return;
        }
        let count = (node.workers as u64).min(left) as u32;
        for k in 0..count {
            self.spawn_worker(i, k, None);
        }
    }

    /// With `accept_partial_inputs`, rows of the chunk axis that a partial upstream node did not
    /// compute are not computed here either: the chunks covering them fail as
    /// `upstream_missing`, so no output row is ever derived from missing data.
    fn skip_rows_missing_upstream(&mut self, i: usize) {
        let node = &self.dag.nodes[i];
        let Some(inp) = node.inputs.iter().find(|x| x.chunked) else {
            return;
        };
        let Producer::Node { node: up, output } = &inp.from else {
            return;
        };
        let j = self.node_index(up);
        if self.nodes[j].status != NodeStatus::Partial
            || self.dag.nodes[j]
                .output(output)
                .is_some_and(|o| o.reduce.is_some())
        {
            return;
        }
        let missing: Vec<(u64, u64)> = self.nodes[j]
            .chunks
            .iter()
            .filter(|c| matches!(c.state, ChunkState::Failed { .. }))
            .map(|c| (c.span.row_start, c.span.row_start + c.span.row_count))
            .collect();
        for c in &mut self.nodes[i].chunks {
            let (a, b) = (c.span.row_start, c.span.row_start + c.span.row_count);
            if let Some((ma, mb)) = missing.iter().find(|(ma, mb)| *ma < b && a < *mb) {
                c.state = ChunkState::Failed {
                    kind: "upstream_missing",
                    message: format!(
                        "rows {ma}..{mb} of input '{}' were not computed by '{up}'",
                        inp.name
                    ),
                };
            }
        }
    }

    /// Re-run a completed node for an evaluation: same segments, same (warm) workers, new
    /// config. Each worker is disposed and initialized again, as the seed's lifecycle allows.
    fn restart_warm(&mut self, i: usize) {
        let node = &self.dag.nodes[i];
        self.nodes[i].status = NodeStatus::Running;
        self.nodes[i].evaluations += 1;
        self.nodes[i].config_gen += 1;
        self.nodes[i].chunks = plan_chunks(node);
        self.skip_rows_missing_upstream(i);
        for o in &self.nodes[i].outputs {
            self.bus.set_state(o.live, SegmentState::Writing);
        }
        let config = self.nodes[i].config.to_string();
        let credentials = self.dag.credentials.clone();
        let deadline = Instant::now() + node.startup_timeout;
        let mut warm = 0;
        for w in self.nodes[i].workers.clone() {
            if !matches!(self.workers[w.0].phase, Phase::Idle) {
                continue;
            }
            let sent = self.send(w, ToWorker::Dispose).is_ok()
                && self
                    .send(
                        w,
                        ToWorker::Initialize {
                            config_json: config.clone(),
                            credentials: credentials.clone(),
                        },
                    )
                    .is_ok();
            self.workers[w.0].phase = Phase::Initializing { deadline };
            self.workers[w.0].config_gen = self.nodes[i].config_gen;
            if sent {
                warm += 1;
            } else {
                self.channel_broken(w);
            }
        }
        if warm == 0 && self.nodes[i].respawns.is_empty() {
            let index = self.nodes[i].workers.len() as u32;
            self.spawn_worker(i, index, None);
        }
    }

    /// A solver asks for its upstream sub-graph to be re-run with new parameters.
    fn on_evaluate(&mut self, w: WorkerId, request: u64, params: Vec<(String, f64)>) {
        let s = self.workers[w.0].node;
        let reply = |run: &mut Self, outcome| {
            let _ = run.send(w, ToWorker::Evaluated { request, outcome });
        };
        if self.evaluation.as_ref().is_some_and(|e| e.worker != w) {
            reply(self, Err("another evaluation is in progress".into()));
            return;
        }
        let warm_busy = (0..self.dag.nodes.len()).any(|i| {
            self.dag.nodes[i].warm
                && matches!(
                    self.nodes[i].status,
                    NodeStatus::Running | NodeStatus::Waiting
                )
        });
        if warm_busy {
            // A previous evaluation's re-runs are still finishing: start this one after them.
            self.pending_evaluation = Some((w, request, params));
            return;
        }
        if self.abort.is_some() {
            reply(
                self,
                Err(format!(
                    "the run is stopping: {}",
                    self.abort.clone().unwrap_or_default()
                )),
            );
            return;
        }
        let allowed = &self.dag.nodes[s].evaluates;
        let mut by_node: HashMap<usize, Vec<(String, f64)>> = HashMap::new();
        for (name, value) in &params {
            let Some((node, key)) = name
                .split_once('.')
                .filter(|(n, k)| !n.is_empty() && !k.is_empty())
            else {
                reply(
                    self,
                    Err(format!("parameter '{name}' is not '<engine>.<config key>'")),
                );
                return;
            };
            if !allowed.iter().any(|a| a == node) {
                reply(
                    self,
                    Err(format!(
                        "engine '{node}' is not one this engine may re-evaluate (allowed: {})",
                        allowed.join(", ")
                    )),
                );
                return;
            }
            if !value.is_finite() {
                reply(
                    self,
                    Err(format!(
                        "parameter '{name}' is {value}, not a finite number"
                    )),
                );
                return;
            }
            by_node
                .entry(self.node_index(node))
                .or_default()
                .push((key.to_string(), *value));
        }
        // Re-run the warm nodes fed, directly or not, by a parameterised one.
        let mut rerun: Vec<usize> = Vec::new();
        for i in 0..self.dag.nodes.len() {
            if !self.dag.nodes[i].warm {
                continue;
            }
            let fed = by_node.contains_key(&i)
                || self.dag.nodes[i].inputs.iter().any(|inp| match &inp.from {
                    Producer::Node { node, .. } => rerun.contains(&self.node_index(node)),
                    Producer::Source(_) => false,
                });
            if fed {
                rerun.push(i);
            }
        }
        for &i in &rerun {
            let mut config = self.dag.nodes[i].config.clone();
            if let Some(set) = by_node.get(&i) {
                for (k, v) in set {
                    set_config_path(&mut config, k, *v);
                }
            }
            self.nodes[i].config = config;
            self.nodes[i].status = NodeStatus::Waiting;
        }
        tracing::debug!(?params, nodes = ?rerun.iter().map(|&i| &self.dag.nodes[i].id).collect::<Vec<_>>(), "evaluation");
        self.evaluation = Some(Evaluation {
            worker: w,
            request,
            nodes: rerun,
            started: Instant::now(),
        });
        self.finish_evaluation_if_done();
    }

    fn finish_evaluation_if_done(&mut self) {
        let Some(ev) = &self.evaluation else {
            self.start_pending_evaluation();
            return;
        };
        if !ev.nodes.iter().all(|&i| {
            matches!(
                self.nodes[i].status,
                NodeStatus::Succeeded | NodeStatus::Partial
            )
        }) {
            return;
        }
        if let Some(&i) = ev
            .nodes
            .iter()
            .find(|&&i| self.nodes[i].status == NodeStatus::Partial)
        {
            // Statistics over missing rows would mislead the solver: the evaluation fails.
            let missing: Vec<String> = self.nodes[i]
                .chunks
                .iter()
                .filter(|c| matches!(c.state, ChunkState::Failed { .. }))
                .map(|c| {
                    format!(
                        "{}..{}",
                        c.span.row_start,
                        c.span.row_start + c.span.row_count
                    )
                })
                .collect();
            let msg = format!(
                "the re-run of '{}' is partial: rows {} were not computed",
                self.dag.nodes[i].id,
                missing.join(", ")
            );
            self.fail_evaluation(i, msg);
            return;
        }
        let ev = self.evaluation.take().expect("checked above");
        let report = livecalc_protocol::EvaluationReport {
            nodes: ev
                .nodes
                .iter()
                .map(|&i| self.dag.nodes[i].id.clone())
                .collect(),
            elapsed_ms: ev.started.elapsed().as_secs_f64() * 1e3,
        };
        let _ = self.send(
            ev.worker,
            ToWorker::Evaluated {
                request: ev.request,
                outcome: Ok(report),
            },
        );
    }

    /// An evaluation could not complete: tell the solver, and leave the nodes as they are (the
    /// solver decides what to do; the failure is in its report and in this node's warnings).
    fn fail_evaluation(&mut self, i: usize, message: String) {
        let Some(ev) = self.evaluation.take() else {
            return;
        };
        for &n in &ev.nodes {
            if matches!(
                self.nodes[n].status,
                NodeStatus::Running | NodeStatus::Waiting | NodeStatus::Partial
            ) {
                self.nodes[n].status = NodeStatus::Succeeded;
                self.nodes[n].respawns.clear();
            }
            // Workers still computing with the failed evaluation's config must not carry it
            // into the next one: stop them; the next evaluation starts fresh ones.
            for w in self.nodes[n].workers.clone() {
                if !matches!(self.workers[w.0].phase, Phase::Idle) {
                    self.stop(w);
                }
            }
        }
        self.nodes[i]
            .warnings
            .push(format!("evaluation failed: {message}"));
        let _ = self.send(
            ev.worker,
            ToWorker::Evaluated {
                request: ev.request,
                outcome: Err(message),
            },
        );
    }

    fn start_pending_evaluation(&mut self) {
        if self.evaluation.is_some() || self.abort.is_some() {
            return;
        }
        let busy = (0..self.dag.nodes.len()).any(|i| {
            self.dag.nodes[i].warm
                && matches!(
                    self.nodes[i].status,
                    NodeStatus::Running | NodeStatus::Waiting
                )
        });
        if busy {
            return;
        }
        if let Some((w, request, params)) = self.pending_evaluation.take() {
            if self.workers[w.0].phase.is_active() {
                self.on_evaluate(w, request, params);
            }
        }
    }

    fn in_evaluation(&self, i: usize) -> bool {
        self.evaluation
            .as_ref()
            .is_some_and(|e| e.nodes.contains(&i))
    }

    /// Byte regions (segment, offset, length) a chunk writes, in output and column order.
    fn chunk_regions(&self, i: usize, k: usize) -> Vec<(SegmentId, ColumnEntry, usize, usize)> {
        let node = &self.dag.nodes[i];
        let span = self.nodes[i].chunks[k].span;
        let mut out = Vec::new();
        for (o, segs) in node.outputs.iter().zip(&self.nodes[i].outputs) {
            let header = self.bus.header(segs.live);
            for c in &header.columns {
                let rb = c.row_bytes() as usize;
                let (start, len) = match o.kind() {
                    OutputKind::Rows => {
                        (span.row_start as usize * rb, span.row_count as usize * rb)
                    }
                    OutputKind::PerChunk => (span.index as usize * rb, rb),
                };
                out.push((segs.live, c.clone(), start, len));
            }
        }
        out
    }

    /// The bytes of a chunk's regions: shared memory, which `&self` does not own, so the borrow
    /// rules cannot express who may write it; the protocol does (see Safety).
    ///
    /// # Safety
    /// No worker may be writing the chunk (it is done, failed with its worker gone, or not
    /// dispatched), and the caller must not hold two results for the same chunk at once.
    #[allow(clippy::mut_from_ref)]
    unsafe fn region_bytes(&self, i: usize, k: usize) -> Vec<&mut [u8]> {
        self.chunk_regions(i, k)
            .into_iter()
            .map(|(seg, col, start, len)| {
                // SAFETY: forwarded; regions of distinct columns never overlap.
                let all = unsafe { self.bus.column_bytes_mut(seg, &col) };
                &mut all[start..start + len]
            })
            .collect()
    }

    fn restore_from_journal(&mut self, i: usize) {
        if !self.opts.resume {
            return;
        }
        let Some(j) = &self.journal else { return };
        let id = self.dag.nodes[i].id.clone();
        for k in 0..self.nodes[i].chunks.len() {
            let len: usize = self.chunk_regions(i, k).iter().map(|r| r.3).sum();
            let index = self.nodes[i].chunks[k].span.index;
            let Some(bytes) = j.load(&id, index, len, hash_regions) else {
                continue;
            };
            // SAFETY: the node has just started; no worker exists for it yet.
            let regions = unsafe { self.region_bytes(i, k) };
            let mut at = 0;
            for r in regions {
                let n = r.len();
                r.copy_from_slice(&bytes[at..at + n]);
                at += n;
            }
            // SAFETY: as above.
            let hash = hash_regions(
                &unsafe { self.region_bytes(i, k) }
                    .iter()
                    .map(|r| &**r)
                    .collect::<Vec<_>>(),
            );
            let c = &mut self.nodes[i].chunks[k];
            c.state = ChunkState::Done { hash };
            c.resumed = true;
        }
        let restored = self.nodes[i].chunks.iter().filter(|c| c.resumed).count();
        if restored > 0 {
            tracing::info!(node = %id, restored, "chunks restored from the journal");
        }
    }

    fn spawn_worker(&mut self, i: usize, index: u32, replaces: Option<usize>) {
        let node = &self.dag.nodes[i];
        let id = WorkerId(self.workers.len());
        let spawn_no = self.nodes[i].workers.len() as u32 + 1;
        match pool::spawn(node, id, index, spawn_no, &self.dag.dir, &self.tx) {
            Ok(s) => {
                tracing::debug!(node = %node.id, worker = index, pid = s.pid, "worker spawned");
                self.workers.push(Worker {
                    node: i,
                    index,
                    pid: s.pid,
                    server_name: s.server_name,
                    phase: Phase::Connecting {
                        deadline: Instant::now() + node.startup_timeout,
                    },
                    commands: None,
                    spawned_at: Instant::now(),
                    replaces,
                    reaped: false,
                    config_gen: 0,
                    exited_early: None,
                });
                self.nodes[i].workers.push(id);
            }
            Err(e) => {
                let msg = format!("node '{}': {e}", node.id);
                self.node_fatal(i, msg);
            }
        }
    }

    fn worker_label(&self, w: WorkerId) -> String {
        let wk = &self.workers[w.0];
        format!(
            "node '{}' worker {} (pid {})",
            self.dag.nodes[wk.node].id, wk.index, wk.pid
        )
    }

    fn chunk_label(&self, node: usize, chunk: usize) -> String {
        let s = self.nodes[node].chunks[chunk].span;
        format!(
            "node '{}' chunk {} (rows {}..{})",
            self.dag.nodes[node].id,
            s.index,
            s.row_start,
            s.row_start + s.row_count
        )
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Signal(sig) => {
                self.signals_seen += 1;
                let name = pool::signal_name(sig);
                if self.signals_seen == 1 {
                    tracing::warn!(signal = %name, "stopping: workers get SIGTERM, then SIGKILL after the grace period");
                    self.abort_run(format!("interrupted by {name}"));
                } else {
                    tracing::warn!(signal = %name, "second signal: killing every worker now");
                    for k in 0..self.workers.len() {
                        self.kill(WorkerId(k));
                    }
                }
            }
            Event::Handshake { worker, result } => self.on_handshake(worker, result),
            Event::Message { worker, message } => self.on_message(worker, message),
            Event::ChannelClosed { worker } => {
                let wk = &mut self.workers[worker.0];
                if wk.phase.is_active() {
                    let was = std::mem::replace(&mut wk.phase, Phase::Idle);
                    wk.phase = Phase::Lost {
                        was: Box::new(was),
                        deadline: Instant::now() + Duration::from_secs(2),
                    };
                }
            }
            Event::Exited { worker, end } => self.on_exit(worker, end),
        }
    }

    fn on_handshake(
        &mut self,
        w: WorkerId,
        result: Result<(ipc_channel::ipc::IpcReceiver<FromWorker>, FromWorker), String>,
    ) {
        if !matches!(self.workers[w.0].phase, Phase::Connecting { .. }) {
            // A worker already given up; this is the unblocking connection or a late one.
            return;
        }
        let i = self.workers[w.0].node;
        let node = &self.dag.nodes[i];
        if let Some(end) = self.workers[w.0].exited_early {
            // The worker is gone already; the handshake only says why.
            if let Ok((_, FromWorker::Refused { error, .. })) = result {
                let cause = Cause::Engine(error);
                if cause.is_retriable() {
                    self.worker_failed(w, cause);
                } else {
                    let msg = format!(
                        "node '{}': engine type '{}' could not be created: {cause}",
                        node.id, node.type_name
                    );
                    self.workers[w.0].phase = Phase::Stopping {
                        deadline: Instant::now(),
                        killed: true,
                    };
                    self.node_fatal(i, msg);
                }
                self.workers[w.0].phase = Phase::Stopping {
                    deadline: Instant::now(),
                    killed: true,
                };
            }
            self.worker_gone(w, end);
            return;
        }
        match result {
            Ok((
                rx,
                FromWorker::Hello {
                    protocol_version,
                    engine,
                    runtime,
                    commands,
                    ..
                },
            )) => {
                if protocol_version != PROTOCOL_VERSION {
                    self.worker_failed(
                        w,
                        Cause::Handshake(format!(
                            "speaks protocol {protocol_version}, this supervisor {PROTOCOL_VERSION}"
                        )),
                    );
                    return;
                }
                pool::read_messages(w, rx, self.tx.clone());
                self.nodes[i].engine = Some(engine);
                self.nodes[i].runtime = Some(runtime);
                let msg = ToWorker::Initialize {
                    config_json: self.nodes[i].config.to_string(),
                    credentials: self.dag.credentials.clone(),
                };
                let deadline = Instant::now() + node.startup_timeout;
                let gen = self.nodes[i].config_gen;
                let wk = &mut self.workers[w.0];
                wk.phase = Phase::Initializing { deadline };
                wk.config_gen = gen;
                let sent = commands.send(msg).is_ok();
                wk.commands = Some(commands);
                if !sent {
                    self.channel_broken(w);
                }
            }
            Ok((_, FromWorker::Refused { error, .. })) => {
                let cause = Cause::Engine(error);
                let msg = format!(
                    "node '{}': engine type '{}' could not be created: {cause}",
                    node.id, node.type_name
                );
                if cause.is_retriable() {
                    self.worker_failed(w, cause);
                } else {
                    self.workers[w.0].phase = Phase::Stopping {
                        deadline: Instant::now() + self.opts.grace,
                        killed: false,
                    };
                    self.node_fatal(i, msg);
                }
            }
            Ok((_, other)) => {
                self.worker_failed(w, Cause::Handshake(format!("sent {other:?} before Hello")))
            }
            Err(e) => self.worker_failed(w, Cause::Handshake(e)),
        }
    }

    /// A command could not be sent: the worker is probably dying. Wait briefly for its exit
    /// status, which says why, before calling it lost (as for a closed channel).
    fn channel_broken(&mut self, w: WorkerId) {
        let wk = &mut self.workers[w.0];
        if wk.phase.is_active() && !matches!(wk.phase, Phase::Lost { .. }) {
            let was = std::mem::replace(&mut wk.phase, Phase::Idle);
            wk.phase = Phase::Lost {
                was: Box::new(was),
                deadline: Instant::now() + Duration::from_secs(2),
            };
        }
    }

    fn send(&mut self, w: WorkerId, msg: ToWorker) -> Result<u64, ()> {
        let len = postcard_len(&msg);
        match &self.workers[w.0].commands {
            Some(c) if c.send(msg).is_ok() => Ok(len),
            _ => Err(()),
        }
    }

    fn on_message(&mut self, w: WorkerId, message: FromWorker) {
        if !self.workers[w.0].phase.is_active() {
            return;
        }
        let i = self.workers[w.0].node;
        let node = &self.dag.nodes[i];
        match message {
            FromWorker::Initialized => {
                if self.workers[w.0].config_gen != self.nodes[i].config_gen {
                    // Initialized with the config of an earlier evaluation: again, with the
                    // current one, before it may run a chunk.
                    let msg = ToWorker::Initialize {
                        config_json: self.nodes[i].config.to_string(),
                        credentials: self.dag.credentials.clone(),
                    };
                    self.workers[w.0].config_gen = self.nodes[i].config_gen;
                    if self.send(w, ToWorker::Dispose).is_err() || self.send(w, msg).is_err() {
                        self.channel_broken(w);
                    }
                    return;
                }
                let ready = self.workers[w.0].spawned_at.elapsed().as_secs_f64() * 1e3;
                self.nodes[i].ready_ms.push(ready);
                let bind = self.bindings(i);
                let deadline = Instant::now() + node.startup_timeout;
                self.workers[w.0].phase = Phase::Attaching {
                    deadline,
                    since: Instant::now(),
                };
                if self.send(w, bind).is_err() {
                    self.channel_broken(w);
                }
            }
            FromWorker::Attached => {
                if let Phase::Attaching { since, .. } = self.workers[w.0].phase {
                    self.nodes[i]
                        .attach_ms
                        .push(since.elapsed().as_secs_f64() * 1e3);
                }
                if let Some(r) = self.workers[w.0].replaces.take() {
                    self.nodes[i].recoveries[r].ready_unix_ms = Some(unix_ms(SystemTime::now()));
                }
                self.workers[w.0].phase = Phase::Idle;
                self.dispatch(w);
            }
            FromWorker::ChunkDone { index, result } => {
                let reply_len = postcard_len(&FromWorker::ChunkDone {
                    index,
                    result: result.clone(),
                });
                let Phase::Busy {
                    chunk,
                    sent,
                    sent_at,
                    ..
                } = self.workers[w.0].phase
                else {
                    self.worker_failed(
                        w,
                        Cause::Handshake(format!("reported chunk {index} it was not given")),
                    );
                    return;
                };
                if chunk as u64 != index {
                    self.worker_failed(
                        w,
                        Cause::Handshake(format!(
                            "reported chunk {index} while running chunk {chunk}"
                        )),
                    );
                    return;
                }
                self.workers[w.0].phase = Phase::Idle;
                if self.nodes[i].chunks[chunk].state != (ChunkState::Running { worker: w }) {
                    // The chunk was re-planned (a new evaluation) since it was given out.
                    tracing::debug!(chunk, "dropping a result for a chunk re-planned meanwhile");
                    self.dispatch(w);
                    return;
                }
                // Control overhead of the chunk: the round trip minus the engine's own time,
                // measured before any bookkeeping of ours.
                let rt_us = sent_at.elapsed().as_secs_f64() * 1e6 - result.execution_time_ms * 1e3;
                self.chunk_done(i, chunk, sent + reply_len, rt_us, result);
                self.dispatch(w);
            }
            FromWorker::Failed { error, .. } => self.worker_failed(w, Cause::Engine(error)),
            FromWorker::Evaluate { request, params } => self.on_evaluate(w, request, params),
            FromWorker::Disposed => {}
            FromWorker::Hello { .. } | FromWorker::Refused { .. } => {
                self.worker_failed(w, Cause::Handshake("sent a second handshake".into()))
            }
        }
    }

    fn chunk_done(
        &mut self,
        i: usize,
        k: usize,
        bytes: u64,
        round_trip_us: f64,
        result: livecalc_protocol::ExecutionResult,
    ) {
        let index = self.nodes[i].chunks[k].span.index;
        // Re-evaluations for a solver are transient: only the first computation is journaled.
        let journaled = !self.in_evaluation(i);
        let mut journal = self.journal.take();
        let hash = {
            // SAFETY: the worker reported the chunk finished and is idle; nobody else writes it.
            let regions = unsafe { self.region_bytes(i, k) };
            let parts: Vec<&[u8]> = regions.iter().map(|r| &**r).collect();
            let hash = hash_regions(&parts);
            if let Some(j) = journal.as_mut().filter(|_| journaled) {
                if let Err(e) = j.save(&self.dag.nodes[i].id, index, &parts, hash) {
                    tracing::warn!(error = %e, "cannot journal chunk {index}; a resume would recompute it");
                }
            }
            hash
        };
        self.journal = journal;
        let nr = &mut self.nodes[i];
        let c = &mut nr.chunks[k];
        c.state = ChunkState::Done { hash };
        c.control_bytes += bytes;
        nr.engine_ms += result.execution_time_ms;
        nr.round_trip_us.push(round_trip_us.max(0.0));
        for warning in result.warnings {
            nr.warnings.push(format!("chunk {index}: {warning}"));
        }
        if !result.report_json.is_empty() {
            nr.report = serde_json::from_str(&result.report_json).ok();
        }
    }

    fn bindings(&self, i: usize) -> ToWorker {
        let node = &self.dag.nodes[i];
        let inputs = node
            .inputs
            .iter()
            .map(|inp| {
                let seg = match &inp.from {
                    Producer::Source(s) => self.sources[s],
                    Producer::Node { node: up, output } => {
                        let j = self.node_index(up);
                        let k = self.dag.nodes[j]
                            .outputs
                            .iter()
                            .position(|o| &o.name == output)
                            .expect("resolved by the compiler");
                        self.nodes[j].outputs[k].delivered()
                    }
                };
                InputBinding {
                    name: inp.name.clone(),
                    segment: self.bus.file_name(seg),
                    chunked: inp.chunked,
                }
            })
            .collect();
        let outputs = node
            .outputs
            .iter()
            .zip(&self.nodes[i].outputs)
            .map(|(o, s)| OutputBinding {
                name: o.name.clone(),
                segment: self.bus.file_name(s.live),
                kind: o.kind(),
            })
            .collect();
        ToWorker::Attach { inputs, outputs }
    }

    fn fence_cleared(&self, c: &Chunk) -> bool {
        c.fence
            .is_none_or(|f| matches!(self.workers[f.0].phase, Phase::Gone))
    }

    /// Give an idle worker the next runnable chunk; when none is left, see if the node is done.
    fn dispatch(&mut self, w: WorkerId) {
        let i = self.workers[w.0].node;
        if self.nodes[i].status != NodeStatus::Running || self.abort.is_some() {
            return;
        }
        if !matches!(self.workers[w.0].phase, Phase::Idle) {
            return;
        }
        let next = (0..self.nodes[i].chunks.len()).find(|&k| {
            let c = &self.nodes[i].chunks[k];
            c.state == ChunkState::Pending && self.fence_cleared(c)
        });
        let Some(k) = next else {
            self.check_node_finished(i);
            return;
        };
        if self.nodes[i].chunks[k].attempts > 0 {
            // A retry: clear whatever the failed attempt left behind.
            // SAFETY: the fence guarantees the previous worker is gone; no one else has it.
            for r in unsafe { self.region_bytes(i, k) } {
                r.fill(0);
            }
        }
        let c = &mut self.nodes[i].chunks[k];
        c.attempts += 1;
        c.state = ChunkState::Running { worker: w };
        let msg = ToWorker::RunChunk {
            chunk: c.span,
            attempt: c.attempts,
        };
        let timeout = self.dag.nodes[i].timeout;
        let sent = self.send(w, msg);
        self.workers[w.0].phase = Phase::Busy {
            chunk: k,
            deadline: Instant::now() + timeout,
            sent: sent.unwrap_or(0),
            sent_at: Instant::now(),
        };
        if sent.is_err() {
            self.channel_broken(w);
        }
    }

    fn dispatch_idle(&mut self, i: usize) {
        for w in self.nodes[i].workers.clone() {
            if matches!(self.workers[w.0].phase, Phase::Idle) {
                self.dispatch(w);
            }
        }
    }

    /// Classify and handle a failed worker: retry its chunk or give it up, restart or not.
    fn worker_failed(&mut self, w: WorkerId, cause: Cause) {
        let i = self.workers[w.0].node;
        let node = &self.dag.nodes[i];
        let busy = self.workers[w.0].phase.busy_chunk();
        let where_ = match busy {
            Some(k) => self.chunk_label(i, k),
            None => self.worker_label(w),
        };
        let phase_word = match &self.workers[w.0].phase {
            Phase::Connecting { .. } => " before connecting",
            Phase::Initializing { .. } => " during initialize",
            Phase::Attaching { .. } => " while attaching segments",
            _ => "",
        };
        let message = match &cause {
            Cause::Died(_) if busy.is_some() => {
                format!("{where_}: worker pid {} {cause}", self.workers[w.0].pid)
            }
            Cause::Died(_) if phase_word.is_empty() => {
                format!("{where_}: exited unexpectedly: {cause}")
            }
            Cause::Died(_) if phase_word == " during initialize" => {
                format!("{where_}: died during initialize: {cause}")
            }
            Cause::Died(_) => format!("{where_}: exited{phase_word}: {cause}"),
            Cause::Startup(t) if matches!(self.workers[w.0].phase, Phase::Connecting { .. }) => {
                format!(
                    "{where_}: did not connect within {:.1} s (startup_timeout_s)",
                    t.as_secs_f64()
                )
            }
            Cause::Engine(e) => format!(
                "{where_}{phase_word}: {cause}{}",
                self.input_files_named(i, &e.message)
            ),
            _ => format!("{where_}{phase_word}: {cause}"),
        };
        tracing::warn!("{message}");
        self.stop(w);
        if self.evaluation.as_ref().is_some_and(|e| e.worker == w) {
            // The solver waiting for this evaluation is gone; the re-runs finish on their own
            // and its replacement asks again.
            self.evaluation = None;
        }
        if self.nodes[i].status != NodeStatus::Running {
            return;
        }
        let max_attempts = node.retry.max_attempts;
        if let Some(k) = busy {
            let c = &mut self.nodes[i].chunks[k];
            c.fence = Some(w);
            c.causes.push(message.clone());
            if cause.is_retriable() && c.attempts < max_attempts {
                c.state = ChunkState::Pending;
            } else {
                c.state = ChunkState::Failed {
                    kind: cause.kind(),
                    message: message.clone(),
                };
                if self.in_evaluation(i) {
                    self.fail_evaluation(i, message);
                    return;
                }
                if node.on_failure == OnFailure::Fail {
                    self.fail_node(i, message);
                    return;
                }
            }
        } else if !cause.is_retriable() {
            self.node_fatal(i, message);
            return;
        }
        // A replacement, if there is still work and the restart budget allows it.
        let now = Instant::now();
        let limit = &node.restart_limit;
        let nr = &mut self.nodes[i];
        nr.restarts
            .retain(|t| now.duration_since(*t) <= limit.window);
        let remaining = nr
            .chunks
            .iter()
            .filter(|c| matches!(c.state, ChunkState::Pending))
            .count();
        if remaining == 0 {
            self.check_node_finished(i);
            return;
        }
        if nr.restarts.len() as u32 >= limit.max_restarts {
            let msg = format!(
                "node '{}': restart limit reached ({} restarts within {:.0} s); last failure: {message}",
                node.id,
                limit.max_restarts,
                limit.window.as_secs_f64()
            );
            self.node_fatal(i, msg);
            return;
        }
        nr.restarts.push(now);
        nr.recoveries.push(Recovery {
            cause: cause.kind().to_string(),
            message,
            chunk: busy.map(|k| nr.chunks[k].span.index),
            detected_unix_ms: unix_ms(SystemTime::now()),
            ready_unix_ms: None,
        });
        nr.open_recoveries.push_back(nr.recoveries.len() - 1);
        let delay = nr.backoff.next().unwrap_or_default();
        nr.respawns.push(now + delay);
    }

    /// Engines name the input binding of bad data (`input 'policies' row 17`); say which file
    /// that binding was read from, so the user knows what to fix.
    fn input_files_named(&self, i: usize, message: &str) -> String {
        let mut notes = Vec::new();
        for inp in &self.dag.nodes[i].inputs {
            if !message.contains(&format!("input '{}'", inp.name)) {
                continue;
            }
            if let Producer::Source(src) = &inp.from {
                if let Some(path) = self.dag.source(src).and_then(|s| s.path.as_ref()) {
                    notes.push(format!("input '{}' is {}", inp.name, path.display()));
                }
            }
        }
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        }
    }

    /// Every chunk not yet done fails with `message` (a cause no retry can fix).
    fn node_fatal(&mut self, i: usize, message: String) {
        if self.nodes[i].status != NodeStatus::Running {
            return;
        }
        if self.in_evaluation(i) {
            self.fail_evaluation(i, message);
            return;
        }
        for c in &mut self.nodes[i].chunks {
            if matches!(c.state, ChunkState::Pending | ChunkState::Running { .. }) {
                if let ChunkState::Running { worker } = c.state {
                    c.fence = Some(worker);
                }
                c.state = ChunkState::Failed {
                    kind: "node_failed",
                    message: message.clone(),
                };
            }
        }
        self.nodes[i].respawns.clear();
        for w in self.nodes[i].workers.clone() {
            self.stop(w);
        }
        if self.dag.nodes[i].on_failure == OnFailure::Fail {
            self.fail_node(i, message);
        } else {
            self.errors.push(message);
            self.check_node_finished(i);
        }
    }

    /// Finish the node if no chunk is pending or running and no failed chunk's worker lives.
    fn check_node_finished(&mut self, i: usize) {
        if self.nodes[i].status != NodeStatus::Running {
            return;
        }
        let nr = &self.nodes[i];
        let open = nr
            .chunks
            .iter()
            .any(|c| matches!(c.state, ChunkState::Pending | ChunkState::Running { .. }));
        let fenced = nr
            .chunks
            .iter()
            .any(|c| matches!(c.state, ChunkState::Failed { .. }) && !self.fence_cleared(c));
        if open || fenced {
            return;
        }
        let failed = nr
            .chunks
            .iter()
            .filter(|c| matches!(c.state, ChunkState::Failed { .. }))
            .count();
        // Rows a partial upstream never produced were skipped by choice (accept_partial_inputs),
        // not lost here: they make the node partial, not failed.
        let own_failures = nr
            .chunks
            .iter()
            .filter(|c| matches!(&c.state, ChunkState::Failed { kind, .. } if *kind != "upstream_missing"))
            .count();
        if own_failures > 0 && self.dag.nodes[i].on_failure == OnFailure::Fail {
            let first = nr.chunks.iter().find_map(|c| match &c.state {
                ChunkState::Failed { message, .. } => Some(message.clone()),
                _ => None,
            });
            self.fail_node(i, first.unwrap_or_default());
            return;
        }
        let tainted = !self.nodes[i].partial_inputs.is_empty();
        self.complete_node(i, failed > 0 || tainted);
    }

    fn complete_node(&mut self, i: usize, partial: bool) {
        let node = &self.dag.nodes[i];
        self.verify_chunks(i);
        if partial {
            // Failed chunks contribute nothing: their regions are zero, and stay out of the
            // Parquet files.
            for k in 0..self.nodes[i].chunks.len() {
                if matches!(self.nodes[i].chunks[k].state, ChunkState::Failed { .. }) {
                    // SAFETY: the failed chunk's last worker is gone (checked by the caller).
                    for r in unsafe { self.region_bytes(i, k) } {
                        r.fill(0);
                    }
                }
            }
        }
        for (k, o) in node.outputs.iter().enumerate() {
            let live = self.nodes[i].outputs[k].live;
            self.bus.set_state(live, SegmentState::Sealed);
            if let Some(how) = o.reduce {
                let into = self.nodes[i].outputs[k].reduced;
                match self.bus.reduce(live, &node.id, how, into) {
                    Ok(r) => self.nodes[i].outputs[k].reduced = Some(r),
                    Err(e) => {
                        self.fail_node(i, format!("node '{}': {e}", node.id));
                        return;
                    }
                }
            }
        }
        self.nodes[i].status = if partial {
            NodeStatus::Partial
        } else {
            NodeStatus::Succeeded
        };
        self.nodes[i].finished = Some(Instant::now());
        self.nodes[i].respawns.clear();
        tracing::debug!(node = %node.id, partial, "node finished");
        if !node.warm {
            for w in self.nodes[i].workers.clone() {
                self.stop(w);
            }
        }
        self.finish_evaluation_if_done();
    }

    /// A completed chunk's regions must still hash to what they were when it completed; if a
    /// misbehaving worker wrote outside its own rows, restore the chunk from the journal.
    fn verify_chunks(&mut self, i: usize) {
        let id = self.dag.nodes[i].id.clone();
        for k in 0..self.nodes[i].chunks.len() {
            let ChunkState::Done { hash } = self.nodes[i].chunks[k].state else {
                continue;
            };
            // SAFETY: every chunk is done or failed with its worker gone; no one writes.
            let now = hash_regions(
                &unsafe { self.region_bytes(i, k) }
                    .iter()
                    .map(|r| &**r)
                    .collect::<Vec<_>>(),
            );
            if now == hash {
                continue;
            }
            if self.in_evaluation(i) {
                // The journal holds the first run's bytes, not this evaluation's.
                let msg = format!(
                    "{}: its output was overwritten after it completed (a worker wrote outside its own rows)",
                    self.chunk_label(i, k)
                );
                self.fail_evaluation(i, msg);
                return;
            }
            let index = self.nodes[i].chunks[k].span.index;
            let len: usize = self.chunk_regions(i, k).iter().map(|r| r.3).sum();
            let saved = self
                .journal
                .as_ref()
                .and_then(|j| j.load(&id, index, len, hash_regions));
            let label = self.chunk_label(i, k);
            match saved {
                Some(bytes) => {
                    let mut at = 0;
                    // SAFETY: as above.
                    for r in unsafe { self.region_bytes(i, k) } {
                        let n = r.len();
                        r.copy_from_slice(&bytes[at..at + n]);
                        at += n;
                    }
                    let msg = format!("{label}: its output was overwritten after it completed (a worker wrote outside its own rows); restored from the journal");
                    tracing::warn!("{msg}");
                    self.nodes[i].warnings.push(msg);
                }
                None => {
                    let msg = format!("{label}: its output was overwritten after it completed (a worker wrote outside its own rows)");
                    self.nodes[i].chunks[k].state = ChunkState::Failed {
                        kind: "overwritten",
                        message: msg.clone(),
                    };
                    self.errors.push(msg);
                }
            }
        }
    }

    fn fail_node(&mut self, i: usize, message: String) {
        tracing::error!("{message}");
        if matches!(
            self.nodes[i].status,
            NodeStatus::Waiting | NodeStatus::Running
        ) {
            self.nodes[i].status = NodeStatus::Failed(message.clone());
            self.nodes[i].finished = Some(Instant::now());
            self.nodes[i].respawns.clear();
        }
        if !self.errors.contains(&message) {
            self.errors.push(message.clone());
        }
        // A failed node (on_failure: fail) fails the run: stop everything.
        self.abort_run(message);
    }

    fn abort_run(&mut self, reason: String) {
        if self.abort.is_none() {
            self.abort = Some(reason.clone());
            if !self.errors.contains(&reason) {
                self.errors.push(reason.clone());
            }
        }
        for n in &mut self.nodes {
            n.respawns.clear();
            match n.status {
                NodeStatus::Running => {
                    n.status = NodeStatus::Cancelled(reason.clone());
                    n.finished = Some(Instant::now());
                }
                NodeStatus::Waiting => n.status = NodeStatus::Cancelled(reason.clone()),
                _ => {}
            }
        }
        for k in 0..self.workers.len() {
            self.stop(WorkerId(k));
        }
    }

    /// Ask a worker to leave: `Shutdown` when it is idle, SIGTERM to its group otherwise.
    fn stop(&mut self, w: WorkerId) {
        let grace = self.opts.grace;
        let wk = &mut self.workers[w.0];
        if wk.reaped {
            return;
        }
        match wk.phase {
            Phase::Gone | Phase::Stopping { .. } => return,
            Phase::Idle => {
                let polite = wk
                    .commands
                    .as_ref()
                    .is_some_and(|c| c.send(ToWorker::Shutdown).is_ok());
                if !polite {
                    pool::signal_group(wk.pid, Signal::SIGTERM);
                }
            }
            Phase::Connecting { .. } => {
                pool::signal_group(wk.pid, Signal::SIGKILL);
                pool::unblock(&wk.server_name);
            }
            _ => pool::signal_group(wk.pid, Signal::SIGTERM),
        }
        wk.phase = Phase::Stopping {
            deadline: Instant::now() + grace,
            killed: false,
        };
    }

    fn kill(&mut self, w: WorkerId) {
        let wk = &mut self.workers[w.0];
        if matches!(wk.phase, Phase::Gone) || wk.reaped {
            return;
        }
        pool::signal_group(wk.pid, Signal::SIGKILL);
        wk.phase = Phase::Stopping {
            deadline: Instant::now() + Duration::from_secs(10),
            killed: true,
        };
    }

    fn on_deadlines(&mut self, now: Instant) {
        for i in 0..self.nodes.len() {
            let due = self.nodes[i].respawns.iter().filter(|t| **t <= now).count();
            if due == 0 {
                continue;
            }
            self.nodes[i].respawns.retain(|t| *t > now);
            for _ in 0..due {
                if self.nodes[i].status == NodeStatus::Running && self.abort.is_none() {
                    let replaces = self.nodes[i].open_recoveries.pop_front();
                    let index = self.nodes[i].workers.len() as u32;
                    self.spawn_worker(i, index, replaces);
                }
            }
        }
        for k in 0..self.workers.len() {
            let w = WorkerId(k);
            let Some(d) = self.workers[k].phase.deadline() else {
                continue;
            };
            if d > now {
                continue;
            }
            let node = &self.dag.nodes[self.workers[k].node];
            match &self.workers[k].phase {
                Phase::Connecting { .. } if self.workers[k].exited_early.is_some() => {
                    // No handshake event came after the exit: report the exit itself.
                    let end = self.workers[k].exited_early.expect("checked");
                    self.worker_gone(w, end);
                }
                Phase::Connecting { .. } | Phase::Initializing { .. } | Phase::Attaching { .. } => {
                    self.worker_failed(w, Cause::Startup(node.startup_timeout))
                }
                Phase::Busy { .. } => self.worker_failed(w, Cause::Timeout(node.timeout)),
                Phase::Lost { .. } => {
                    self.worker_failed(w, Cause::ChannelLost);
                    self.kill(w);
                }
                Phase::Stopping { killed: false, .. } => self.kill(w),
                Phase::Stopping { killed: true, .. } => {
                    tracing::error!(
                        pid = self.workers[k].pid,
                        "worker survives SIGKILL; still waiting"
                    );
                    self.workers[k].phase = Phase::Stopping {
                        deadline: now + Duration::from_secs(10),
                        killed: true,
                    };
                }
                Phase::Idle | Phase::Gone => {}
            }
        }
    }

    fn on_exit(&mut self, w: WorkerId, end: ProcessEnd) {
        self.workers[w.0].reaped = true;
        if self.workers[w.0].commands.is_none() {
            pool::unblock(&self.workers[w.0].server_name);
        }
        if matches!(self.workers[w.0].phase, Phase::Connecting { .. }) {
            // Its handshake may still be on its way (a worker that refuses its engine sends
            // `Refused` and exits at once): the accept thread reports either that or our
            // unblocking connection. Decide then; give it a moment, not a startup timeout.
            self.workers[w.0].exited_early = Some(end);
            self.workers[w.0].phase = Phase::Connecting {
                deadline: Instant::now() + Duration::from_secs(2),
            };
            return;
        }
        self.worker_gone(w, end);
    }

    /// Account for a worker whose exit status is known: report it if it was unexpected, then
    /// let fenced chunks run and the node finish.
    fn worker_gone(&mut self, w: WorkerId, end: ProcessEnd) {
        let i = self.workers[w.0].node;
        // A lost channel was only a symptom: report what the worker was doing when it died.
        if matches!(self.workers[w.0].phase, Phase::Lost { .. }) {
            if let Phase::Lost { was, .. } =
                std::mem::replace(&mut self.workers[w.0].phase, Phase::Idle)
            {
                self.workers[w.0].phase = *was;
            }
        }
        let stopping = matches!(
            self.workers[w.0].phase,
            Phase::Stopping { .. } | Phase::Gone
        );
        if !stopping {
            self.worker_failed(w, Cause::Died(end));
        } else {
            tracing::debug!("{} {end}", self.worker_label(w));
        }
        self.workers[w.0].phase = Phase::Gone;
        // Drop our end of its command channel: a finished worker must not hold a descriptor.
        self.workers[w.0].commands = None;
        // A chunk fenced by this worker may run now, and a node may now be able to finish.
        if self.nodes[i].status == NodeStatus::Running {
            self.dispatch_idle(i);
            self.check_node_finished(i);
        }
    }

    /// Write outputs and assemble the manifest; unlink every segment.
    fn finish(&mut self, started_at: SystemTime) -> Manifest {
        let mut outputs = Vec::new();
        for r in &self.dag.outputs {
            let i = self.node_index(&r.node);
            let partial = match self.nodes[i].status {
                NodeStatus::Succeeded => false,
                NodeStatus::Partial => true,
                _ => continue,
            };
            match self.write_output(i, &r.node, &r.output, partial) {
                Ok(report) => outputs.push(report),
                Err(msg) => {
                    tracing::error!("{msg}");
                    self.errors.push(msg);
                    self.abort
                        .get_or_insert_with(|| "an output could not be written".into());
                }
            }
        }
        self.bus.release_all();
        let any_partial = self
            .nodes
            .iter()
            .any(|n| matches!(n.status, NodeStatus::Partial | NodeStatus::Cancelled(_)));
        let status = if self.abort.is_some()
            || self
                .nodes
                .iter()
                .any(|n| matches!(n.status, NodeStatus::Failed(_)))
        {
            RunStatus::Failed
        } else if any_partial {
            RunStatus::Partial
        } else {
            RunStatus::Succeeded
        };
        if status == RunStatus::Succeeded {
            if let Some(j) = self.journal.take() {
                j.remove();
            }
        }
        let nodes = self
            .dag
            .nodes
            .iter()
            .zip(&self.nodes)
            .map(|(n, r)| self.node_report(n, r))
            .collect();
        let pid = std::process::id();
        let nanos = started_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Manifest {
            livecalc_version: env!("CARGO_PKG_VERSION"),
            run_id: format!("{nanos:x}-{pid:x}"),
            status,
            resumed: self.opts.resume,
            dag: self.dag.path.display().to_string(),
            dag_sha256: self.dag.hash.clone(),
            started_at: rfc3339(started_at),
            finished_at: rfc3339(SystemTime::now()),
            wall_ms: self.t0.elapsed().as_secs_f64() * 1e3,
            nodes,
            outputs,
            errors: self.errors.clone(),
        }
    }

    fn write_output(
        &self,
        i: usize,
        node_id: &str,
        output: &str,
        partial: bool,
    ) -> Result<OutputReport, String> {
        let node = &self.dag.nodes[i];
        let k = node
            .outputs
            .iter()
            .position(|o| o.name == output)
            .expect("resolved by the compiler");
        let spec = &node.outputs[k];
        let seg = self.nodes[i].outputs[k].delivered();
        let header = self.bus.header(seg).clone();
        let done: Vec<&Chunk> = self.nodes[i]
            .chunks
            .iter()
            .filter(|c| matches!(c.state, ChunkState::Done { .. }))
            .collect();
        let missing: Vec<[u64; 2]> = self.nodes[i]
            .chunks
            .iter()
            .filter(|c| !matches!(c.state, ChunkState::Done { .. }))
            .map(|c| [c.span.row_start, c.span.row_start + c.span.row_count])
            .collect();
        // Row outputs of a partial node keep the rows of completed chunks only.
        let keep_rows = partial && spec.reduce.is_none();
        let mut owned: Vec<(ColumnEntry, Vec<u8>)> = Vec::new();
        for e in &header.columns {
            // SAFETY: the node finished, so the segment is sealed and no worker writes it.
            let bytes = unsafe { self.bus.column_bytes(seg, e) };
            if keep_rows {
                let rb = e.row_bytes() as usize;
                let mut v = Vec::new();
                let mut rows = 0;
                for c in &done {
                    let a = c.span.row_start as usize * rb;
                    v.extend_from_slice(&bytes[a..a + c.span.row_count as usize * rb]);
                    rows += c.span.row_count;
                }
                let mut e = e.clone();
                e.shape[0] = rows;
                owned.push((e, v));
            } else {
                owned.push((e.clone(), bytes.to_vec()));
            }
        }
        let cols: Vec<(ColumnEntry, &[u8])> = owned
            .iter()
            .map(|(e, b)| (e.clone(), b.as_slice()))
            .collect();
        let dest = self
            .opts
            .out_dir
            .join(node_id)
            .join(format!("{output}.parquet"));
        let bytes = files::write_parquet(&dest, &cols)
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        let sha = std::fs::read(&dest)
            .map(|b| crate::config::compile::hex(&Sha256::digest(&b)))
            .unwrap_or_default();
        Ok(OutputReport {
            node: node_id.to_string(),
            output: output.to_string(),
            path: format!("{node_id}/{output}.parquet"),
            rows: cols.first().map(|c| c.0.shape[0]).unwrap_or(0),
            columns: header.columns.iter().map(|c| c.name.clone()).collect(),
            bytes,
            sha256: sha,
            complete: missing.is_empty() && self.nodes[i].partial_inputs.is_empty(),
            derived_from_partial: self.nodes[i].partial_inputs.clone(),
            covers_rows: done.iter().map(|c| c.span.row_count).sum(),
            missing_rows: missing,
        })
    }

    fn node_report(&self, n: &Node, r: &NodeRun) -> NodeReport {
        let (status, error) = match &r.status {
            NodeStatus::Waiting => ("not_started".to_string(), None),
            NodeStatus::Running => ("running".to_string(), None),
            NodeStatus::Succeeded => ("succeeded".to_string(), None),
            NodeStatus::Partial => ("partial".to_string(), None),
            NodeStatus::Failed(e) => ("failed".to_string(), Some(e.clone())),
            NodeStatus::Cancelled(e) => ("cancelled".to_string(), Some(e.clone())),
        };
        let failed = r
            .chunks
            .iter()
            .filter_map(|c| match &c.state {
                ChunkState::Failed { kind, message } => Some(FailedChunk {
                    index: c.span.index,
                    rows: [c.span.row_start, c.span.row_start + c.span.row_count],
                    cause: kind.to_string(),
                    message: message.clone(),
                    attempts: c.attempts,
                }),
                _ => None,
            })
            .collect();
        let retried = r
            .chunks
            .iter()
            .filter(|c| c.attempts > 1 && matches!(c.state, ChunkState::Done { .. }))
            .map(|c| RetriedChunk {
                index: c.span.index,
                attempts: c.attempts,
                causes: c.causes.clone(),
            })
            .collect();
        let per_chunk: Vec<u64> = r.chunks.iter().map(|c| c.control_bytes).collect();
        NodeReport {
            id: n.id.clone(),
            type_name: n.type_name.clone(),
            status,
            engine: r.engine.clone(),
            runtime: r.runtime.clone(),
            workers: n.workers,
            worker_starts: r.workers.len() as u32,
            restarts: r.recoveries.len() as u32,
            attempts: r.chunks.iter().map(|c| c.attempts).max().unwrap_or(0),
            rows: n.rows,
            chunk_size: n.chunk_size,
            chunks: ChunkCounts {
                total: r.chunks.len() as u64,
                done: r
                    .chunks
                    .iter()
                    .filter(|c| matches!(c.state, ChunkState::Done { .. }))
                    .count() as u64,
                resumed: r.chunks.iter().filter(|c| c.resumed).count() as u64,
                failed,
                retried,
            },
            timings: Timings {
                started_ms: r.started.map(|t| self.ms(t)),
                finished_ms: r.finished.map(|t| self.ms(t)),
                wall_ms: r
                    .started
                    .zip(r.finished)
                    .map(|(a, b)| (b - a).as_secs_f64() * 1e3),
                engine_ms: r.engine_ms,
                worker_ready_ms: r.ready_ms.clone(),
                attach_ms: r.attach_ms.clone(),
            },
            control_bytes: ControlBytes {
                total: per_chunk.iter().sum(),
                per_chunk,
            },
            control_round_trip_us: Quantiles::of(&r.round_trip_us),
            recoveries: r.recoveries.clone(),
            evaluations: r.evaluations,
            report: r.report.clone(),
            partial_inputs: r.partial_inputs.clone(),
            warnings: r.warnings.clone(),
            error,
        }
    }
}

impl Drop for Run<'_> {
    /// Last line of defence (a panic in the loop): no worker may outlive the supervisor.
    fn drop(&mut self) {
        for w in &self.workers {
            if !matches!(w.phase, Phase::Gone) {
                pool::signal_group(w.pid, Signal::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_parameters_set_nested_config_keys() {
        let mut c = serde_json::json!({"multipliers": {"premium": 1.0, "lapse": 1.0}, "timestep": "monthly"});
        set_config_path(&mut c, "multipliers.premium", 1.25);
        set_config_path(&mut c, "premium_multiplier", 2.0);
        set_config_path(&mut c, "new.deep.key", 3.0);
        assert_eq!(
            c,
            serde_json::json!({"multipliers": {"premium": 1.25, "lapse": 1.0}, "timestep": "monthly",
                               "premium_multiplier": 2.0, "new": {"deep": {"key": 3.0}}})
        );
    }

    #[test]
    fn region_hash_ignores_how_the_bytes_are_split() {
        let bytes: Vec<u8> = (0..=200u8).collect();
        let whole = hash_regions(&[&bytes]);
        for cut in [1, 7, 8, 9, 100, 199] {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(hash_regions(&[a, b]), whole, "cut at {cut}");
            let (b1, b2) = b.split_at(b.len() / 3);
            assert_eq!(
                hash_regions(&[a, b1, &[], b2]),
                whole,
                "cut at {cut} and more"
            );
        }
        // Trailing zero bytes still count (the total length is mixed in).
        assert_ne!(hash_regions(&[&[1, 0]]), hash_regions(&[&[1]]));
    }

    #[test]
    fn region_hash_notices_a_single_changed_byte() {
        let a = vec![7u8; 1000];
        let mut b = a.clone();
        assert_eq!(hash_regions(&[&a]), hash_regions(&[&b]));
        b[999] = 8;
        assert_ne!(hash_regions(&[&a]), hash_regions(&[&b]));
        b[999] = 7;
        b[3] = 0;
        assert_ne!(hash_regions(&[&a]), hash_regions(&[&b]));
    }
}
