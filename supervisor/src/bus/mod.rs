//! The data bus: every shared-memory segment of a run, owned by the supervisor.
//!
//! Theory of operation:
//! - A segment holds one table: a versioned header (see `livecalc_protocol::layout`) and its
//!   columns, 64-byte aligned. Data sources are loaded into segments before any engine starts;
//!   each node output gets a segment before the node's workers attach.
//! - The header's state word tells consumers what they may do: `Empty` (just created),
//!   `Writing` (workers of the producing node are writing their chunks' rows or slots), `Sealed`
//!   (complete and immutable). Workers refuse to attach an input that is not sealed.
//! - A per-chunk output has one slot per chunk; when the node completes, the slots are reduced
//!   **in chunk order** into a new sealed segment, so the result is the same for any number of
//!   workers.
//! - Segments are created mode 0600 with names that carry this supervisor's pid and start time.
//!   They are unlinked when the run ends (any way it ends); segments of a supervisor that died
//!   are removed by the next one at start-up and by `livecalc-supervisor cleanup`.

pub mod files;

use livecalc_protocol::layout::{ColumnEntry, DType, SegmentHeader, SegmentState, STATE_OFFSET};
use livecalc_protocol::shm::{self, OwnedSegment, SegmentName};
use std::sync::atomic::{AtomicU32, Ordering};

