//! The engine-independent half of a LiveCalc worker process.
//!
//! `livecalc-worker-cpp` and `livecalc-worker-py` are thin binaries: each implements [`Engine`]
//! for its language and calls [`run`]. Everything else lives here, once:
//!
//! 1. **Tie the process to its supervisor.** `PR_SET_PDEATHSIG` makes the kernel kill the
//!    worker if the supervisor dies, even by SIGKILL, so no worker outlives it.
//! 2. **Handshake.** Connect to the supervisor's one-shot server named on the command line and
//!    send `Hello` (protocol version, pid, `EngineInfo`, runtime) with the sender half of a fresh
//!    command channel.
//! 3. **Serve commands in order**, enforcing the seed's lifecycle
//!    `NotInit -> Initialized -> Running -> Initialized ... -> Disposed`: a call out of order is
//!    answered with a `Lifecycle` error, never passed to the engine.
//! 4. **Build views** over the shared-memory segments ([`views`]) and inject faults on request
//!    ([`faults`]).
//!
//! A closed command channel means the supervisor is gone: the worker disposes and exits.

pub mod faults;
pub mod views;

use faults::{FaultKind, FaultPlan, Phase, Site};
use ipc_channel::ipc::{self, IpcReceiver, IpcSender};
use livecalc_protocol::{
    ChunkSpan, Credentials, EngineError, EngineErrorKind, EngineInfo, EvaluationReport,
    ExecutionResult, FromWorker, Operation, ToWorker, PROTOCOL_VERSION,
};
use std::process::ExitCode;
use views::NodeViews;

pub use livecalc_protocol::faults::SUPERVISOR_PID_ENV;

/// A read-only buffer handed to an engine: the input view.
#[derive(Debug, Clone, Copy)]
pub struct InputBuffer {
    pub ptr: *const u8,
    pub len: usize,
}

/// A writable buffer handed to an engine: this chunk's output view.
#[derive(Debug, Clone, Copy)]
pub struct OutputBuffer {
    pub ptr: *mut u8,
    pub len: usize,
}

/// The way back to the supervisor during `runChunk`, for engines that drive other engines (a
/// solver asking for the projection to be re-evaluated with new parameters).
pub trait Evaluator {
    /// Ask the supervisor to re-run the upstream nodes with `params` (`"<node>.<key>"` -> value)
    /// and wait for it; the engine's input view then holds the new values.
    fn evaluate(&mut self, params: &[(String, f64)]) -> Result<EvaluationReport, String>;
}

/// One engine instance, as a language adapter exposes it to the host.
///
/// Buffers are raw pointers because they alias shared memory that other processes write
/// (other chunks' rows of the same output segment): no Rust reference may claim it exclusively.
pub trait Engine {
    fn info(&self) -> Result<EngineInfo, EngineError>;
    /// Human-readable description of the language runtime, for the handshake and logs.
    fn runtime(&self) -> String;
    fn initialize(
        &mut self,
        config_json: &str,
        credentials: Option<&Credentials>,
    ) -> Result<(), EngineError>;
    fn run_chunk(
        &mut self,
        input: Option<InputBuffer>,
        output: OutputBuffer,
        evaluator: &mut dyn Evaluator,
    ) -> Result<ExecutionResult, EngineError>;
    fn dispose(&mut self);
}

/// The supervisor end of the control channel, lent to the engine while a chunk runs.
struct Link<'a> {
    tx: &'a IpcSender<FromWorker>,
    rx: &'a IpcReceiver<ToWorker>,
    next_request: &'a mut u64,
}

impl Evaluator for Link<'_> {
    fn evaluate(&mut self, params: &[(String, f64)]) -> Result<EvaluationReport, String> {
        *self.next_request += 1;
        let request = *self.next_request;
        self.tx
            .send(FromWorker::Evaluate {
                request,
                params: params.to_vec(),
            })
            .map_err(|e| format!("cannot reach the supervisor: {e}"))?;
        loop {
            match self.rx.recv() {
                Ok(ToWorker::Evaluated {
                    request: r,
                    outcome,
                }) if r == request => return outcome,
                // The answer to an earlier request this engine gave up on.
                Ok(ToWorker::Evaluated { .. }) => continue,
                Ok(ToWorker::Shutdown) | Err(_) => {
                    // The run is being stopped while we wait: nothing left to compute for.
                    std::process::exit(0)
                }
                Ok(other) => {
                    return Err(format!(
                        "unexpected command while waiting for an evaluation: {other:?}"
                    ))
                }
            }
        }
    }
}

