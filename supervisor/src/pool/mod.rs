//! The worker pool: starting worker processes, the handshake, and turning OS facts into events.
//!
//! Theory of operation:
//! - A worker is a child process in **its own process group** (so a stop reaches anything it
//!   started), with `PR_SET_PDEATHSIG` armed by the worker itself so it cannot outlive the
//!   supervisor even if the supervisor is SIGKILLed.
//! - Every blocking wait happens on a small thread that reports to the run loop through one
//!   channel of [`Event`]s: the one-shot handshake `accept`, the child's `wait`, and the reading
//!   of the worker's messages. The run loop alone owns all state; it never polls.
//! - `IpcOneShotServer::accept` blocks forever if the child dies before connecting
//!   (servo/ipc-channel issues 201 and 261). The run loop races it against the child's exit and
//!   a deadline, and when the worker is given up it [`unblock`]s the accept thread by connecting
//!   to the server itself, so no thread is leaked.
//! - Stopping is SIGTERM to the group, a grace period, then SIGKILL; the `wait` thread always
//!   reaps, so no zombie remains.

use crate::config::model::Node;
use ipc_channel::ipc::{IpcOneShotServer, IpcReceiver, IpcSender};
use livecalc_protocol::FromWorker;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fmt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;

/// Index of a worker in the run's worker table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub usize);

/// How a process ended, as the OS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl ProcessEnd {
    pub fn from_status(s: std::process::ExitStatus) -> ProcessEnd {
        match (s.code(), s.signal()) {
            (Some(code), _) => ProcessEnd::Exited(code),
            (None, Some(signal)) => ProcessEnd::Signaled {
                signal,
                core_dumped: s.core_dumped(),
            },
            (None, None) => ProcessEnd::Exited(-1),
        }
    }

    pub fn success(&self) -> bool {
        *self == ProcessEnd::Exited(0)
    }
}

pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

impl fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessEnd::Exited(code) => write!(f, "exited with code {code}"),
            ProcessEnd::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {}", signal_name(*signal))?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// What the helper threads report to the run loop.
#[derive(Debug)]
pub enum Event {
    /// The one-shot server accepted a connection (or failed).
    Handshake {
        worker: WorkerId,
        result: Result<(IpcReceiver<FromWorker>, FromWorker), String>,
    },
    Message {
        worker: WorkerId,
        message: FromWorker,
    },
    /// The worker's side of the channel closed (it exited or dropped it).
    ChannelClosed {
        worker: WorkerId,
    },
    Exited {
        worker: WorkerId,
        end: ProcessEnd,
    },
    /// SIGINT, SIGTERM or SIGHUP delivered to the supervisor.
    Signal(i32),
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("worker binary {path} not found (build it with `cargo build --release`, or set LIVECALC_WORKER_DIR)")]
    Missing { path: PathBuf },
    #[error("cannot start {path}: {source}")]
    Start {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the handshake server: {0}")]
    Server(std::io::Error),
}

/// A started worker process; its threads report through the event channel.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub server_name: String,
}

/// Folder holding the worker binaries: `LIVECALC_WORKER_DIR`, else beside this executable.
pub fn worker_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LIVECALC_WORKER_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Start one worker for `node` and the threads that watch it.
pub fn spawn(
    node: &Node,
    id: WorkerId,
    index: u32,
    spawn_no: u32,
    cwd: &Path,
    events: &Sender<Event>,
) -> Result<Spawned, SpawnError> {
    let path = worker_dir().join(node.kind.worker_binary());
    if !path.is_file() {
        return Err(SpawnError::Missing { path });
    }
    let (server, server_name) =
        IpcOneShotServer::<FromWorker>::new().map_err(SpawnError::Server)?;
    let mut cmd = Command::new(&path);
    cmd.arg("--connect")
        .arg(&server_name)
        .arg("--engine")
        .arg(node.kind.engine_arg())
        .arg("--node")
        .arg(&node.id)
        .arg("--worker")
        .arg(index.to_string())
        .arg("--spawn")
        .arg(spawn_no.to_string())
        .current_dir(cwd)
        .env(
            livecalc_protocol::faults::SUPERVISOR_PID_ENV,
            std::process::id().to_string(),
        )
        // The embedded interpreter must find its own standard library, not one a user's
        // environment points at.
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .process_group(0);
    // A node's `faults` section wins; without one, a LIVECALC_FAULTS set by the user on the
    // supervisor is inherited by every worker.
    if let Some(f) = &node.faults {
        cmd.env(livecalc_protocol::faults::FAULTS_ENV, f.to_string());
    }
    if let Some(mb) = node.memory_limit_mb {
        // cgroup v2 is not available on every host (this one runs cgroup v1 in a container), so
        // the limit is the address-space rlimit, which needs no privileges: allocations beyond
        // it fail, and engines see std::bad_alloc / MemoryError, reported as out of memory.
        let bytes = mb.saturating_mul(1 << 20);
        cmd.env("LIVECALC_MEMORY_LIMIT_MB", mb.to_string());
        // SAFETY: the closure runs in the child between fork and exec and calls only setrlimit,
        // which is async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Start {
        path: path.clone(),
        source,
    })?;
    let pid = child.id();
    let tx = events.clone();
    std::thread::Builder::new()
        .name(format!("accept-{}", id.0))
        .spawn(move || {
            let result = server.accept().map_err(|e| e.to_string());
            let _ = tx.send(Event::Handshake { worker: id, result });
        })
        .map_err(|source| SpawnError::Start {
            path: path.clone(),
            source,
        })?;
    let tx = events.clone();
    std::thread::Builder::new()
        .name(format!("wait-{}", id.0))
        .spawn(move || {
            let end = match child.wait() {
                Ok(status) => ProcessEnd::from_status(status),
                Err(_) => ProcessEnd::Exited(-1),
            };
            let _ = tx.send(Event::Exited { worker: id, end });
        })
        .map_err(|source| SpawnError::Start { path, source })?;
    Ok(Spawned { pid, server_name })
}

/// Forward every message of a connected worker to the run loop.
pub fn read_messages(id: WorkerId, rx: IpcReceiver<FromWorker>, events: Sender<Event>) {
    let _ = std::thread::Builder::new()
        .name(format!("read-{}", id.0))
        .spawn(move || loop {
            match rx.recv() {
                Ok(message) => {
                    if events
                        .send(Event::Message {
                            worker: id,
                            message,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Err(_) => {
                    let _ = events.send(Event::ChannelClosed { worker: id });
                    return;
                }
            }
        });
}

/// Release a thread blocked in `accept` for a worker that will never connect.
pub fn unblock(server_name: &str) {
    if let Ok(tx) = IpcSender::<FromWorker>::connect(server_name.to_string()) {
        let _ = tx.send(FromWorker::Disposed);
    }
}

/// Send a signal to a worker's whole process group.
pub fn signal_group(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}
