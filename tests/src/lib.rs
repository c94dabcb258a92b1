//! Helpers for LiveCalc's end-to-end tests: they start the real `livecalc-supervisor` binary,
//! which starts real worker processes over real shared memory.
//!
//! Every helper that runs the supervisor also checks, once it has exited, that nothing it
//! started is left behind: no process carrying its pid in `LIVECALC_SUPERVISOR_PID`, and no
//! segment named after it in `/dev/shm`.

use arrow_array::{Array, ArrayRef, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/`, where cargo puts the workspace binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn examples() -> PathBuf {
    workspace().join("examples")
}

pub fn supervisor() -> Command {
    let path = bin_dir().join("livecalc-supervisor");
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (cargo build --release)",
        path.display()
    );
    let mut c = Command::new(path);
    c.env("LIVECALC_LOG", "warn");
    c
}

/// A fresh, empty temporary folder removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("livecalc-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Outcome of one supervisor invocation, with its leftovers already checked.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub pid: u32,
}

impl Finished {
    pub fn manifest(&self, out: &Path) -> Value {
        let text = std::fs::read_to_string(out.join("manifest.json")).unwrap_or_else(|e| {
            panic!(
                "no manifest in {}: {e}\nstderr:\n{}",
                out.display(),
                self.stderr
            )
        });
        serde_json::from_str(&text).expect("manifest is JSON")
    }
}

/// Run the supervisor with `args` to completion (bounded by `limit`).
pub fn run_supervisor(args: &[&str], limit: Duration) -> Finished {
    let child = supervisor()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start supervisor");
    wait_supervisor(child, limit)
}

/// Wait for a started supervisor, kill it past `limit`, then check it left nothing behind.
pub fn wait_supervisor(child: Child, limit: Duration) -> Finished {
    let pid = child.id();
    let deadline = Instant::now() + limit;
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = waiter.join();
            panic!("supervisor pid {pid} still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out: Output = waiter.join().expect("waiter").expect("wait");
    let f = Finished {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    };
    assert_nothing_left(pid);
    f
}

/// Processes started by the supervisor `pid` that are still alive.
pub fn workers_of(pid: u32) -> Vec<u32> {
    let needle = format!("LIVECALC_SUPERVISOR_PID={pid}");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{p}/environ")) {
            if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
                // A zombie has an empty environ; anything readable is alive.
                out.push(p);
            }
        }
    }
    out
}

/// `/dev/shm` segments named after supervisor `pid`.
pub fn segments_of(pid: u32) -> Vec<String> {
    let prefix = format!("livecalc.{pid}.");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Panic unless every worker of `pid` has exited and every segment is gone. Worker exit after a
/// supervisor SIGKILL is asynchronous (the kernel's parent-death signal), so allow 5 s.
pub fn assert_nothing_left(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let w = workers_of(pid);
        if w.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers of supervisor {pid} still alive: {w:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = segments_of(pid);
    assert!(
        s.is_empty(),
        "segments of supervisor {pid} left in /dev/shm: {s:?}"
    );
}

/// All columns of a Parquet file, concatenated over its row groups.
pub fn read_parquet(path: &Path) -> BTreeMap<String, ArrayRef> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader");
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    let mut out = BTreeMap::new();
    if let Some(first) = batches.first() {
        for (i, field) in first.schema().fields().iter().enumerate() {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            out.insert(
                field.name().clone(),
                arrow_select::concat::concat(&parts).expect("concat"),
            );
        }
    }
    out
}

pub fn f64_column(cols: &BTreeMap<String, ArrayRef>, name: &str) -> Vec<f64> {
    use arrow_array::cast::AsArray;
    cols.get(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_primitive::<arrow_array::types::Float64Type>()
        .values()
        .to_vec()
}

pub fn i64_column(cols: &BTreeMap<String, ArrayRef>, name: &str) -> Vec<i64> {
    use arrow_array::cast::AsArray;
    cols.get(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_primitive::<arrow_array::types::Int64Type>()
        .values()
        .to_vec()
}

/// Write a DAG (JSON value) to `dir/dag.json` and return its path.
pub fn write_dag(dir: &Path, dag: &Value) -> PathBuf {
    let p = dir.join("dag.json");
    std::fs::write(&p, serde_json::to_string_pretty(dag).expect("json")).expect("write dag");
    p
}

/// SHA-256 hex of a file.
pub fn file_sha(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Resilience helpers: fault matrices, long runs, misbehaving user engines, process inspection.
// ---------------------------------------------------------------------------------------------

/// The hello example DAG (`rate`: Python, `gross`: C++; 1000 rows in 8 chunks of 128) as JSON,
/// its data path made absolute so the DAG can be written to any folder.
pub fn hello_dag() -> Value {
    let text =
        std::fs::read_to_string(examples().join("dag_config_hello.json")).expect("hello DAG");
    let mut v: Value = serde_json::from_str(&text).expect("hello DAG is JSON");
    v["data_sources"]["policies"]["path"] = Value::from(
        examples()
            .join("data/hello_policies.csv")
            .to_str()
            .expect("utf-8 path"),
    );
    v
}

/// A book of `rows` policies in the hello CSV layout (deterministic content).
pub fn write_book(path: &Path, rows: u64) {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(rows as usize * 24 + 32);
    s.push_str("policy_id,age,sum_assured\n");
    for i in 1..=rows {
        let _ = writeln!(s, "{i},{},{}", 20 + i % 50, 1000 * (i % 997 + 1));
    }
    std::fs::write(path, s).expect("write book");
}

/// The hello pipeline over a generated book of `rows` policies in chunks of `chunk` rows: a long
/// run through both languages. The book is written to `dir/book.csv`.
pub fn long_hello_dag(dir: &Path, rows: u64, chunk: u64) -> Value {
    write_book(&dir.join("book.csv"), rows);
    let mut v = hello_dag();
    v["data_sources"]["policies"]["path"] = Value::from("book.csv");
    for e in v["engines"].as_array_mut().expect("engines") {
        e["chunk_size"] = Value::from(chunk);
    }
    v
}

/// Number of open file descriptors of a process.
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Number of threads of a process.
pub fn threads_of(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .map(|d| d.count())
}

/// The node a worker process serves (`--node ID` on its command line).
pub fn worker_node(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    let at = args.iter().position(|a| *a == b"--node")?;
    args.get(at + 1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
}

/// Live workers of supervisor `pid` serving `node`.
pub fn workers_of_node(pid: u32, node: &str) -> Vec<u32> {
    workers_of(pid)
        .into_iter()
        .filter(|&w| worker_node(w).as_deref() == Some(node))
        .collect()
}

/// Completed chunks of `node` persisted in the run journal of output folder `out`.
pub fn journaled_chunks(out: &Path, node: &str) -> usize {
    // Complete records of `.livecalc/<node>.journal` (magic, index, length, hash, payload); a
    // record still being written does not count.
    let Ok(bytes) = std::fs::read(out.join(".livecalc").join(format!("{node}.journal"))) else {
        return 0;
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut at = 0usize;
    while bytes.len() >= at + 28 {
        let word = |o: usize| u64::from_le_bytes(bytes[at + o..at + o + 8].try_into().unwrap());
        if u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) != 0x4C43_4A31 {
            break;
        }
        let (index, len) = (word(4), word(12) as usize);
        if bytes.len() < at + 28 + len {
            break;
        }
        seen.insert(index);
        at += 28 + len;
    }
    seen.len()
}

/// Poll `cond` every 2 ms until it holds; panic with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Wall clock, milliseconds since the Unix epoch (the unit of the manifest's `*_unix_ms`).
pub fn now_unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1e3
}

/// The worker hosts' deterministic fault draw for (seed, chunk, attempt), uniform in [0, 1): a
/// fault with `probability` p fires at a chunk's attempt exactly when the draw is below p. This
/// re-implements the documented "deterministic draw per chunk and attempt" (splitmix64 in
/// `worker-host/src/faults.rs`) so that tests can predict which chunks of a seeded run fail.
pub fn fault_draw(seed: u64, chunk: u64, attempt: u32) -> f64 {
    let mut z = seed
        ^ chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (attempt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Nearest-rank quantile of a sample (`q` in (0, 1]).
pub fn quantile(sample: &[f64], q: f64) -> f64 {
    assert!(!sample.is_empty(), "quantile of an empty sample");
    let mut v = sample.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Fault kinds of the resilience matrix.
pub fn matrix_kinds() -> [&'static str; 7] {
    [
        "segfault",
        "abort",
        "exit",
        "hang",
        "grow_memory",
        "garbage",
        "error",
    ]
}

/// Phases of the resilience matrix.
pub fn matrix_phases() -> [&'static str; 3] {
    ["initialize", "before_chunk", "after_chunk"]
}

/// The chunk the matrix's chunk-phase faults strike (rows 640..768 of the hello book).
pub fn matrix_chunk() -> u64 {
    5
}

/// The fault of one matrix case. Chunk phases strike chunk [`MATRIX_CHUNK`]; the initialize
/// phase strikes worker starts (its `attempt` is the node's spawn number). `persistent` faults
/// fire on every attempt, the others only on the first.
pub fn matrix_fault(kind: &str, phase: &str, persistent: bool) -> Value {
    let mut f = serde_json::json!({"kind": kind, "phase": phase});
    match kind {
        "exit" => f["code"] = Value::from(7),
        // Never unbounded: the fault's own cap is above the node's memory_limit_mb, so the OS
        // limit is what stops it.
        "grow_memory" => f["limit_mb"] = Value::from(1024),
        _ => {}
    }
    if phase != "initialize" {
        f["chunk"] = Value::from(matrix_chunk());
    }
    if !persistent {
        f["attempt"] = Value::from(1);
    }
    f
}

/// The hello DAG set up for one matrix case: the fault on engine `engine` (0 = Python `rate`,
/// 1 = C++ `gross`), which runs with one worker so the sequence of failures is deterministic;
/// 3 attempts per chunk, 1 ms backoff, at most 3 restarts, `on_failure: partial` everywhere.
pub fn matrix_dag(kind: &str, engine: usize, phase: &str, persistent: bool) -> Value {
    let mut v = hello_dag();
    for e in v["engines"].as_array_mut().expect("engines") {
        e["retry"] =
            serde_json::json!({"max_attempts": 3, "initial_delay_ms": 1, "max_delay_ms": 5});
        e["restart_limit"] = serde_json::json!({"max_restarts": 3, "window_s": 60});
        e["on_failure"] = Value::from("partial");
    }
    let e = &mut v["engines"][engine];
    e["workers"] = Value::from(1);
    e["faults"] = Value::Array(vec![matrix_fault(kind, phase, persistent)]);
    if kind == "hang" {
        e["timeout_s"] = Value::from(1);
        e["startup_timeout_s"] = Value::from(1.5);
    }
    if kind == "grow_memory" {
        e["memory_limit_mb"] = Value::from(384);
    }
    v
}

/// The manifest's cause label a matrix fault produces, or `None` where the fault does nothing
/// (`garbage` in the initialize phase: there is no output region to fill yet).
pub fn matrix_cause(kind: &str, phase: &str) -> Option<&'static str> {
    Some(match (kind, phase) {
        ("garbage", "initialize") => return None,
        ("hang", "initialize") => "startup_timeout",
        ("hang", _) => "timeout",
        ("segfault" | "abort" | "garbage", _) => "signal",
        ("exit", _) => "exit",
        ("grow_memory", _) => "out_of_memory",
        ("error", _) => "execution_error",
        _ => panic!("no such matrix case: {kind} / {phase}"),
    })
}

/// A fragment of the failure message a matrix fault produces.
pub fn matrix_message(kind: &str, phase: &str) -> &'static str {
    match (kind, phase) {
        ("hang", "initialize") => "did not start within 1.5 s (startup_timeout_s)",
        ("hang", _) => "timed out after 1.0 s (timeout_s)",
        ("segfault" | "garbage", _) => "killed by SIGSEGV",
        ("abort", _) => "killed by SIGABRT",
        ("exit", _) => "exited with code 7",
        ("grow_memory", _) => "OutOfMemory",
        ("error", _) => "InjectedFault",
        _ => "",
    }
}

/// Write `rogue.py` into `dir` (the DAG's folder, which workers import from): a user Python
/// engine, `python:rogue:Rogue`, that is the hello rater plus misbehaviour chosen by its config key `mode` or by environment variables (which workers inherit from the supervisor, so
/// a test can change its behaviour between runs without changing the DAG's bytes):
///
/// - `mode: "previous_row"`: after writing its own rows, overwrite the last `premium` of the
///   previous chunk (a completed neighbour when run with one worker);
/// - `mode: "past_view"`: on chunk 5, write one byte just past the end of its output view;
///   with `once_marker: FILE` only while FILE does not exist yet (it is created first);
/// - `mode: "scribble_running"`: on chunk 0, keep overwriting the first `premium` of chunk 1
///   for `spin_s` seconds (while another worker computes chunk 1), then finish normally;
/// - `ROGUE_HANG_CHUNK=k`: hang on chunk k; `ROGUE_FAIL_CHUNK=k`: raise ExecutionError on it;
///   `ROGUE_DELAY_MS=d`: sleep d ms in every chunk.
pub fn write_rogue_engine(dir: &Path) {
    const ROGUE_PY: &str = r#"
import ctypes
import os
import time

import numpy as np

from livecalc import ExecutionError, outputs
from livecalc.engines.hello import HelloEngine

PATTERN = 0xA5


class Rogue(HelloEngine):
    def initialize(self, config, credentials=None):
        cfg = dict(config)
        self._mode = cfg.pop("mode", "none")
        self._marker = cfg.pop("once_marker", None)
        self._spin_s = float(cfg.pop("spin_s", 3.0))
        super().initialize(cfg, credentials)

    def _env_chunk(self, name):
        v = os.environ.get(name, "")
        return int(v) if v.strip() else None

    def runChunk(self, input_buffer, output_buffer):
        dst = outputs(output_buffer)
        c = dst.chunk
        delay = os.environ.get("ROGUE_DELAY_MS", "")
        if delay:
            time.sleep(float(delay) / 1e3)
        if self._env_chunk("ROGUE_HANG_CHUNK") == c.index:
            while True:
                time.sleep(3600)
        if self._env_chunk("ROGUE_FAIL_CHUNK") == c.index:
            raise ExecutionError(f"rogue: chunk {c.index} is marked to fail")
        result = super().runChunk(input_buffer, output_buffer)
        premium = dst["priced.premium"]
        if self._mode == "previous_row" and c.index > 0:
            ctypes.memset(premium.ctypes.data - 8, PATTERN, 8)
        elif self._mode == "past_view" and c.index == 5:
            if self._marker is None or not os.path.exists(self._marker):
                if self._marker is not None:
                    open(self._marker, "w").close()
                view = np.frombuffer(output_buffer, dtype=np.uint8)
                ctypes.memset(view.ctypes.data + view.nbytes, PATTERN, 1)
        elif self._mode == "scribble_running" and c.index == 0:
            victim = premium.ctypes.data + c.row_count * 8
            end = time.monotonic() + self._spin_s
            while time.monotonic() < end:
                ctypes.memset(victim, PATTERN, 8)
                time.sleep(0.0002)
        return result
"#;
    std::fs::write(dir.join("rogue.py"), ROGUE_PY).expect("write rogue.py");
}

/// Start `livecalc-supervisor run DAG --out OUT [extra..]` with extra environment, not waiting.
pub fn start_run(dag: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = supervisor();
    c.args([
        "run",
        dag.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ])
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("start supervisor")
}

/// Send `sig` to process `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).is_ok()
}

/// SHA-256 of every output file a manifest lists, by path.
pub fn output_shas(out: &Path, manifest: &Value) -> BTreeMap<String, String> {
    manifest["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| {
            let p = o["path"].as_str().expect("path").to_string();
            let sha = file_sha(&out.join(&p));
            assert_eq!(
                o["sha256"].as_str(),
                Some(sha.as_str()),
                "manifest checksum of {p}"
            );
            (p, sha)
        })
        .collect()
}

/// A short description of the machine, for benchmark reports.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{} ({cpu}, {cores} cores available, {:.1} GiB RAM, Linux {})",
        host.trim(),
        mem_kb as f64 / (1024.0 * 1024.0),
        kernel.trim()
    )
}
