//! The fault-injection plan: the contract between a DAG's `faults` section, the
//! `LIVECALC_FAULTS` environment variable and the worker hosts that carry faults out.
//!
//! Fault injection is built into every worker host so that it works for every engine.
//! The supervisor passes a node's `faults` list (from the DAG) to its workers in the environment
//! variable [`FAULTS_ENV`], as JSON; a user may also set it by hand. Each fault names what to do
//! and where: a phase (`connect`, `initialize`, `before_chunk`, `after_chunk`), and optionally a
//! chunk index, an attempt number and a probability with a seed. Faults are real: a segfault is a
//! SIGSEGV, a hang is a process that stops answering, a memory fault allocates until a limit.
//!
//! ```json
//! [{"kind": "segfault", "phase": "before_chunk", "chunk": 2, "attempt": 1}]
//! ```

use serde_json::Value;

/// Environment variable carrying a worker's fault plan (JSON).
pub const FAULTS_ENV: &str = "LIVECALC_FAULTS";
/// Exit code of a Python worker whose engine kept a numpy view of shared memory after
/// `runChunk`: it exits rather than let that view dangle (see the supervisor's messages).
pub const EXIT_KEPT_VIEW: i32 = 86;

/// Environment variable naming the supervisor's pid, checked by a worker against `getppid()`.
pub const SUPERVISOR_PID_ENV: &str = "LIVECALC_SUPERVISOR_PID";

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    Segfault,
    Abort,
    Exit(i32),
    Hang,
    /// Allocate and touch memory in 16 MiB steps until the OS stops the process, or until
    /// `limit_mb` is reached (then abort): never unbounded.
    GrowMemory {
        limit_mb: u64,
    },
    /// Overwrite the chunk's output region with a garbage pattern and report success.
    Garbage,
    /// Never connect to the supervisor (only meaningful in the `connect` phase).
    NeverConnect,
    /// Raise an execution error from the host, as an engine would.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Initialize,
    BeforeChunk,
    AfterChunk,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub phase: Phase,
    pub chunk: Option<u64>,
    pub attempt: Option<u32>,
    pub probability: Option<f64>,
    pub seed: u64,
}

/// Where the worker is now, matched against each fault.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    pub phase: Phase,
    pub chunk: Option<u64>,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    faults: Vec<Fault>,
}

impl FaultPlan {
    pub fn from_env() -> Result<FaultPlan, String> {
        match std::env::var(FAULTS_ENV) {
            Ok(text) if !text.trim().is_empty() => FaultPlan::parse(&text),
            _ => Ok(FaultPlan::default()),
        }
    }

    pub fn parse(text: &str) -> Result<FaultPlan, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("{FAULTS_ENV} is not JSON: {e}"))?;
        FaultPlan::from_value(&v).map_err(|e| format!("{FAULTS_ENV}{e}"))
    }

    /// Parse a JSON list of faults; errors start with the failing element's index (`[2]: ...`).
    pub fn from_value(v: &Value) -> Result<FaultPlan, String> {
        let list = v.as_array().ok_or(": must be a JSON array of faults")?;
        let faults = list
            .iter()
            .enumerate()
            .map(|(i, f)| parse_fault(f).map_err(|e| format!("[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(FaultPlan { faults })
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// The first fault that fires at this site, if any.
    pub fn at(&self, site: Site) -> Option<&Fault> {
        self.faults.iter().find(|f| {
            f.phase == site.phase
                && f.chunk.is_none_or(|c| Some(c) == site.chunk)
                && f.attempt.is_none_or(|a| a == site.attempt)
                && f.probability.is_none_or(|p| {
                    uniform(f.seed, site.chunk.unwrap_or(u64::MAX), site.attempt) < p
                })
        })
    }
}

/// A deterministic uniform in [0, 1) from (seed, chunk, attempt): splitmix64.
fn uniform(seed: u64, chunk: u64, attempt: u32) -> f64 {
    let mut z = seed
        ^ chunk.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (attempt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn parse_fault(v: &Value) -> Result<Fault, String> {
    let obj = v.as_object().ok_or("a fault must be an object")?;
    for key in obj.keys() {
        if ![
            "kind",
            "phase",
            "chunk",
            "attempt",
            "probability",
            "seed",
            "code",
            "limit_mb",
        ]
        .contains(&key.as_str())
        {
            return Err(format!("unknown key '{key}'"));
        }
    }
    let kind_name = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("missing string 'kind'")?;
    let kind = match kind_name {
        "segfault" => FaultKind::Segfault,
        "abort" => FaultKind::Abort,
        "exit" => FaultKind::Exit(obj.get("code").and_then(Value::as_i64).unwrap_or(3) as i32),
        "hang" => FaultKind::Hang,
        "grow_memory" => FaultKind::GrowMemory {
            limit_mb: obj.get("limit_mb").and_then(Value::as_u64).unwrap_or(1024),
        },
        "garbage" => FaultKind::Garbage,
        "never_connect" => FaultKind::NeverConnect,
        "error" => FaultKind::Error,
        other => return Err(format!("unknown fault kind '{other}'")),
    };
    let phase = match obj.get("phase").and_then(Value::as_str) {
        None if kind == FaultKind::NeverConnect => Phase::Connect,
        None | Some("before_chunk") => Phase::BeforeChunk,
        Some("connect") => Phase::Connect,
        Some("initialize") => Phase::Initialize,
        Some("after_chunk") => Phase::AfterChunk,
        Some(other) => return Err(format!("unknown phase '{other}'")),
    };
    let probability = obj.get("probability").and_then(Value::as_f64);
    if probability.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err("'probability' must lie in [0, 1]".into());
    }
    Ok(Fault {
        kind,
        phase,
        chunk: obj.get("chunk").and_then(Value::as_u64),
        attempt: obj.get("attempt").and_then(Value::as_u64).map(|a| a as u32),
        probability,
        seed: obj.get("seed").and_then(Value::as_u64).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_phase_chunk_and_attempt() {
        let plan = FaultPlan::parse(
            r#"[{"kind":"segfault","phase":"before_chunk","chunk":2,"attempt":1},
                {"kind":"exit","code":7,"phase":"initialize"}]"#,
        )
        .unwrap();
        let at = |phase, chunk, attempt| {
            plan.at(Site {
                phase,
                chunk,
                attempt,
            })
        };
        assert_eq!(
            at(Phase::BeforeChunk, Some(2), 1).unwrap().kind,
            FaultKind::Segfault
        );
        assert!(at(Phase::BeforeChunk, Some(2), 2).is_none());
        assert!(at(Phase::BeforeChunk, Some(1), 1).is_none());
        assert_eq!(
            at(Phase::Initialize, None, 4).unwrap().kind,
            FaultKind::Exit(7)
        );
    }

    #[test]
    fn probability_is_deterministic_and_roughly_right() {
        let plan = FaultPlan::parse(r#"[{"kind":"abort","probability":0.25,"seed":9}]"#).unwrap();
        let fired = (0..4000)
            .filter(|&c| {
                plan.at(Site {
                    phase: Phase::BeforeChunk,
                    chunk: Some(c),
                    attempt: 1,
                })
                .is_some()
            })
            .count();
        assert!((800..1200).contains(&fired), "fired {fired} of 4000");
    }

    #[test]
    fn rejects_unknown_keys_and_kinds() {
        assert!(FaultPlan::parse(r#"[{"kind":"segfault","chunck":1}]"#)
            .unwrap_err()
            .contains("unknown key 'chunck'"));
        assert!(FaultPlan::parse(r#"[{"kind":"melt"}]"#)
            .unwrap_err()
            .contains("unknown fault kind"));
    }
}
