//! The config compiler: JSON DAG text in, validated [`model::Dag`] out.
//!
//! See [`compile`] for the stages and [`model`] for what a compiled DAG guarantees.

pub mod compile;
pub mod model;

pub use compile::{compile_file, compile_str, ConfigError, Problem};
pub use model::Dag;

/// Compile a DAG file against the process environment.
pub fn load(path: &std::path::Path) -> Result<Dag, ConfigError> {
    compile_file(path, &|name| std::env::var(name).ok())
}

/// Give every node `workers` worker processes (the `--workers` flag).
pub fn override_workers(dag: &mut Dag, workers: u32) {
    for n in &mut dag.nodes {
        n.workers = workers.max(1);
    }
}
