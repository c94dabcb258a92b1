//! The run journal: completed chunks persisted as the run goes, so that `run --resume DIR`
//! continues a run whose supervisor died (even by SIGKILL) and recomputes only what is missing.
//!
//! Layout, inside the output folder:
//!
//! ```text
//! DIR/.livecalc/run.json                 {"dag_sha256": ..., "nodes": {"id": {"rows", "chunk_size"}}}
//! DIR/.livecalc/<node>/chunk-<index>.bin the chunk's output regions, concatenated in output
//!                                        and column order
//! ```
//!
//! Each chunk file is written under a temporary name and renamed, so a file that exists is
//! complete. Files are not fsynced: the journal protects against the death of the supervisor,
//! not of the machine, and the page cache survives the former. The journal is removed when a run
//! succeeds; a failed or partial run keeps it, so `--resume` retries only the failed chunks.

use crate::config::model::Dag;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
}

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
        Ok(Journal { dir })
    }

    /// The journal of an interrupted run of the same DAG (same bytes, same chunking).
    pub fn resume(out: &Path, dag: &Dag) -> Result<Journal, String> {
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
        Ok(Journal { dir })
    }

    fn chunk_path(&self, node: &str, index: u64) -> PathBuf {
        self.dir.join(node).join(format!("chunk-{index}.bin"))
    }

    pub fn save(&self, node: &str, index: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        let path = self.chunk_path(node, index);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for p in parts {
            f.write_all(p)?;
        }
        f.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, &path)
    }

    /// The saved bytes of a chunk, if a complete file of the expected length exists.
    pub fn load(&self, node: &str, index: u64, len: usize) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.chunk_path(node, index)).ok()?;
        (bytes.len() == len).then_some(bytes)
    }

    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