/// Handle to a segment of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentId(usize);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "not enough shared memory: the run needs {needed} bytes in {dir} but only {free} are free (Docker's default /dev/shm is 64 MB: enlarge it with --shm-size, or reduce the data)"
    )]
    NoSpace {
        needed: u64,
        free: u64,
        dir: &'static str,
    },
    #[error("cannot create shared-memory segment for '{producer}': {source}")]
    Create {
        producer: String,
        source: std::io::Error,
    },
    #[error("invalid segment layout for '{producer}': {message}")]
    Layout { producer: String, message: String },
    #[error("cannot inspect {dir}: {source}")]
    Inspect {
        dir: &'static str,
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Segment {
    owned: OwnedSegment,
    header: SegmentHeader,
}

/// All segments of one run.
#[derive(Debug)]
pub struct Bus {
    pid: u32,
    start_time: u64,
    next_seq: u64,
    segments: Vec<Option<Segment>>,
}

impl Bus {
    /// A bus for this process. Also removes segments left by supervisors that died.
    pub fn new() -> Result<Bus, BusError> {
        let pid = std::process::id();
        let start_time = shm::process_start_time(pid).unwrap_or(0);
        match shm::remove_stale() {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    count = removed.len(),
                    "removed stale segments of dead supervisors"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not scan for stale segments"),
        }
        Ok(Bus {
            pid,
            start_time,
            next_seq: 0,
            segments: Vec::new(),
        })
    }

    /// Bytes a segment of these columns occupies.
    pub fn planned_size(columns: &[(String, DType, Vec<u64>)]) -> u64 {
        SegmentHeader::plan("", 0, columns).total_size
    }

    /// Fail early, with a clear message, when `/dev/shm` cannot hold `needed` bytes.
    pub fn check_space(needed: u64) -> Result<(), BusError> {
        let free = shm::free_bytes().map_err(|source| BusError::Inspect {
            dir: shm::SHM_DIR,
            source,
        })?;
        if needed > free {
            return Err(BusError::NoSpace {
                needed,
                free,
                dir: shm::SHM_DIR,
            });
        }
        Ok(())
    }

    /// Create a segment with the given columns, its header written, state `Empty`.
    pub fn allocate(
        &mut self,
        producer: &str,
        rows: u64,
        columns: &[(String, DType, Vec<u64>)],
    ) -> Result<SegmentId, BusError> {
        let header = SegmentHeader::plan(producer, rows, columns);
        let bytes = header.encode().map_err(|e| BusError::Layout {
            producer: producer.into(),
            message: e.to_string(),
        })?;
        let name = SegmentName {
            pid: self.pid,
            start_time: self.start_time,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let owned = OwnedSegment::create(name, header.total_size as usize).map_err(|source| {
            BusError::Create {
                producer: producer.into(),
                source,
            }
        })?;
        // SAFETY: the mapping is fresh, private to this call until the segment's name is
        // handed out, and at least header_len bytes long (total_size includes the header).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), owned.mapping().as_ptr(), bytes.len())
        };
        self.segments.push(Some(Segment { owned, header }));
        Ok(SegmentId(self.segments.len() - 1))
    }

    fn seg(&self, id: SegmentId) -> &Segment {
        self.segments[id.0]
            .as_ref()
            .expect("segment ids are not used after release")
    }

    pub fn file_name(&self, id: SegmentId) -> String {
        self.seg(id).owned.name().file_name()
    }

    pub fn header(&self, id: SegmentId) -> &SegmentHeader {
        &self.seg(id).header
    }

    pub fn size(&self, id: SegmentId) -> u64 {
        self.seg(id).header.total_size
    }

    fn state_word(&self, id: SegmentId) -> &AtomicU32 {
        let base = self.seg(id).owned.mapping().as_ptr();
        // SAFETY: the state word is a 4-aligned u32 inside the mapped header (segments are page
        // aligned); every process accesses it atomically only.
        unsafe { &*(base.add(STATE_OFFSET) as *const AtomicU32) }
    }

    pub fn set_state(&self, id: SegmentId, state: SegmentState) {
        self.state_word(id).store(state as u32, Ordering::Release);
    }

    pub fn state(&self, id: SegmentId) -> Option<SegmentState> {
        SegmentState::from_word(self.state_word(id).load(Ordering::Acquire))
    }

    /// A column's bytes, for writing before the segment is handed out, or for reading after.
    ///
    /// # Safety
    /// No worker may be writing this column while the slice lives: call it before the segment
    /// is attached by any worker, or after it is sealed.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn column_bytes_mut(&self, id: SegmentId, entry: &ColumnEntry) -> &mut [u8] {
        let base = self.seg(id).owned.mapping().as_ptr();
        // SAFETY: the entry comes from this segment's own planned header, so offset+nbytes lies
        // inside the mapping; exclusivity is the caller's promise.
        unsafe {
            std::slice::from_raw_parts_mut(base.add(entry.offset as usize), entry.nbytes() as usize)
        }
    }

    /// A column's bytes for reading.
    ///
    /// # Safety
    /// As for [`Bus::column_bytes_mut`]: no concurrent writer.
    pub unsafe fn column_bytes(&self, id: SegmentId, entry: &ColumnEntry) -> &[u8] {
        // SAFETY: forwarded to the caller.
        unsafe { self.column_bytes_mut(id, entry) }
    }

    /// Reduce a per-chunk segment (`[chunks, n]` columns) into a sealed segment of `[n]`
    /// columns, combining slots in chunk order: a new one, or `into` (a re-evaluation rewrites
    /// the segment its consumers already map).
    pub fn reduce(
        &mut self,
        id: SegmentId,
        producer: &str,
        how: crate::config::model::Reduce,
        into: Option<SegmentId>,
    ) -> Result<SegmentId, BusError> {
        let src = self.seg(id).header.clone();
        let cols: Vec<(String, DType, Vec<u64>)> = src
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.dtype,
                    vec![c.shape.get(1).copied().unwrap_or(1)],
                )
            })
            .collect();
        let rows = cols.first().map(|c| c.2[0]).unwrap_or(0);
        let out = match into {
            Some(seg) => {
                self.set_state(seg, SegmentState::Writing);
                seg
            }
            None => self.allocate(producer, rows, &cols)?,
        };
        let dst = self.seg(out).header.clone();
        for (s, d) in src.columns.iter().zip(&dst.columns) {
            // SAFETY: the source segment is sealed (its node completed); the destination is
            // fresh, or (a re-evaluation) the reduced segment whose readers are all blocked: the
            // node consuming it waits for the evaluation's answer, and downstream nodes that
            // read it have not started or are re-run after it.
            let (from, to) = unsafe { (self.column_bytes(id, s), self.column_bytes_mut(out, d)) };
            reduce_column(s.dtype, from, to, how);
        }
        self.set_state(out, SegmentState::Sealed);
        Ok(out)
    }

    /// Unlink and unmap one segment.
    pub fn release(&mut self, id: SegmentId) {
        self.segments[id.0] = None;
    }

    /// Unlink and unmap every segment of the run.
    pub fn release_all(&mut self) {
        self.segments.clear();
    }

    /// Total bytes of live segments.
    pub fn live_bytes(&self) -> u64 {
        self.segments
            .iter()
            .flatten()
            .map(|s| s.header.total_size)
            .sum()
    }
}

