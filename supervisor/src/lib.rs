//! The LiveCalc supervisor: runs chains of calculation engines written as a JSON DAG.
//!
//! A newcomer's map:
//! - [`config`]: the config compiler (JSON text -> validated [`config::Dag`], every problem
//!   reported with its JSON path).
//! - [`bus`]: the data bus (POSIX shared-memory segments, CSV/Parquet in, Parquet out).
//! - [`pool`]: the worker pool (spawning worker processes, handshake, OS facts as events).
//! - [`run`]: the run loop, the single owner of a run's state, and the manifest.
//! - [`cli`]: the command line, and the one place errors become exit codes.
//!
//! Non-goals: LiveCalc does not schedule across machines itself (books that outgrow one
//! machine run as array jobs of an existing scheduler), and it never moves bulk data through
//! its control channels.

pub mod bus;
pub mod cli;
pub mod config;
pub mod graph;
pub mod pool;
pub mod run;
