//! Byte layouts of the data bus: the segment header and the view directory.
//!
//! Every shared-memory segment starts with a [`SegmentHeader`]: magic, layout version, a state
//! word (empty / writing / sealed), the producer's name, and a table of named columns. The same
//! 128-byte [`ColumnEntry`] describes a column in a segment (offset from the segment start) and in
//! an engine's view directory (offset from the view start), so the C++ `BufferView` and the Python
//! `livecalc.inputs()` parse one table format only.
//!
//! All integers are little-endian; all column data starts on a 64-byte boundary (a cache line,
//! and safe for AVX-512 aligned loads). The layout is written and read byte by byte here rather
//! than through `#[repr(C)]` casts so that a segment written by one build can be checked, not
//! trusted, by another. The normative description lives in `docs/bus.md`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Alignment of every column's first byte.
pub const COLUMN_ALIGN: usize = 64;
/// Bytes of one column entry, in a segment header and in a view directory.
pub const ENTRY_SIZE: usize = 128;
/// Longest column name, in bytes of UTF-8.
pub const NAME_MAX: usize = 63;

pub const SEGMENT_MAGIC: [u8; 8] = *b"LCSEG001";
pub const VIEW_MAGIC: [u8; 8] = *b"LCVIEW01";
pub const LAYOUT_VERSION: u32 = 1;

/// Bytes before the column table of a segment header.
pub const SEGMENT_FIXED: usize = 128;
/// Bytes before the column table of a view directory.
pub const VIEW_FIXED: usize = 64;

/// Offset of the state word inside a segment header (a `u32`, accessed atomically).
pub const STATE_OFFSET: usize = 12;

/// Round `n` up to a multiple of `align` (a power of two).
pub const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// Element type of a column. Codes are part of the on-memory format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float64,
    Float32,
    Int64,
    Int32,
    Uint8,
}

impl DType {
    pub const ALL: [DType; 5] = [
        DType::Float64,
        DType::Float32,
        DType::Int64,
        DType::Int32,
        DType::Uint8,
    ];

    pub fn code(self) -> u32 {
        match self {
            DType::Float64 => 1,
            DType::Float32 => 2,
            DType::Int64 => 3,
            DType::Int32 => 4,
            DType::Uint8 => 5,
        }
    }

