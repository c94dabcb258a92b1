//! The run loop: one thread that owns the whole state of a run.
//!
//! Theory of operation:
//! 1. Before any process starts: prepare the output folder, check `/dev/shm` has room for every
//!    segment the run will need, load the data sources into sealed segments.
//! 2. A node starts when every node it reads from has succeeded: its output segments are
//!    allocated (state `Writing`) and `min(workers, chunks)` worker processes are spawned.
//! 3. Each worker goes `Connecting -> Initializing -> Attaching -> Idle <-> Busy`, driven by
//!    [`Event`]s from the pool's helper threads; an idle worker is given the next pending chunk
//!    in chunk order. Deadlines (handshake, initialize, chunk timeout, stop grace) are computed
//!    from the state each time round the loop, so no timer thread exists.
//! 4. When a node's last chunk is done its outputs are sealed, per-chunk outputs are reduced in
//!    chunk order, and its workers are told to shut down.
//! 5. Any failure (crash, signal, timeout, engine error, handshake failure) or SIGINT/SIGTERM
//!    stops every worker (SIGTERM to the group, grace, SIGKILL), and the run fails with a
//!    message that names the node, the chunk and the cause.
//! 6. Finally, whatever happened: completed DAG outputs are written as Parquet, the manifest is
//!    written, every segment is unlinked. The loop does not return while a worker process is
//!    alive.

pub mod manifest;

use crate::bus::{files, Bus, BusError, SegmentId};
use crate::config::model::{Dag, Node, OutputSpec, Producer, SourceFormat};
use crate::pool::{self, Event, ProcessEnd, WorkerId};
use ipc_channel::ipc::IpcSender;
use livecalc_protocol::layout::SegmentState;
use livecalc_protocol::{
    ChunkSpan, EngineInfo, FromWorker, InputBinding, OutputBinding, ToWorker, PROTOCOL_VERSION,
};
use manifest::*;
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub out_dir: PathBuf,
    /// Grace period between SIGTERM and SIGKILL when stopping a worker.
    pub grace: Duration,
}

impl RunOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            out_dir: out_dir.into(),
            grace: Duration::from_secs(2),
        }
    }
}

/// What stops a run before any engine starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("output folder {path}: {message}")]
    OutDir { path: PathBuf, message: String },
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
    Connecting { deadline: Instant },
    Initializing { deadline: Instant },
    Attaching { deadline: Instant },
    Idle,
    Busy {
        chunk: usize,
        deadline: Instant,
        sent: u64,
        sent_at: Instant,
    },
    /// The control channel closed while the worker was active; its exit status, expected
    /// shortly, tells why.
    Lost { was: Box<Phase>, deadline: Instant },
    Stopping { deadline: Instant, killed: bool },
    Gone(ProcessEnd),
}

impl Phase {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Connecting { deadline }
            | Phase::Initializing { deadline }
            | Phase::Attaching { deadline }
            | Phase::Busy { deadline, .. }
            | Phase::Lost { deadline, .. }
            | Phase::Stopping { deadline, .. } => Some(*deadline),
            Phase::Idle | Phase::Gone(_) => None,
        }
    }

    fn is_active(&self) -> bool {
        !matches!(self, Phase::Stopping { .. } | Phase::Gone(_))
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
}

#[derive(Debug, Clone, PartialEq)]
enum ChunkState {
    Pending,
    Running { worker: WorkerId },
    Done,
    Failed { cause: String },
}

#[derive(Debug)]
struct Chunk {
    span: ChunkSpan,
    state: ChunkState,
    attempts: u32,
    control_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum NodeStatus {
    Waiting,
    Running,
    Succeeded,
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
}

struct Run<'a> {
    dag: &'a Dag,
    opts: &'a RunOptions,
    bus: Bus,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    t0: Instant,
    nodes: Vec<NodeRun>,
    workers: Vec<Worker>,
    sources: HashMap<String, SegmentId>,
    abort: Option<String>,
    signals_seen: u32,
    errors: Vec<String>,
}

/// Run a compiled DAG to completion.
pub fn run(dag: &Dag, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    prepare_out_dir(&opts.out_dir)?;
    let bus = Bus::new()?;
    Bus::check_space(planned_bytes(dag))?;
    let (tx, rx) = mpsc::channel();
    let signals = listen_for_signals(tx.clone())?;
    let mut run = Run {
        dag,
        opts,
        bus,
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
            })
            .collect(),
        workers: Vec::new(),
        sources: HashMap::new(),
        abort: None,
        signals_seen: 0,
        errors: Vec::new(),
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

