//! Restart policy as data: why a worker failed, whether that is worth another try, and how long
//! to wait before the next one.

use crate::config::model::RetryPolicy;
use crate::pool::ProcessEnd;
use livecalc_protocol::{EngineError, EngineErrorKind};
use std::fmt;
use std::time::Duration;

/// Why a worker stopped doing its work, classified once at the edge.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// The process ended on its own (exit code or signal).
    Died(ProcessEnd),
    /// A chunk ran past `timeout_s`.
    Timeout(Duration),
    /// Connect, initialize or attach did not finish within `startup_timeout_s`.
    Startup(Duration),
    /// The control channel closed while the process stayed alive.
    ChannelLost,
    /// The handshake went wrong (wrong protocol, message out of order, accept failed).
    Handshake(String),
    /// The engine or its host reported a typed error.
    Engine(EngineError),
}

impl Cause {
    /// Whether a fresh worker can be expected to do better. Configuration errors, unknown
    /// engines and protocol mistakes are the same on every try.
    pub fn is_retriable(&self) -> bool {
        match self {
            Cause::Died(_) | Cause::Timeout(_) | Cause::Startup(_) | Cause::ChannelLost => true,
            Cause::Handshake(_) => false,
            Cause::Engine(e) => e.kind.is_retriable(),
        }
    }

    /// Short stable label for the manifest.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Died(ProcessEnd::Exited(_)) => "exit",
            Cause::Died(ProcessEnd::Signaled { .. }) => "signal",
            Cause::Timeout(_) => "timeout",
            Cause::Startup(_) => "startup_timeout",
            Cause::ChannelLost => "channel_lost",
            Cause::Handshake(_) => "handshake",
            Cause::Engine(e) => match e.kind {
                EngineErrorKind::Configuration => "configuration_error",
                EngineErrorKind::Initialization => "initialization_error",
                EngineErrorKind::Execution => "execution_error",
                EngineErrorKind::OutOfMemory => "out_of_memory",
                EngineErrorKind::Other => "engine_error",
                EngineErrorKind::Lifecycle => "lifecycle_error",
                EngineErrorKind::Bus => "bus_error",
                EngineErrorKind::UnknownEngine => "unknown_engine",
            },
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Died(end @ ProcessEnd::Signaled { signal, .. }) if *signal == libc::SIGKILL => {
                write!(f, "{end} (out of memory, or killed from outside)")
            }
            Cause::Died(end @ ProcessEnd::Exited(code))
                if *code == livecalc_protocol::faults::EXIT_KEPT_VIEW =>
            {
                write!(
                    f,
                    "{end}: the engine kept a reference to shared memory after runChunk (see the worker's log)"
                )
            }
            Cause::Died(end) => write!(f, "{end}"),
            Cause::Timeout(t) => write!(f, "timed out after {:.1} s (timeout_s)", t.as_secs_f64()),
            Cause::Startup(t) => write!(
                f,
                "did not start within {:.1} s (startup_timeout_s)",
                t.as_secs_f64()
            ),
            Cause::ChannelLost => f.write_str("closed its control channel"),
            Cause::Handshake(m) => write!(f, "handshake failed: {m}"),
            Cause::Engine(e) => write!(f, "{e}"),
        }
    }
}

/// Delays between restarts: `initial * factor^(n-1)`, capped, with ±10% jitter drawn from a
/// deterministic stream so that a run's timing is reproducible.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    n: u32,
    state: u64,
}

impl Backoff {
    pub fn new(policy: &RetryPolicy, seed: u64) -> Backoff {
        Backoff {
            policy: policy.clone(),
            n: 0,
            state: seed ^ 0x243F_6A88_85A3_08D3,
        }
    }

    fn next_uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.n += 1;
        let base = self.policy.initial_delay.as_secs_f64()
            * self
                .policy
                .factor
                .powi(self.n.saturating_sub(1).min(60) as i32);
        let capped = base.min(self.policy.max_delay.as_secs_f64());
        let jitter = 1.0 + self.policy.jitter * (2.0 * self.next_uniform() - 1.0);
        Some(Duration::from_secs_f64((capped * jitter).max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_geometrically_to_its_cap_with_bounded_jitter() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_millis(500),
            jitter: 0.1,
        };
        let d: Vec<f64> = Backoff::new(&p, 7)
            .take(5)
            .map(|d| d.as_secs_f64())
            .collect();
        for (got, want) in d.iter().zip([0.1, 0.2, 0.4, 0.5, 0.5]) {
            assert!((got / want - 1.0).abs() <= 0.1 + 1e-12, "{d:?}");
        }
        let again: Vec<f64> = Backoff::new(&p, 7)
            .take(5)
            .map(|d| d.as_secs_f64())
            .collect();
        assert_eq!(d, again, "jitter is deterministic for a seed");
    }

    #[test]
    fn configuration_errors_are_not_retried() {
        let e = |kind| Cause::Engine(EngineError::new(kind, "X", "m"));
        assert!(!e(EngineErrorKind::Configuration).is_retriable());
        assert!(!e(EngineErrorKind::UnknownEngine).is_retriable());
        assert!(e(EngineErrorKind::Execution).is_retriable());
        assert!(e(EngineErrorKind::OutOfMemory).is_retriable());
        assert!(Cause::Died(ProcessEnd::Signaled {
            signal: 11,
            core_dumped: false
        })
        .is_retriable());
    }
}