    pub fn from_code(code: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    pub fn size(self) -> usize {
        match self {
            DType::Float64 | DType::Int64 => 8,
            DType::Float32 | DType::Int32 => 4,
            DType::Uint8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Float64 => "float64",
            DType::Float32 => "float32",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Uint8 => "uint8",
        }
    }

    pub fn parse(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Lifecycle of a segment's contents, stored in its header's state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegmentState {
    /// Created and sized; nothing written yet.
    Empty = 0,
    /// A producer is writing; readers must not look at the data.
    Writing = 1,
    /// Complete and immutable; safe to read.
    Sealed = 2,
}

impl SegmentState {
    pub fn from_word(w: u32) -> Option<SegmentState> {
        match w {
            0 => Some(SegmentState::Empty),
            1 => Some(SegmentState::Writing),
            2 => Some(SegmentState::Sealed),
            _ => None,
        }
    }
}

/// One named column: element type, shape (row-major, at most two dimensions) and placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnEntry {
    pub name: String,
    pub dtype: DType,
    /// `[rows]` or `[rows, width]`.
    pub shape: Vec<u64>,
    /// Byte offset of the first element, from the start of the segment or view.
    pub offset: u64,
}

impl ColumnEntry {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> u64 {
        self.elements() * self.dtype.size() as u64
    }

    /// Bytes of one row (the product of every dimension after the first).
    pub fn row_bytes(&self) -> u64 {
        self.shape.iter().skip(1).product::<u64>() * self.dtype.size() as u64
    }

    fn write(&self, out: &mut [u8]) -> Result<(), LayoutError> {
        debug_assert_eq!(out.len(), ENTRY_SIZE);
        let name = self.name.as_bytes();
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(LayoutError::BadName(self.name.clone()));
        }
        if self.shape.is_empty() || self.shape.len() > 2 {
            return Err(LayoutError::BadShape(self.name.clone()));
        }
        out.fill(0);
        out[..name.len()].copy_from_slice(name);
        put_u32(out, 64, self.dtype.code());
        put_u32(out, 68, self.shape.len() as u32);
        put_u64(out, 72, self.shape[0]);
        put_u64(out, 80, self.shape.get(1).copied().unwrap_or(1));
        put_u64(out, 88, self.offset);
        put_u64(out, 96, self.nbytes());
        Ok(())
    }

    fn read(bytes: &[u8]) -> Result<ColumnEntry, LayoutError> {
        let raw_name = &bytes[..64];
        let len = raw_name.iter().position(|&b| b == 0).unwrap_or(64);
        let name = std::str::from_utf8(&raw_name[..len])
            .map_err(|_| LayoutError::BadName(String::from_utf8_lossy(&raw_name[..len]).into()))?
            .to_string();
        let code = get_u32(bytes, 64);
        let dtype = DType::from_code(code).ok_or(LayoutError::BadDType(code))?;
        let ndim = get_u32(bytes, 68);
        let shape = match ndim {
            1 => vec![get_u64(bytes, 72)],
            2 => vec![get_u64(bytes, 72), get_u64(bytes, 80)],
            _ => return Err(LayoutError::BadShape(name)),
        };
        let entry = ColumnEntry {
            name,
            dtype,
            shape,
            offset: get_u64(bytes, 88),
        };
        let checked = entry
            .shape
            .iter()
            .try_fold(entry.dtype.size() as u64, |acc, d| acc.checked_mul(*d));
        if checked != Some(get_u64(bytes, 96)) {
            return Err(LayoutError::BadShape(entry.name));
        }
        Ok(entry)
    }
}

/// The header at offset 0 of every segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub state: SegmentState,
    /// Node id or data-source name that fills this segment.
    pub producer: String,
    /// Rows along the chunk axis (the first dimension of every column).
    pub rows: u64,
    /// Size of the whole segment, header included.
    pub total_size: u64,
    pub columns: Vec<ColumnEntry>,
}

impl SegmentHeader {
    /// Lay out `columns` (name, dtype, shape) one after another, each 64-byte aligned, after a
    /// header big enough for the table. Offsets in the input are ignored.
    pub fn plan(producer: &str, rows: u64, columns: &[(String, DType, Vec<u64>)]) -> SegmentHeader {
        let mut offset = align_up(SEGMENT_FIXED + columns.len() * ENTRY_SIZE, COLUMN_ALIGN) as u64;
        let mut entries = Vec::with_capacity(columns.len());
        for (name, dtype, shape) in columns {
            let entry = ColumnEntry {
                name: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
                offset,
            };
            offset = align_up((offset + entry.nbytes()) as usize, COLUMN_ALIGN) as u64;
            entries.push(entry);
        }
        SegmentHeader {
            state: SegmentState::Empty,
            producer: producer.to_string(),
            rows,
            // Never zero bytes of data, so that an empty table still maps.
            total_size: offset.max(COLUMN_ALIGN as u64),
            columns: entries,
        }
    }

    pub fn header_len(&self) -> usize {
        SEGMENT_FIXED + self.columns.len() * ENTRY_SIZE
    }

    pub fn column(&self, name: &str) -> Option<&ColumnEntry> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn encode(&self) -> Result<Vec<u8>, LayoutError> {
        let mut out = vec![0u8; self.header_len()];
        out[..8].copy_from_slice(&SEGMENT_MAGIC);
        put_u32(&mut out, 8, LAYOUT_VERSION);
        put_u32(&mut out, STATE_OFFSET, self.state as u32);
        let producer = self.producer.as_bytes();
        let n = producer.len().min(47);
        out[16..16 + n].copy_from_slice(&producer[..n]);
        put_u32(&mut out, 64, self.columns.len() as u32);
        put_u64(&mut out, 72, self.total_size);
        put_u64(&mut out, 80, self.rows);
        for (i, c) in self.columns.iter().enumerate() {
            let at = SEGMENT_FIXED + i * ENTRY_SIZE;
            c.write(&mut out[at..at + ENTRY_SIZE])?;
        }
        Ok(out)
    }

