//! `manifest.json`: what a run did, for people and for machines.
//!
//! Written last, atomically (temporary file + rename), whatever the run's outcome, so a
//! `manifest.json` in an output folder always describes the files beside it.

use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Succeeded,
    Partial,
    Failed,
}

impl RunStatus {
    pub fn exit_code(self) -> u8 {
        match self {
            RunStatus::Succeeded => 0,
            RunStatus::Failed => 1,
            RunStatus::Partial => 3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedChunk {
    pub index: u64,
    /// `[first_row, end_row)` along the node's chunk axis.
    pub rows: [u64; 2],
    /// Stable label of the last failure (`signal`, `timeout`, `execution_error`, ...).
    pub cause: String,
    pub message: String,
    pub attempts: u32,
}

/// A chunk that succeeded after more than one attempt.
#[derive(Debug, Clone, Serialize)]
pub struct RetriedChunk {
    pub index: u64,
    pub attempts: u32,
    pub causes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ChunkCounts {
    pub total: u64,
    pub done: u64,
    /// Chunks restored from the journal of an interrupted run (`--resume`), not recomputed.
    pub resumed: u64,
    pub failed: Vec<FailedChunk>,
    pub retried: Vec<RetriedChunk>,
}

/// One worker failure and its replacement.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// Stable label: `signal`, `exit`, `timeout`, `execution_error`, `out_of_memory`, ...
    pub cause: String,
    pub message: String,
    pub chunk: Option<u64>,
    /// When the supervisor learned of the failure (Unix epoch, milliseconds).
    pub detected_unix_ms: f64,
    /// When the replacement worker was initialized and attached, ready for a chunk.
    pub ready_unix_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Timings {
    /// Milliseconds from the run's start.
    pub started_ms: Option<f64>,
    pub finished_ms: Option<f64>,
    pub wall_ms: Option<f64>,
    /// Sum of the engine's own `execution_time_ms` over chunks.
    pub engine_ms: f64,
    /// Spawn to `Initialized`, per worker, milliseconds.
    pub worker_ready_ms: Vec<f64>,
    /// `Attach` sent to `Attached` received, per worker: mapping every segment of the node.
    pub attach_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ControlBytes {
    /// Bytes of control messages (both directions) per chunk, by chunk index.
    pub per_chunk: Vec<u64>,
    pub total: u64,
}

/// Median, 99th percentile and maximum of a sample (nearest-rank).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Quantiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(sample: &[f64]) -> Quantiles {
        if sample.is_empty() {
            return Quantiles::default();
        }
        let mut v = sample.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Quantiles {
            count: v.len(),
            p50: rank(0.5),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub status: String,
    pub engine: Option<livecalc_protocol::EngineInfo>,
    pub runtime: Option<String>,
    pub workers: u32,
    pub worker_starts: u32,
    pub restarts: u32,
    pub attempts: u32,
    pub rows: u64,
    pub chunk_size: u64,
    pub chunks: ChunkCounts,
    pub timings: Timings,
    pub control_bytes: ControlBytes,
    /// Dispatch-to-completion time of a chunk minus the engine's own time, microseconds.
    pub control_round_trip_us: Quantiles,
    pub recoveries: Vec<Recovery>,
    /// Times the node was re-run for a solver on its warm workers.
    pub evaluations: u32,
    /// The engine's own report (e.g. a solver's result and history), if it returned one.
    pub report: Option<serde_json::Value>,
    /// Partial upstream nodes it consumed (`accept_partial_inputs`); the node is then partial.
    pub partial_inputs: Vec<String>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub node: String,
    pub output: String,
    pub path: String,
    pub rows: u64,
    pub columns: Vec<String>,
    pub bytes: u64,
    pub sha256: String,
    /// False when chunks of the node failed (a `partial` node).
    pub complete: bool,
    /// Rows of the node's chunk axis this output covers.
    pub covers_rows: u64,
    /// `[start, end)` row ranges of failed chunks, absent from the output.
    pub missing_rows: Vec<[u64; 2]>,
    /// Partial upstream nodes this output was computed from (their missing rows read as zeros).
    pub derived_from_partial: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub livecalc_version: &'static str,
    pub run_id: String,
    pub status: RunStatus,
    /// True when this run continued an interrupted one (`--resume`).
    pub resumed: bool,
    pub dag: String,
    pub dag_sha256: String,
    pub started_at: String,
    pub finished_at: String,
    pub wall_ms: f64,
    pub nodes: Vec<NodeReport>,
    pub outputs: Vec<OutputReport>,
    pub errors: Vec<String>,
}

impl Manifest {
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&dir.join("manifest.json"), text.as_bytes())
    }
}

pub fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dest)
}

/// RFC 3339 UTC timestamp, without pulling in a date crate.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's published algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z, a leap day.
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }
}
