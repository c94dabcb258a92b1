//! Turning a node's segments into the two buffers `runChunk` takes.
//!
//! At `Attach`, every input segment is mapped read-only, one after another, into one reserved
//! address range behind a small private directory; the outputs likewise, read-write. For each
//! chunk only the directory is rewritten: its entries point at the chunk's rows inside the
//! mapped segments (or at the whole column for broadcast inputs, or at the chunk's slot for
//! per-chunk outputs). The engine thus sees one contiguous buffer per side while not one byte
//! of bulk data is copied, in this process or between processes.

use livecalc_protocol::layout::STATE_OFFSET;
use livecalc_protocol::layout::{ColumnEntry, SegmentHeader, SegmentState, ViewDirectory};
use livecalc_protocol::shm::{self, Arena};
use livecalc_protocol::OutputKind;
use livecalc_protocol::{ChunkSpan, EngineError, EngineErrorKind, InputBinding, OutputBinding};
use std::sync::atomic::{AtomicU32, Ordering};

/// How a segment is cut for each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The whole segment, every chunk.
    Whole,
    /// Rows `row_start..row_start+row_count`.
    Rows,
    /// Slot `chunk.index` of the first dimension, presented without that dimension.
    Slot,
}

#[derive(Debug)]
struct Placed {
    binding: String,
    offset: usize,
    header: SegmentHeader,
    cut: Cut,
}

/// One side (inputs or outputs) of a node: an arena and what is placed in it.
#[derive(Debug)]
pub struct SideView {
    arena: Arena,
    placed: Vec<Placed>,
}

fn bus_error(message: String) -> EngineError {
    EngineError::new(EngineErrorKind::Bus, "BusError", message)
}

impl SideView {
    fn build(
        segments: &[(String, String, Cut)],
        writable: bool,
        expect: SegmentState,
    ) -> Result<SideView, EngineError> {
        let mut opened = Vec::with_capacity(segments.len());
        for (binding, segment, cut) in segments {
            let (fd, len) = shm::open_segment(segment, writable).map_err(|e| {
                bus_error(format!(
                    "cannot open segment {segment} for '{binding}': {e}"
                ))
            })?;
            opened.push((binding, fd, len, *cut));
        }
        // The directory holds at most one entry per column of every segment; headers are read
        // after mapping, so size it from a first, generous guess and grow if needed.
        let lens: Vec<usize> = opened.iter().map(|o| o.2).collect();
        let mut arena = Arena::reserve(shm::page_size(), &lens)
            .map_err(|e| bus_error(format!("cannot reserve view address space: {e}")))?;
        let mut placed = Vec::with_capacity(opened.len());
        for (binding, fd, len, cut) in &opened {
            let offset = arena
                .place(fd, *len, writable)
                .map_err(|e| bus_error(format!("cannot map segment for '{binding}': {e}")))?;
            // SAFETY: the header bytes lie inside the segment just mapped at `offset`; the
            // supervisor wrote the header before handing the segment out and never changes it
            // afterwards except for the state word, which is read atomically below.
            let bytes = unsafe { std::slice::from_raw_parts(arena.as_ptr().add(offset), *len) };
            let header = SegmentHeader::decode(bytes, *len as u64)
                .map_err(|e| bus_error(format!("segment for '{binding}': {e}")))?;
            let state = state_word(arena.as_ptr(), offset);
            if state != expect as u32 {
                return Err(bus_error(format!(
                    "segment for '{binding}' is in state {state}, expected {expect:?}"
                )));
            }
            placed.push(Placed {
                binding: (*binding).clone(),
                offset,
                header,
                cut: *cut,
            });
        }
        let columns: usize = placed.iter().map(|p| p.header.columns.len()).sum();
        if ViewDirectory::encoded_len(columns) > arena.dir_len() {
            // Rare (more than ~30 columns): rebuild with a directory that fits.
            let dir_len = ViewDirectory::encoded_len(columns);
            let mut bigger = Arena::reserve(dir_len, &lens)
                .map_err(|e| bus_error(format!("cannot reserve view address space: {e}")))?;
            for (p, (_, fd, len, _)) in placed.iter_mut().zip(&opened) {
                p.offset = bigger
                    .place(fd, *len, writable)
                    .map_err(|e| bus_error(format!("cannot map segment: {e}")))?;
            }
            arena = bigger;
        }
        Ok(SideView { arena, placed })
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.arena.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.arena.used_len()
    }