    /// Parse and check a header. `available` is the mapped size: every column must lie inside it.
    pub fn decode(bytes: &[u8], available: u64) -> Result<SegmentHeader, LayoutError> {
        if bytes.len() < SEGMENT_FIXED || bytes[..8] != SEGMENT_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        let version = get_u32(bytes, 8);
        if version != LAYOUT_VERSION {
            return Err(LayoutError::Version(version));
        }
        let word = get_u32(bytes, STATE_OFFSET);
        let state = SegmentState::from_word(word).ok_or(LayoutError::BadState(word))?;
        let plen = bytes[16..64].iter().position(|&b| b == 0).unwrap_or(48);
        let producer = String::from_utf8_lossy(&bytes[16..16 + plen]).into_owned();
        let n = get_u32(bytes, 64) as usize;
        let total_size = get_u64(bytes, 72);
        let rows = get_u64(bytes, 80);
        if bytes.len() < SEGMENT_FIXED + n * ENTRY_SIZE || total_size > available {
            return Err(LayoutError::Truncated);
        }
        let mut columns = Vec::with_capacity(n);
        for i in 0..n {
            let at = SEGMENT_FIXED + i * ENTRY_SIZE;
            let c = ColumnEntry::read(&bytes[at..at + ENTRY_SIZE])?;
            check_placement(&c, total_size)?;
            columns.push(c);
        }
        Ok(SegmentHeader {
            state,
            producer,
            rows,
            total_size,
            columns,
        })
    }
}

/// Describes the chunk a view belongs to, written at the start of the view directory.
///
/// On the wire every field is fixed-width (8 bytes), so a chunk's control message has the same
/// size whatever the amount of data behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpan {
    #[serde(with = "fixed_u64")]
    pub index: u64,
    #[serde(with = "fixed_u64")]
    pub row_start: u64,
    #[serde(with = "fixed_u64")]
    pub row_count: u64,
    #[serde(with = "fixed_u64")]
    pub total_rows: u64,
}

/// `u64` as 8 little-endian bytes, where postcard would otherwise use a variable-length integer.
pub(crate) mod fixed_u64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        v.to_le_bytes().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        <[u8; 8]>::deserialize(d).map(u64::from_le_bytes)
    }
}

/// The directory at the start of an engine's input or output view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewDirectory {
    pub chunk: ChunkSpan,
    /// Size of the whole view, directory included.
    pub view_size: u64,
    pub columns: Vec<ColumnEntry>,
}

impl ViewDirectory {
    pub fn encoded_len(n_columns: usize) -> usize {
        VIEW_FIXED + n_columns * ENTRY_SIZE
    }

