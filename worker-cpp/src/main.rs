//! `livecalc-worker-cpp`: a worker process hosting one C++ `ICalcEngine`.
//!
//! Started by the supervisor only (`--connect` names its handshake server). The engine is looked
//! up in the C++ `EngineRegistry` by the name after `cpp:` in the DAG; the host loop, views and
//! fault injection come from `livecalc-worker-host`.

use std::process::ExitCode;

fn main() -> ExitCode {
    livecalc_worker_host::run(livecalc_worker_cpp::create)
}