    /// Rewrite the directory for `chunk`.
    pub fn point_at(&mut self, chunk: ChunkSpan) -> Result<(), EngineError> {
        let mut columns = Vec::new();
        for p in &self.placed {
            for c in &p.header.columns {
                let base = p.offset as u64 + c.offset;
                let (offset, shape) = match p.cut {
                    Cut::Whole => (base, c.shape.clone()),
                    Cut::Rows => {
                        if chunk.row_start + chunk.row_count > c.shape[0] {
                            return Err(bus_error(format!(
                                "chunk rows {}..{} exceed column '{}.{}' of {} rows",
                                chunk.row_start,
                                chunk.row_start + chunk.row_count,
                                p.binding,
                                c.name,
                                c.shape[0]
                            )));
                        }
                        let mut shape = c.shape.clone();
                        shape[0] = chunk.row_count;
                        (base + chunk.row_start * c.row_bytes(), shape)
                    }
                    Cut::Slot => {
                        if chunk.index >= c.shape[0] {
                            return Err(bus_error(format!(
                                "chunk {} has no slot in '{}.{}' ({} slots)",
                                chunk.index, p.binding, c.name, c.shape[0]
                            )));
                        }
                        let shape = if c.shape.len() == 2 {
                            vec![c.shape[1]]
                        } else {
                            vec![1]
                        };
                        (base + chunk.index * c.row_bytes(), shape)
                    }
                };
                columns.push(ColumnEntry {
                    name: format!("{}.{}", p.binding, c.name),
                    dtype: c.dtype,
                    shape,
                    offset,
                });
            }
        }
        let dir = ViewDirectory {
            chunk,
            view_size: self.len() as u64,
            columns,
        };
        dir.encode_into(self.arena.directory_mut())
            .map_err(|e| bus_error(format!("cannot write view directory: {e}")))
    }

    /// The byte ranges (offset, len) a chunk may write: its rows or slot of every column.
    pub fn chunk_regions(&self, chunk: ChunkSpan) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for p in &self.placed {
            for c in &p.header.columns {
                let base = p.offset as u64 + c.offset;
                let (start, len) = match p.cut {
                    Cut::Whole => (base, c.nbytes()),
                    Cut::Rows => (
                        base + chunk.row_start * c.row_bytes(),
                        chunk.row_count * c.row_bytes(),
                    ),
                    Cut::Slot => (base + chunk.index * c.row_bytes(), c.row_bytes()),
                };
                out.push((start as usize, len as usize));
            }
        }
        out
    }
}

fn state_word(base: *mut u8, offset: usize) -> u32 {
    // SAFETY: the state word is a 4-byte-aligned u32 inside a mapped segment header (segments
    // are page aligned and STATE_OFFSET is 12); other processes access it only atomically.
    let word = unsafe { &*(base.add(offset + STATE_OFFSET) as *const AtomicU32) };
    word.load(Ordering::Acquire)
}

/// The input and output views of one node, built at `Attach`.
#[derive(Debug)]
pub struct NodeViews {
    pub inputs: SideView,
    pub outputs: SideView,
}

impl NodeViews {
    pub fn attach(
        inputs: &[InputBinding],
        outputs: &[OutputBinding],
    ) -> Result<NodeViews, EngineError> {
        let ins: Vec<_> = inputs
            .iter()
            .map(|b| {
                let cut = if b.chunked { Cut::Rows } else { Cut::Whole };
                (b.name.clone(), b.segment.clone(), cut)
            })
            .collect();
        let outs: Vec<_> = outputs
            .iter()
            .map(|b| {
                let cut = match b.kind {
                    OutputKind::Rows => Cut::Rows,
                    OutputKind::PerChunk => Cut::Slot,
                };
                (b.name.clone(), b.segment.clone(), cut)
            })
            .collect();
        Ok(NodeViews {
            inputs: SideView::build(&ins, false, SegmentState::Sealed)?,
            outputs: SideView::build(&outs, true, SegmentState::Writing)?,
        })
    }
}