/// Command-line contract between the supervisor and a worker binary.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    pub connect: String,
    pub engine: String,
    pub node: String,
    pub worker: u32,
    pub spawn: u32,
}

impl WorkerArgs {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<WorkerArgs, String> {
        let mut connect = None;
        let mut engine = None;
        let mut node = String::from("?");
        let mut worker = 0;
        let mut spawn = 1;
        let mut it = args.into_iter().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--connect" => connect = Some(value()?),
                "--engine" => engine = Some(value()?),
                "--node" => node = value()?,
                "--worker" => worker = value()?.parse().map_err(|_| "--worker: not a number")?,
                "--spawn" => spawn = value()?.parse().map_err(|_| "--spawn: not a number")?,
                other => return Err(format!("unknown argument '{other}'")),
            }
        }
        Ok(WorkerArgs {
            connect: connect
                .ok_or("missing --connect NAME (workers are started by livecalc-supervisor)")?,
            engine: engine.ok_or("missing --engine TYPE")?,
            node,
            worker,
            spawn,
        })
    }
}

/// Where the engine stands in the seed's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    NotInit,
    Initialized,
    Running,
    Disposed,
}

fn lifecycle_error(op: &str, state: Lifecycle) -> EngineError {
    EngineError::new(
        EngineErrorKind::Lifecycle,
        "LifecycleError",
        format!("{op} called while the engine is {state:?}"),
    )
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LIVECALC_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if std::env::var_os("LIVECALC_LOG_JSON").is_some() {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn tie_to_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and has no memory-safety concerns.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    if let Some(expected) = std::env::var(SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != expected {
            // The supervisor died before the death signal was armed.
            std::process::exit(70);
        }
    }
}

/// Run a worker process: `make` creates the engine named by `--engine`.
pub fn run<E: Engine>(make: impl FnOnce(&str) -> Result<E, EngineError>) -> ExitCode {
    init_logging();
    let args = match WorkerArgs::parse(std::env::args()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("livecalc worker: {e}");
            return ExitCode::from(2);
        }
    };
    tie_to_parent();
    let plan = match FaultPlan::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("livecalc worker: {e}");
            return ExitCode::from(2);
        }
    };
    let site = |phase, chunk, attempt| Site {
        phase,
        chunk,
        attempt,
    };
    if let Some(f) = plan.at(site(Phase::Connect, None, args.spawn)) {
        let _ = faults::strike(&f.kind);
    }
    let to_supervisor: IpcSender<FromWorker> = match IpcSender::connect(args.connect.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("livecalc worker: cannot connect to supervisor: {e}");
            return ExitCode::from(70);
        }
    };
    let pid = std::process::id();
    let engine = match make(&args.engine) {
        Ok(e) => e,
        Err(error) => {
            let _ = to_supervisor.send(FromWorker::Refused {
                protocol_version: PROTOCOL_VERSION,
                pid,
                error,
            });
            return ExitCode::from(1);
        }
    };
    let info = match engine.info() {
        Ok(i) => i,
        Err(error) => {
            let _ = to_supervisor.send(FromWorker::Refused {
                protocol_version: PROTOCOL_VERSION,
                pid,
                error,
            });
            return ExitCode::from(1);
        }
    };
    let (commands, from_supervisor) = match ipc::channel::<ToWorker>() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("livecalc worker: cannot create command channel: {e}");
            return ExitCode::from(70);
        }
    };
    let hello = FromWorker::Hello {
        protocol_version: PROTOCOL_VERSION,
        pid,
        engine: info,
        runtime: engine.runtime(),
        commands,
    };
    if to_supervisor.send(hello).is_err() {
        return ExitCode::from(70);
    }
    let mut host = Host {
        engine,
        state: Lifecycle::NotInit,
        views: None,
        plan,
        spawn: args.spawn,
        tx: to_supervisor,
        rx: from_supervisor,
        next_request: 0,
    };
    let span = tracing::info_span!("worker", node = %args.node, worker = args.worker, pid);
    let _enter = span.enter();
    loop {
        let Ok(cmd) = host.rx.recv() else {
            // The supervisor is gone: nothing to report to, nothing to keep.
            host.dispose();
            return ExitCode::from(0);
        };
        let (reply, stop) = host.handle(cmd);
        if let Some(reply) = reply {
            if host.tx.send(reply).is_err() {
                host.dispose();
                return ExitCode::from(0);
            }
        }
        if stop {
            return ExitCode::SUCCESS;
        }
    }
}