    pub fn encode_into(&self, out: &mut [u8]) -> Result<(), LayoutError> {
        let len = Self::encoded_len(self.columns.len());
        if out.len() < len {
            return Err(LayoutError::Truncated);
        }
        out[..len].fill(0);
        out[..8].copy_from_slice(&VIEW_MAGIC);
        put_u32(out, 8, LAYOUT_VERSION);
        put_u32(out, 12, self.columns.len() as u32);
        put_u64(out, 16, self.chunk.index);
        put_u64(out, 24, self.chunk.row_start);
        put_u64(out, 32, self.chunk.row_count);
        put_u64(out, 40, self.chunk.total_rows);
        put_u64(out, 48, self.view_size);
        for (i, c) in self.columns.iter().enumerate() {
            let at = VIEW_FIXED + i * ENTRY_SIZE;
            c.write(&mut out[at..at + ENTRY_SIZE])?;
        }
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<ViewDirectory, LayoutError> {
        if bytes.len() < VIEW_FIXED || bytes[..8] != VIEW_MAGIC {
            return Err(LayoutError::BadMagic);
        }
        let version = get_u32(bytes, 8);
        if version != LAYOUT_VERSION {
            return Err(LayoutError::Version(version));
        }
        let n = get_u32(bytes, 12) as usize;
        if bytes.len() < Self::encoded_len(n) {
            return Err(LayoutError::Truncated);
        }
        let view_size = get_u64(bytes, 48);
        let mut columns = Vec::with_capacity(n);
        for i in 0..n {
            let at = VIEW_FIXED + i * ENTRY_SIZE;
            let c = ColumnEntry::read(&bytes[at..at + ENTRY_SIZE])?;
            check_placement(&c, view_size)?;
            columns.push(c);
        }
        Ok(ViewDirectory {
            chunk: ChunkSpan {
                index: get_u64(bytes, 16),
                row_start: get_u64(bytes, 24),
                row_count: get_u64(bytes, 32),
                total_rows: get_u64(bytes, 40),
            },
            view_size,
            columns,
        })
    }
}

fn check_placement(c: &ColumnEntry, limit: u64) -> Result<(), LayoutError> {
    let nbytes = c
        .shape
        .iter()
        .try_fold(c.dtype.size() as u64, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| LayoutError::BadShape(c.name.clone()))?;
    let end = c.offset.checked_add(nbytes);
    if !c.offset.is_multiple_of(c.dtype.size() as u64) || end.is_none_or(|e| e > limit) {
        return Err(LayoutError::OutOfBounds(c.name.clone()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("bad magic: not a livecalc segment or view")]
    BadMagic,
    #[error("layout version {0} is not supported (expected {LAYOUT_VERSION})")]
    Version(u32),
    #[error("unknown state word {0}")]
    BadState(u32),
    #[error("unknown dtype code {0}")]
    BadDType(u32),
    #[error("column name {0:?} is empty or longer than 63 bytes")]
    BadName(String),
    #[error("column {0:?} has a shape that is not 1-D or 2-D or disagrees with its size")]
    BadShape(String),
    #[error("column {0:?} lies outside its segment or is misaligned")]
    OutOfBounds(String),
    #[error("header is truncated")]
    Truncated,
}

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_columns_are_aligned_and_round_trip() {
        let h = SegmentHeader::plan(
            "policies",
            3,
            &[
                ("a".into(), DType::Uint8, vec![3]),
                ("b".into(), DType::Float64, vec![3, 5]),
            ],
        );
        for c in &h.columns {
            assert_eq!(c.offset % COLUMN_ALIGN as u64, 0);
        }
        assert_eq!(h.columns[1].offset - h.columns[0].offset, 64);
        let bytes = h.encode().unwrap();
        let back = SegmentHeader::decode(&bytes, h.total_size).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn decode_rejects_columns_past_the_end() {
        let h = SegmentHeader::plan("x", 10, &[("a".into(), DType::Float64, vec![10])]);
        let bytes = h.encode().unwrap();
        assert_eq!(
            SegmentHeader::decode(&bytes, h.total_size - 64),
            Err(LayoutError::Truncated)
        );
        let mut v = ViewDirectory {
            chunk: ChunkSpan {
                index: 0,
                row_start: 0,
                row_count: 1,
                total_rows: 1,
            },
            view_size: 100,
            columns: vec![ColumnEntry {
                name: "a".into(),
                dtype: DType::Float64,
                shape: vec![10],
                offset: 64,
            }],
        };
        let mut buf = vec![0u8; 256];
        v.encode_into(&mut buf).unwrap();
        assert_eq!(
            ViewDirectory::decode(&buf),
            Err(LayoutError::OutOfBounds("a".into()))
        );
        v.view_size = 144;
        v.encode_into(&mut buf).unwrap();
        assert_eq!(ViewDirectory::decode(&buf).unwrap(), v);
    }
}
