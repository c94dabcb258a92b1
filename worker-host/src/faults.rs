//! Carrying out injected faults (the plan itself is `livecalc_protocol::faults`).
//!
//! Faults are real: a segfault is a SIGSEGV, a hang is a process that stops answering, a memory
//! fault allocates until the address-space limit refuses.

pub use livecalc_protocol::faults::*;
use livecalc_protocol::{EngineError, EngineErrorKind};
use std::time::Duration;

/// Carry out a fault. Those that end or stall the process do not return; `Error` and a refused
/// `GrowMemory` return the error the host reports; `Garbage` is the caller's to carry out.
#[must_use]
pub fn strike(kind: &FaultKind) -> Option<EngineError> {
    tracing::warn!(?kind, "injecting fault");
    match kind {
        FaultKind::Segfault => {
            // SAFETY: raising a signal has no memory-safety preconditions; with the default
            // disposition the kernel ends the process with SIGSEGV, exactly as a real crash would.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
        }
        FaultKind::Abort => std::process::abort(),
        FaultKind::Exit(code) => std::process::exit(*code),
        FaultKind::Hang | FaultKind::NeverConnect => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        FaultKind::GrowMemory { limit_mb } => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            let step = 16usize << 20;
            while (hoard.len() as u64) * 16 < *limit_mb {
                let mut block = Vec::new();
                if block.try_reserve_exact(step).is_err() {
                    // The address-space limit (memory_limit_mb) refused more: report it the way
                    // an engine's std::bad_alloc or MemoryError would be.
                    return Some(EngineError::new(
                        EngineErrorKind::OutOfMemory,
                        "OutOfMemory",
                        format!(
                            "allocation of 16 MiB refused after {} MiB (memory_limit_mb)",
                            hoard.len() * 16
                        ),
                    ));
                }
                // Touch every page so the memory is really committed.
                block.resize(step, 1u8);
                hoard.push(block);
            }
            std::hint::black_box(&hoard);
            std::process::abort();
        }
        FaultKind::Error => {
            return Some(EngineError::new(
                EngineErrorKind::Execution,
                "InjectedFault",
                "fault injected by LIVECALC_FAULTS",
            ))
        }
        FaultKind::Garbage => {}
    }
    None
}
