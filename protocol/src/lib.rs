//! The LiveCalc wire contract, shared by the supervisor and every worker process.
//!
//! - [`messages`]: the control messages carried by `ipc-channel` (small and fixed-shape).
//! - [`layout`]: the segment header and view directory that describe bulk data in shared memory.
//! - [`shm`]: creating, naming, mapping and cleaning up POSIX shared-memory segments.
//! - [`faults`]: the fault-injection plan workers carry out on request.
//!
//! The crate is deliberately light (serde, nix, ipc-channel) so that every process role can
//! depend on it without pulling in Arrow, CPython or C++.

pub mod faults;
pub mod layout;
pub mod messages;
pub mod owned_view;
pub mod shm;

pub use layout::{ChunkSpan, ColumnEntry, DType, SegmentHeader, SegmentState, ViewDirectory};
pub use messages::*;