struct Host<E> {
    engine: E,
    state: Lifecycle,
    views: Option<NodeViews>,
    plan: FaultPlan,
    spawn: u32,
    tx: IpcSender<FromWorker>,
    rx: IpcReceiver<ToWorker>,
    next_request: u64,
}

impl<E: Engine> Host<E> {
    fn handle(&mut self, cmd: ToWorker) -> (Option<FromWorker>, bool) {
        let failed = |op, error| Some(FromWorker::Failed { op, error });
        match cmd {
            ToWorker::Initialize {
                config_json,
                credentials,
            } => {
                if let Some(f) = self.plan.at(Site {
                    phase: Phase::Initialize,
                    chunk: None,
                    attempt: self.spawn,
                }) {
                    if let Some(e) = faults::strike(&f.kind) {
                        return (failed(Operation::Initialize, e), false);
                    }
                }
                if !matches!(self.state, Lifecycle::NotInit | Lifecycle::Disposed) {
                    return (
                        failed(
                            Operation::Initialize,
                            lifecycle_error("initialize", self.state),
                        ),
                        false,
                    );
                }
                match self.engine.initialize(&config_json, credentials.as_ref()) {
                    Ok(()) => {
                        self.state = Lifecycle::Initialized;
                        (Some(FromWorker::Initialized), false)
                    }
                    Err(e) => (failed(Operation::Initialize, e), false),
                }
            }
            ToWorker::Attach { inputs, outputs } => {
                // Drop the old mappings first: a re-attach may name new segments.
                self.views = None;
                match NodeViews::attach(&inputs, &outputs) {
                    Ok(v) => {
                        self.views = Some(v);
                        (Some(FromWorker::Attached), false)
                    }
                    Err(e) => (failed(Operation::Attach, e), false),
                }
            }
            ToWorker::RunChunk { chunk, attempt } => {
                let op = Operation::RunChunk { index: chunk.index };
                match self.run_chunk(chunk, attempt) {
                    Ok(result) => (
                        Some(FromWorker::ChunkDone {
                            index: chunk.index,
                            result,
                        }),
                        false,
                    ),
                    Err(e) => (failed(op, e), false),
                }
            }
            ToWorker::Dispose => {
                self.dispose();
                (Some(FromWorker::Disposed), false)
            }
            ToWorker::Shutdown => {
                self.dispose();
                (None, true)
            }
            ToWorker::Evaluated { request, .. } => {
                // A late answer to an evaluation this worker stopped waiting for.
                tracing::warn!(request, "evaluation answer with no evaluation pending");
                (None, false)
            }
        }
    }