fn listen_for_signals(tx: Sender<Event>) -> Result<signal_hook::iterator::Handle, RunError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(RunError::Signals)?;
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

fn prepare_out_dir(dir: &Path) -> Result<(), RunError> {
    let err = |message: String| RunError::OutDir {
        path: dir.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let mut entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
    let non_empty = entries.next().is_some();
    if non_empty && !dir.join("manifest.json").is_file() {
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
            }
        })
        .collect()
}

fn output_columns(o: &OutputSpec, rows: u64, chunks: u64) -> Vec<(String, livecalc_protocol::DType, Vec<u64>)> {
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
    postcard::to_stdvec(msg).map(|v| v.len() as u64).unwrap_or(0)
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
            // SAFETY: the segment is not yet known to any worker; each entry is a distinct,
            // non-overlapping column of it.
            let mut sinks: Vec<files::ColumnSink<'_>> = s
                .columns
                .iter()
                .zip(&entries)
                .map(|(spec, e)| files::ColumnSink {
                    spec,
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
                    message: format!("read {rows} rows, expected {} (did the file change?)", s.rows),
                });
            }
            self.bus.set_state(id, SegmentState::Sealed);
            self.sources.insert(s.name.clone(), id);
            tracing::info!(source = %s.name, rows, format = ?s.format, "loaded data source");
            if s.format == SourceFormat::Sequence {
                tracing::debug!(source = %s.name, "synthetic sequence");
            }
        }
        Ok(())
    }

    fn event_loop(&mut self) {
        loop {
            if self.abort.is_none() {
                self.start_ready_nodes();
            }
            let live = self.workers.iter().any(|w| !matches!(w.phase, Phase::Gone(_)));
            let open = self
                .nodes
                .iter()
                .any(|n| matches!(n.status, NodeStatus::Waiting | NodeStatus::Running));
            if !live && (!open || self.abort.is_some()) {
                break;
            }
            if !live && open && !self.nodes.iter().any(|n| n.status == NodeStatus::Running) {
                // Waiting nodes whose inputs can never arrive.
                for n in &mut self.nodes {
                    if n.status == NodeStatus::Waiting {
                        n.status = NodeStatus::Cancelled("an upstream node did not succeed".into());
                    }
                }
                break;
            }
            let next = self.workers.iter().filter_map(|w| w.phase.deadline()).min();
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
                        NodeStatus::Failed(_) | NodeStatus::Cancelled(_) => {
                            self.nodes[i].status =
                                NodeStatus::Cancelled(format!("upstream node '{up}' did not succeed"));
                            ready = false;
                            break;
                        }
                        _ => ready = false,
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
        tracing::info!(node = %node.id, rows = node.rows, chunks, workers = node.workers, "node started");
        if chunks == 0 {
            self.complete_node(i);
            return;
        }
        let count = (node.workers as u64).min(chunks) as u32;
        for k in 0..count {
            self.spawn_worker(i, k, 1);
        }
    }

    fn spawn_worker(&mut self, i: usize, index: u32, spawn_no: u32) {
        let node = &self.dag.nodes[i];
        let id = WorkerId(self.workers.len());
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
                });
                self.nodes[i].workers.push(id);
            }
            Err(e) => self.fail_node(i, format!("node '{}': {e}", node.id)),
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
                    let msg = format!(
                        "{}: speaks protocol {protocol_version}, this supervisor {PROTOCOL_VERSION}",
                        self.worker_label(w)
                    );
                    self.fail_node(i, msg);
                    self.stop(w);
                    return;
                }
                pool::read_messages(w, rx, self.tx.clone());
                self.nodes[i].engine = Some(engine);
                self.nodes[i].runtime = Some(runtime);
                let msg = ToWorker::Initialize {
                    config_json: node.config.to_string(),
                    credentials: self.dag.credentials.clone(),
                };
                let deadline = Instant::now() + node.startup_timeout;
                let wk = &mut self.workers[w.0];
                wk.phase = Phase::Initializing { deadline };
                let sent = commands.send(msg).is_ok();
                wk.commands = Some(commands);
                if !sent {
                    self.stop(w);
                }
            }
            Ok((_, FromWorker::Refused { error, .. })) => {
                let msg = format!("node '{}': engine type '{}' could not be created: {error}", node.id, node.type_name);
                self.fail_node(i, msg);
                self.workers[w.0].phase = Phase::Stopping {
                    deadline: Instant::now() + self.opts.grace,
                    killed: false,
                };
            }
            Ok((_, other)) => {
                let msg = format!("{}: sent {other:?} before Hello", self.worker_label(w));
                self.fail_node(i, msg);
                self.stop(w);
            }
            Err(e) => {
                let msg = format!("{}: handshake failed: {e}", self.worker_label(w));
                self.fail_node(i, msg);
                self.stop(w);
            }
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
                let ready = self.workers[w.0].spawned_at.elapsed().as_secs_f64() * 1e3;
                self.nodes[i].ready_ms.push(ready);
                let bind = self.bindings(i);
                let deadline = Instant::now() + node.startup_timeout;
                self.workers[w.0].phase = Phase::Attaching { deadline };
                if self.send(w, bind).is_err() {
                    self.stop(w);
                }
            }
            FromWorker::Attached => {
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
                    let msg = format!("{}: reported chunk {index} it was not given", self.worker_label(w));
                    self.fail_node(i, msg);
                    self.stop(w);
                    return;
                };
                if chunk as u64 != index {
                    let msg = format!("{}: reported chunk {index} while running chunk {chunk}", self.worker_label(w));
                    self.fail_node(i, msg);
                    self.stop(w);
                    return;
                }
                let nr = &mut self.nodes[i];
                let c = &mut nr.chunks[chunk];
                c.state = ChunkState::Done;
                c.control_bytes += sent + reply_len;
                nr.engine_ms += result.execution_time_ms;
                // Control overhead of the chunk: the round trip minus the engine's own time.
                let rt = sent_at.elapsed().as_secs_f64() * 1e6 - result.execution_time_ms * 1e3;
                nr.round_trip_us.push(rt.max(0.0));
                for warning in result.warnings {
                    nr.warnings.push(format!("chunk {index}: {warning}"));
                }
                self.workers[w.0].phase = Phase::Idle;
                if self.nodes[i].status == NodeStatus::Running {
                    self.dispatch(w);
                }
            }
            FromWorker::Failed { op, error } => {
                let at = match (&self.workers[w.0].phase, op) {
                    (Phase::Busy { chunk, .. }, _) => self.chunk_label(i, *chunk),
                    (_, op) => format!("{} during {op}", self.worker_label(w)),
                };
                if let Phase::Busy { chunk, .. } = self.workers[w.0].phase {
                    self.nodes[i].chunks[chunk].state = ChunkState::Failed {
                        cause: error.to_string(),
                    };
                }
                self.fail_node(i, format!("{at}: {error}"));
                self.workers[w.0].phase = Phase::Idle;
                self.stop(w);
            }
            FromWorker::Disposed => {}
            FromWorker::Hello { .. } | FromWorker::Refused { .. } => {
                let msg = format!("{}: sent a second handshake", self.worker_label(w));
                self.fail_node(i, msg);
                self.stop(w);
            }
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

    fn dispatch(&mut self, w: WorkerId) {
        let i = self.workers[w.0].node;
        if self.nodes[i].status != NodeStatus::Running || self.abort.is_some() {
            return;
        }
        let next = self.nodes[i]
            .chunks
            .iter()
            .position(|c| c.state == ChunkState::Pending);
        match next {
            Some(k) => {
                let c = &mut self.nodes[i].chunks[k];
                c.attempts += 1;
                c.state = ChunkState::Running { worker: w };
                let msg = ToWorker::RunChunk {
                    chunk: c.span,
                    attempt: c.attempts,
                };
                let timeout = self.dag.nodes[i].timeout;
                match self.send(w, msg) {
                    Ok(sent) => {
                        self.workers[w.0].phase = Phase::Busy {
                            chunk: k,
                            deadline: Instant::now() + timeout,
                            sent,
                            sent_at: Instant::now(),
                        };
                    }
                    Err(()) => {
                        // The channel is gone: the exit event will say why.
                        self.workers[w.0].phase = Phase::Busy {
                            chunk: k,
                            deadline: Instant::now() + Duration::from_secs(2),
                            sent: 0,
                            sent_at: Instant::now(),
                        };
                    }
                }
            }
            None => {
                if self.nodes[i].chunks.iter().all(|c| c.state == ChunkState::Done) {
                    self.complete_node(i);
                }
            }
        }
    }

    fn complete_node(&mut self, i: usize) {
        let node = &self.dag.nodes[i];
        for (k, o) in node.outputs.iter().enumerate() {
            let live = self.nodes[i].outputs[k].live;
            self.bus.set_state(live, SegmentState::Sealed);
            if let Some(how) = o.reduce {
                match self.bus.reduce(live, &node.id, how) {
                    Ok(r) => {
                        self.nodes[i].outputs[k].reduced = Some(r);
                        self.bus.release(live);
                    }
                    Err(e) => {
                        self.fail_node(i, format!("node '{}': {e}", node.id));
                        return;
                    }
                }
            }
        }
        self.nodes[i].status = NodeStatus::Succeeded;
        self.nodes[i].finished = Some(Instant::now());
        tracing::info!(node = %node.id, "node succeeded");
        for w in self.nodes[i].workers.clone() {
            self.stop(w);
        }
    }

    fn fail_node(&mut self, i: usize, message: String) {
        tracing::error!("{message}");
        if matches!(self.nodes[i].status, NodeStatus::Waiting | NodeStatus::Running) {
            self.nodes[i].status = NodeStatus::Failed(message.clone());
            self.nodes[i].finished = Some(Instant::now());
        }
        self.errors.push(message.clone());
        // Restart and retry belong to the resilience layer; without it one failure ends the run.
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
        match wk.phase {
            Phase::Gone(_) | Phase::Stopping { .. } => return,
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
        if matches!(wk.phase, Phase::Gone(_)) {
            return;
        }
        pool::signal_group(wk.pid, Signal::SIGKILL);
        wk.phase = Phase::Stopping {
            deadline: Instant::now() + Duration::from_secs(10),
            killed: true,
        };
    }

    fn on_deadlines(&mut self, now: Instant) {
        for k in 0..self.workers.len() {
            let w = WorkerId(k);
            let Some(d) = self.workers[k].phase.deadline() else {
                continue;
            };
            if d > now {
                continue;
            }
            let i = self.workers[k].node;
            let node = &self.dag.nodes[i];
            match &self.workers[k].phase {
                Phase::Connecting { .. } => {
                    let msg = format!(
                        "{}: did not connect within {:.1} s (startup_timeout_s)",
                        self.worker_label(w),
                        node.startup_timeout.as_secs_f64()
                    );
                    self.fail_node(i, msg);
                    self.stop(w);
                }
                Phase::Initializing { .. } | Phase::Attaching { .. } => {
                    let msg = format!(
                        "{}: did not finish initializing within {:.1} s (startup_timeout_s)",
                        self.worker_label(w),
                        node.startup_timeout.as_secs_f64()
                    );
                    self.fail_node(i, msg);
                    self.kill(w);
                }
                Phase::Busy { chunk, .. } => {
                    let chunk = *chunk;
                    let msg = format!(
                        "{}: timed out after {:.1} s (timeout_s)",
                        self.chunk_label(i, chunk),
                        node.timeout.as_secs_f64()
                    );
                    self.nodes[i].chunks[chunk].state = ChunkState::Failed { cause: "timeout".into() };
                    self.workers[k].phase = Phase::Idle;
                    pool::signal_group(self.workers[k].pid, Signal::SIGTERM);
                    self.workers[k].phase = Phase::Stopping {
                        deadline: now + self.opts.grace,
                        killed: false,
                    };
                    self.fail_node(i, msg);
                }
                Phase::Lost { .. } => {
                    let msg = format!("{}: closed its control channel", self.worker_label(w));
                    self.fail_node(i, msg);
                    self.kill(w);
                }
                Phase::Stopping { killed: false, .. } => self.kill(w),
                Phase::Stopping { killed: true, .. } => {
                    tracing::error!(pid = self.workers[k].pid, "worker survives SIGKILL; still waiting");
                    self.workers[k].phase = Phase::Stopping {
                        deadline: now + Duration::from_secs(10),
                        killed: true,
                    };
                }
                Phase::Idle | Phase::Gone(_) => {}
            }
        }
    }

    fn on_exit(&mut self, w: WorkerId, end: ProcessEnd) {
        let before = std::mem::replace(&mut self.workers[w.0].phase, Phase::Gone(end));
        let before = match before {
            Phase::Lost { was, .. } => *was,
            other => other,
        };
        let i = self.workers[w.0].node;
        let connected = self.workers[w.0].commands.is_some();
        if !connected {
            pool::unblock(&self.workers[w.0].server_name);
        }
        let label = self.worker_label(w);
        let message = match before {
            Phase::Stopping { .. } | Phase::Gone(_) => {
                tracing::debug!("{label} {end}");
                return;
            }
            Phase::Connecting { .. } => format!("{label}: exited before connecting: {end}"),
            Phase::Initializing { .. } => format!("{label}: died during initialize: {end}"),
            Phase::Attaching { .. } => format!("{label}: died while attaching segments: {end}"),
            Phase::Busy { chunk, .. } => {
                self.nodes[i].chunks[chunk].state = ChunkState::Failed { cause: end.to_string() };
                format!("{}: worker pid {} {end}", self.chunk_label(i, chunk), self.workers[w.0].pid)
            }
            Phase::Idle | Phase::Lost { .. } => format!("{label}: exited unexpectedly: {end}"),
        };
        self.fail_node(i, message);
    }

    /// Write outputs and assemble the manifest; unlink every segment.
    fn finish(&mut self, started_at: SystemTime) -> Manifest {
        let mut outputs = Vec::new();
        for r in &self.dag.outputs {
            let i = self.node_index(&r.node);
            if self.nodes[i].status != NodeStatus::Succeeded {
                continue;
            }
            let k = self.dag.nodes[i]
                .outputs
                .iter()
                .position(|o| o.name == r.output)
                .expect("resolved by the compiler");
            let seg = self.nodes[i].outputs[k].delivered();
            let header = self.bus.header(seg).clone();
            // SAFETY: the node succeeded, so the segment is sealed and no worker writes it.
            let cols: Vec<_> = header
                .columns
                .iter()
                .map(|e| (e.clone(), unsafe { self.bus.column_bytes(seg, e) }))
                .collect();
            let dest = self.opts.out_dir.join(&r.node).join(format!("{}.parquet", r.output));
            match files::write_parquet(&dest, &cols) {
                Ok(bytes) => {
                    let sha = std::fs::read(&dest)
                        .map(|b| crate::config::compile::hex(&Sha256::digest(&b)))
                        .unwrap_or_default();
                    outputs.push(OutputReport {
                        node: r.node.clone(),
                        output: r.output.clone(),
                        path: format!("{}/{}.parquet", r.node, r.output),
                        rows: header.columns.first().map(|c| c.shape[0]).unwrap_or(0),
                        columns: header.columns.iter().map(|c| c.name.clone()).collect(),
                        bytes,
                        sha256: sha,
                        complete: true,
                    });
                }
                Err(e) => {
                    let msg = format!("cannot write {}: {e}", dest.display());
                    tracing::error!("{msg}");
                    self.errors.push(msg);
                    self.abort.get_or_insert_with(|| "an output could not be written".into());
                }
            }
        }
        self.bus.release_all();
        let status = if self.abort.is_none()
            && self.nodes.iter().all(|n| n.status == NodeStatus::Succeeded)
        {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
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

    fn node_report(&self, n: &Node, r: &NodeRun) -> NodeReport {
        let (status, error) = match &r.status {
            NodeStatus::Waiting => ("not_started".to_string(), None),
            NodeStatus::Running => ("running".to_string(), None),
            NodeStatus::Succeeded => ("succeeded".to_string(), None),
            NodeStatus::Failed(e) => ("failed".to_string(), Some(e.clone())),
            NodeStatus::Cancelled(e) => ("cancelled".to_string(), Some(e.clone())),
        };
        let failed = r
            .chunks
            .iter()
            .filter_map(|c| match &c.state {
                ChunkState::Failed { cause } => Some(FailedChunk {
                    index: c.span.index,
                    rows: [c.span.row_start, c.span.row_start + c.span.row_count],
                    cause: cause.clone(),
                    attempts: c.attempts,
                }),
                _ => None,
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
            attempts: r.chunks.iter().map(|c| c.attempts).max().unwrap_or(0),
            rows: n.rows,
            chunk_size: n.chunk_size,
            chunks: ChunkCounts {
                total: r.chunks.len() as u64,
                done: r.chunks.iter().filter(|c| c.state == ChunkState::Done).count() as u64,
                failed,
            },
            timings: Timings {
                started_ms: r.started.map(|t| self.ms(t)),
                finished_ms: r.finished.map(|t| self.ms(t)),
                wall_ms: r.started.zip(r.finished).map(|(a, b)| (b - a).as_secs_f64() * 1e3),
                engine_ms: r.engine_ms,
                worker_ready_ms: r.ready_ms.clone(),
            },
            control_bytes: ControlBytes {
                total: per_chunk.iter().sum(),
                per_chunk,
            },
            control_round_trip_us: Quantiles::of(&r.round_trip_us),
            warnings: r.warnings.clone(),
            error,
        }
    }
}

impl Drop for Run<'_> {
    /// Last line of defence (a panic in the loop): no worker may outlive the supervisor.
    fn drop(&mut self) {
        for w in &self.workers {
            if !matches!(w.phase, Phase::Gone(_)) {
                pool::signal_group(w.pid, Signal::SIGKILL);
            }
        }
    }
}
