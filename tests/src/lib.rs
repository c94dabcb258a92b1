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
        let p = std::env::temp_dir().join(format!(
            "livecalc-test-{tag}-{}-{n}",
            std::process::id()
        ));
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
            panic!("no manifest in {}: {e}\nstderr:\n{}", out.display(), self.stderr)
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
            if env
                .split(|&b| b == 0)
                .any(|kv| kv == needle.as_bytes())
            {
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
    assert!(s.is_empty(), "segments of supervisor {pid} left in /dev/shm: {s:?}");
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