trait SumAdd {
    fn sum_add(self, other: Self) -> Self;
}
macro_rules! sum_add_int {
    ($($t:ty),*) => {$(impl SumAdd for $t { fn sum_add(self, o: Self) -> Self { self.wrapping_add(o) } })*};
}
sum_add_int!(i64, i32, u8);
impl SumAdd for f64 {
    fn sum_add(self, o: Self) -> Self {
        self + o
    }
}
impl SumAdd for f32 {
    fn sum_add(self, o: Self) -> Self {
        self + o
    }
}
fn sum_add<T: SumAdd>(a: T, b: T) -> T {
    a.sum_add(b)
}

fn reduce_column(dtype: DType, from: &[u8], to: &mut [u8], how: crate::config::model::Reduce) {
    use crate::config::model::Reduce;
    let n = to.len();
    match how {
        // A node with no rows has no chunk, hence no slot: its reduction is all zeros.
        Reduce::First if from.len() < n => to.fill(0),
        Reduce::First => to.copy_from_slice(&from[..n]),
        Reduce::Sum => {
            macro_rules! sum {
                ($t:ty, $w:expr) => {{
                    let mut acc = vec![<$t>::default(); n / $w];
                    for slot in from.chunks_exact(n) {
                        for (a, b) in acc.iter_mut().zip(slot.chunks_exact($w)) {
                            // Wrapping for integers: a sum is the declared dtype's arithmetic,
                            // never a panic in the supervisor.
                            *a = sum_add(*a, <$t>::from_le_bytes(b.try_into().expect("width")));
                        }
                    }
                    for (d, a) in to.chunks_exact_mut($w).zip(acc) {
                        d.copy_from_slice(&a.to_le_bytes());
                    }
                }};
            }
            match dtype {
                DType::Float64 => sum!(f64, 8),
                DType::Float32 => sum!(f32, 4),
                DType::Int64 => sum!(i64, 8),
                DType::Int32 => sum!(i32, 4),
                DType::Uint8 => sum!(u8, 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Reduce;

    #[test]
    fn reduce_sums_slots_in_chunk_order() {
        let mut bus = Bus::new().unwrap();
        let id = bus
            .allocate("n", 3, &[("x".into(), DType::Float64, vec![3, 2])])
            .unwrap();
        let e = bus.header(id).columns[0].clone();
        // SAFETY: no worker has this segment.
        let b = unsafe { bus.column_bytes_mut(id, &e) };
        for (i, v) in [1.0f64, 2.0, 10.0, 20.0, 100.0, 200.0].iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        bus.set_state(id, SegmentState::Sealed);
        let r = bus.reduce(id, "n", Reduce::Sum, None).unwrap();
        let re = bus.header(r).columns[0].clone();
        assert_eq!(re.shape, vec![2]);
        // SAFETY: sealed.
        let out = unsafe { bus.column_bytes(r, &re) };
        let v: Vec<f64> = out
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(v, vec![111.0, 222.0]);
        assert_eq!(bus.state(r), Some(SegmentState::Sealed));
        let name = bus.file_name(r);
        assert!(std::path::Path::new("/dev/shm").join(&name).exists());
        bus.release_all();
        assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
    }
}