    fn run_chunk(
        &mut self,
        chunk: ChunkSpan,
        attempt: u32,
    ) -> Result<ExecutionResult, EngineError> {
        if self.state != Lifecycle::Initialized {
            return Err(lifecycle_error("runChunk", self.state));
        }
        let Some(views) = self.views.as_mut() else {
            return Err(EngineError::new(
                EngineErrorKind::Lifecycle,
                "LifecycleError",
                "runChunk called before the node's segments were attached",
            ));
        };
        views.inputs.point_at(chunk)?;
        views.outputs.point_at(chunk)?;
        let here = |phase| Site {
            phase,
            chunk: Some(chunk.index),
            attempt,
        };
        let garbage = |views: &NodeViews| {
            for (start, len) in views.outputs.chunk_regions(chunk) {
                // SAFETY: the region is this chunk's own rows or slot inside the writable output
                // arena; no other worker writes it while this chunk is assigned here.
                unsafe { std::ptr::write_bytes(views.outputs.as_ptr().add(start), 0xA5, len) };
            }
        };
        if let Some(f) = self.plan.at(here(Phase::BeforeChunk)) {
            if let Some(e) = faults::strike(&f.kind) {
                return Err(e);
            }
            if f.kind == FaultKind::Garbage {
                // A worker dying half-way through writing: garbage in the region, no report.
                garbage(views);
                die_mid_write();
            }
        }
        let input = (!views.inputs.is_empty()).then(|| InputBuffer {
            ptr: views.inputs.as_ptr(),
            len: views.inputs.len(),
        });
        let output = OutputBuffer {
            ptr: views.outputs.as_ptr(),
            len: views.outputs.len(),
        };
        self.state = Lifecycle::Running;
        let mut link = Link {
            tx: &self.tx,
            rx: &self.rx,
            next_request: &mut self.next_request,
        };
        let result = self.engine.run_chunk(input, output, &mut link);
        self.state = Lifecycle::Initialized;
        let result = result?;
        if !result.success {
            return Err(EngineError::new(
                EngineErrorKind::Execution,
                "ExecutionResult",
                if result.error_message.is_empty() {
                    "runChunk returned success = false".to_string()
                } else {
                    result.error_message
                },
            ));
        }
        if let Some(f) = self.plan.at(here(Phase::AfterChunk)) {
            if let Some(e) = faults::strike(&f.kind) {
                return Err(e);
            }
            if f.kind == FaultKind::Garbage {
                garbage(views);
                die_mid_write();
            }
        }
        Ok(result)
    }

    fn dispose(&mut self) {
        if matches!(self.state, Lifecycle::Initialized | Lifecycle::Running) {
            self.engine.dispose();
        }
        self.state = Lifecycle::Disposed;
        self.views = None;
    }
}

/// End the process the way a crash in the middle of writing output would.
fn die_mid_write() -> ! {
    // SAFETY: raising a signal has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine side of the evaluate loop: a request goes out, a stale answer to an earlier
    /// request is skipped, the matching answer comes back; a failure comes back as an error.
    #[test]
    fn evaluate_waits_for_its_own_answer() {
        let (to_sup, from_worker) = ipc::channel::<FromWorker>().unwrap();
        let (to_worker, from_sup) = ipc::channel::<ToWorker>().unwrap();
        let supervisor = std::thread::spawn(move || {
            for (n, outcome) in [
                Ok(EvaluationReport {
                    nodes: vec!["projection".into()],
                    elapsed_ms: 1.5,
                }),
                Err("chunk 3 failed".to_string()),
            ]
            .into_iter()
            .enumerate()
            {
                let Ok(FromWorker::Evaluate { request, params }) = from_worker.recv() else {
                    panic!("expected Evaluate");
                };
                assert_eq!(request, n as u64 + 1);
                assert_eq!(
                    params,
                    vec![("projection.multipliers.premium".to_string(), 1.25)]
                );
                to_worker
                    .send(ToWorker::Evaluated {
                        request: 999,
                        outcome: Err("stale".into()),
                    })
                    .unwrap();
                to_worker
                    .send(ToWorker::Evaluated { request, outcome })
                    .unwrap();
            }
        });
        let mut next = 0;
        let mut link = Link {
            tx: &to_sup,
            rx: &from_sup,
            next_request: &mut next,
        };
        let params = vec![("projection.multipliers.premium".to_string(), 1.25)];
        let report = link.evaluate(&params).unwrap();
        assert_eq!(report.nodes, vec!["projection".to_string()]);
        assert_eq!(link.evaluate(&params).unwrap_err(), "chunk 3 failed");
        supervisor.join().unwrap();
    }

    #[test]
    fn worker_arguments_are_checked() {
        let args = |v: &[&str]| WorkerArgs::parse(v.iter().map(|s| s.to_string()));
        let ok = args(&[
            "w",
            "--connect",
            "srv",
            "--engine",
            "cpp:x",
            "--node",
            "n",
            "--worker",
            "2",
            "--spawn",
            "3",
        ])
        .unwrap();
        assert_eq!((ok.worker, ok.spawn, ok.node.as_str()), (2, 3, "n"));
        assert!(args(&["w", "--engine", "x"])
            .unwrap_err()
            .contains("--connect"));
        assert!(args(&["w", "--connect", "s", "--engine", "x", "--bogus"])
            .unwrap_err()
            .contains("--bogus"));
    }
}
