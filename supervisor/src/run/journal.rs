//! The run journal: completed chunks persisted as the run goes, so that `run --resume DIR`
//! continues a run whose supervisor died (even by SIGKILL) and recomputes only what is missing.
//!
//! Layout, inside the output folder:
//!
//! ```text
//! DIR/.livecalc/run.json        {"dag_sha256", "inputs_sha256", "nodes": {"id": {"rows", "chunk_size"}}}
//! DIR/.livecalc/<node>.journal  append-only records, one per completed chunk
//! ```
//!
//! A record is `magic u32 | chunk index u64 | payload length u64 | payload hash u64 | payload`,
//! the payload being the chunk's output regions concatenated in output and column order. One
//! `write` per chunk, no file created per chunk: journaling costs microseconds, not the
//! milliseconds a file per chunk would. A record torn by a crash fails its length or hash check
//! and is ignored (that chunk is recomputed). Records are not fsynced: the journal protects
//! against the death of the supervisor, not of the machine, and the page cache survives the
//! former. The journal is removed when a run succeeds; a failed or partial run keeps it, so
//! `--resume` retries only the failed chunks.

use crate::config::model::Dag;
use serde_json::json;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

const RECORD_MAGIC: u32 = 0x4C43_4A31; // "LCJ1"
const HEADER: usize = 4 + 8 + 8 + 8;

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// Open append handles, one per node.
    files: HashMap<String, File>,
    /// Records found at resume: node -> chunk index -> payload.
    found: HashMap<String, HashMap<u64, Vec<u8>>>,
}

/// The hash records are checked with (the run loop's region hash).
pub type Hasher = fn(&[&[u8]]) -> u64;

impl Journal {
    pub fn dir_in(out: &Path) -> PathBuf {
        out.join(".livecalc")
    }

    fn identity(dag: &Dag) -> serde_json::Value {
        json!({
            "dag_sha256": dag.hash,
            "inputs_sha256": dag.resolved_hash,
            "nodes": dag.nodes.iter().map(|n| (n.id.clone(), json!({"rows": n.rows, "chunk_size": n.chunk_size}))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// A fresh journal (any earlier one in `out` is discarded).
    pub fn create(out: &Path, dag: &Dag) -> std::io::Result<Journal> {
        let dir = Self::dir_in(out);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let text =
            serde_json::to_vec_pretty(&Self::identity(dag)).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("run.json"), text)?;
        Ok(Journal {
            dir,
            files: HashMap::new(),
            found: HashMap::new(),
        })
    }

    /// The journal of an interrupted run of the same DAG over the same inputs and chunking;
    /// every intact record is read back.
    pub fn resume(out: &Path, dag: &Dag, hash: Hasher) -> Result<Journal, String> {
        let dir = Self::dir_in(out);
        let text = std::fs::read(dir.join("run.json")).map_err(|_| {
            format!(
                "{} holds no interrupted run to resume (no .livecalc/run.json)",
                out.display()
            )
        })?;
        let found: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| format!("corrupt .livecalc/run.json: {e}"))?;
        if found != Self::identity(dag) {
            let what = if found["dag_sha256"] != dag.hash.as_str() {
                format!(
                    "a different DAG (sha256 {} there, {} now)",
                    found["dag_sha256"].as_str().unwrap_or("?"),
                    dag.hash
                )
            } else if found["inputs_sha256"] != dag.resolved_hash.as_str() {
                "the same DAG text over different inputs (a ${VAR} now expands differently, or a file it names changed)".to_string()
            } else {
                "a different chunking".to_string()
            };
            return Err(format!(
                "{} was produced by {what}; run without --resume",
                out.display()
            ));
        }
        let mut records = HashMap::new();
        for n in &dag.nodes {
            let path = dir.join(format!("{}.journal", n.id));
            if let Ok(bytes) = std::fs::read(&path) {
                let (found, intact) = parse_records(&bytes, hash);
                if intact < bytes.len() {
                    // A record torn by the crash: cut it off, so that what this run appends
                    // follows the last intact record and can be read back.
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    f.set_len(intact as u64)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                records.insert(n.id.clone(), found);
            }
        }
        Ok(Journal {
            dir,
            files: HashMap::new(),
            found: records,
        })
    }

    /// Append one completed chunk; `hash` is the `Hasher`'s value over `parts` (which must not
    /// depend on how the payload is split), computed once by the caller.
    pub fn save(
        &mut self,
        node: &str,
        index: u64,
        parts: &[&[u8]],
        hash: u64,
    ) -> std::io::Result<()> {
        let file = match self.files.get_mut(node) {
            Some(f) => f,
            None => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(format!("{node}.journal")))?;
                self.files.entry(node.to_string()).or_insert(f)
            }
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut record = Vec::with_capacity(HEADER + len);
        record.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        record.extend_from_slice(&index.to_le_bytes());
        record.extend_from_slice(&(len as u64).to_le_bytes());
        record.extend_from_slice(&hash.to_le_bytes());
        for p in parts {
            record.extend_from_slice(p);
        }
        file.write_all(&record)
    }

    /// The saved bytes of a chunk, if an intact record of the expected length exists: from the
    /// records read at resume, or (to repair an overwritten chunk) from this run's journal.
    pub fn load(&self, node: &str, index: u64, len: usize, hash: Hasher) -> Option<Vec<u8>> {
        if let Some(b) = self.found.get(node).and_then(|m| m.get(&index)) {
            return (b.len() == len).then(|| b.clone());
        }
        let bytes = std::fs::read(self.dir.join(format!("{node}.journal"))).ok()?;
        parse_records(&bytes, hash)
            .0
            .remove(&index)
            .filter(|b| b.len() == len)
    }

    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every intact record of a journal file (the last record for an index wins: a resumed run may
/// append a chunk again), and the length of the intact prefix.
fn parse_records(bytes: &[u8], hash: Hasher) -> (HashMap<u64, Vec<u8>>, usize) {
    let mut out = HashMap::new();
    let mut at = 0;
    while bytes.len() >= at + HEADER {
        let word = |o: usize, n: usize| &bytes[at + o..at + o + n];
        if u32::from_le_bytes(word(0, 4).try_into().expect("4")) != RECORD_MAGIC {
            break;
        }
        let index = u64::from_le_bytes(word(4, 8).try_into().expect("8"));
        let len = u64::from_le_bytes(word(12, 8).try_into().expect("8")) as usize;
        let want = u64::from_le_bytes(word(20, 8).try_into().expect("8"));
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break; // torn by a crash mid-write
        };
        if hash(&[payload]) != want {
            break; // a corrupt record: nothing after it can be trusted to be aligned
        }
        out.insert(index, payload.to_vec());
        at += HEADER + len;
    }
    (out, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_hash(parts: &[&[u8]]) -> u64 {
        parts
            .iter()
            .flat_map(|p| p.iter())
            .map(|&b| b as u64)
            .sum::<u64>()
            + 1
    }

    #[test]
    fn torn_and_corrupt_records_end_the_intact_prefix() {
        let rec = |index: u64, payload: &[u8], hash: u64| {
            let mut r = Vec::new();
            r.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            r.extend_from_slice(&index.to_le_bytes());
            r.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            r.extend_from_slice(&hash.to_le_bytes());
            r.extend_from_slice(payload);
            r
        };
        let mut bytes = rec(0, b"abc", sum_hash(&[b"abc"]));
        bytes.extend(rec(1, b"xyz", 12345)); // wrong hash
        bytes.extend(rec(2, b"ok", sum_hash(&[b"ok"])));
        let torn = rec(3, b"torn record", sum_hash(&[b"torn record"]));
        bytes.extend_from_slice(&torn[..torn.len() - 4]);
        let (found, intact) = parse_records(&bytes, sum_hash);
        // Reading stops at the corrupt record: what follows cannot be trusted.
        assert_eq!(found.len(), 1);
        assert_eq!(found[&0], b"abc");
        assert_eq!(intact, HEADER + 3);
        let good = [
            rec(0, b"abc", sum_hash(&[b"abc"])),
            rec(2, b"ok", sum_hash(&[b"ok"])),
        ]
        .concat();
        let mut torn_tail = good.clone();
        torn_tail.extend_from_slice(&torn[..torn.len() - 4]);
        let (found, intact) = parse_records(&torn_tail, sum_hash);
        assert_eq!(found.len(), 2);
        assert_eq!(found[&2], b"ok");
        assert_eq!(
            intact,
            good.len(),
            "the torn tail is cut off at the last intact record"
        );
    }
}
