//! Views in ordinary memory, with exactly the layout a worker hands to `runChunk`.
//!
//! For engine tests and benchmarks that call an engine directly, without a supervisor or shared
//! memory: build the input view from columns, an output view from zeroed columns, call the
//! engine, read the output columns back by name.

use crate::layout::{align_up, ChunkSpan, ColumnEntry, DType, ViewDirectory, COLUMN_ALIGN};

/// A plain-data element type of a column.
pub trait Element: Copy + 'static {
    const DTYPE: DType;
}
impl Element for f64 {
    const DTYPE: DType = DType::Float64;
}
impl Element for f32 {
    const DTYPE: DType = DType::Float32;
}
impl Element for i64 {
    const DTYPE: DType = DType::Int64;
}
impl Element for i32 {
    const DTYPE: DType = DType::Int32;
}
impl Element for u8 {
    const DTYPE: DType = DType::Uint8;
}

/// A column to place: full name (`"<binding>.<column>"`), shape, and its bytes.
#[derive(Debug, Clone)]
pub struct ColumnData {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

impl ColumnData {
    pub fn new<T: Element>(name: &str, shape: &[u64], values: &[T]) -> ColumnData {
        assert_eq!(
            shape.iter().product::<u64>() as usize,
            values.len(),
            "column {name}: shape does not match the number of values"
        );
        // SAFETY: T is one of the plain numeric types above (no padding, any bit pattern
        // valid); the byte slice covers exactly the values.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        };
        ColumnData {
            name: name.to_string(),
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            bytes: bytes.to_vec(),
        }
    }

    pub fn zeros<T: Element>(name: &str, shape: &[u64]) -> ColumnData {
        let n = shape.iter().product::<u64>() as usize;
        ColumnData {
            name: name.to_string(),
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            bytes: vec![0; n * T::DTYPE.size()],
        }
    }
}

/// A 64-byte-aligned buffer holding a view directory and its columns.
#[derive(Debug)]
pub struct OwnedView {
    storage: Vec<u128>,
    offset: usize,
    len: usize,
    directory: ViewDirectory,
}

impl OwnedView {
    pub fn build(chunk: ChunkSpan, columns: Vec<ColumnData>) -> OwnedView {
        let mut at = align_up(ViewDirectory::encoded_len(columns.len()), COLUMN_ALIGN);
        let mut entries = Vec::with_capacity(columns.len());
        for c in &columns {
            entries.push(ColumnEntry {
                name: c.name.clone(),
                dtype: c.dtype,
                shape: c.shape.clone(),
                offset: at as u64,
            });
            at = align_up(at + c.bytes.len(), COLUMN_ALIGN);
        }
        let len = at;
        let storage = vec![0u128; len.div_ceil(16) + 4];
        let offset = (COLUMN_ALIGN - (storage.as_ptr() as usize % COLUMN_ALIGN)) % COLUMN_ALIGN;
        let directory = ViewDirectory {
            chunk,
            view_size: len as u64,
            columns: entries,
        };
        let mut view = OwnedView {
            storage,
            offset,
            len,
            directory,
        };
        let dir = view.directory.clone();
        dir.encode_into(view.bytes_mut())
            .expect("column names and shapes are valid");
        for (c, e) in columns.iter().zip(&dir.columns) {
            let o = e.offset as usize;
            view.bytes_mut()[o..o + c.bytes.len()].copy_from_slice(&c.bytes);
        }
        view
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: storage holds at least offset + len bytes (len/16 + 4 u128s, offset < 64).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.storage.as_mut_ptr().cast::<u8>().add(self.offset),
                self.len,
            )
        }
    }

    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: offset < 64 lies inside storage.
        unsafe { self.storage.as_ptr().cast::<u8>().add(self.offset) }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: offset < 64 lies inside storage.
        unsafe { self.storage.as_mut_ptr().cast::<u8>().add(self.offset) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A column's values, copied out.
    pub fn column<T: Element>(&self, name: &str) -> Vec<T> {
        let e = self
            .directory
            .columns
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no column {name}"));
        assert_eq!(e.dtype, T::DTYPE, "column {name} has dtype {}", e.dtype);
        let n = e.elements() as usize;
        // SAFETY: the entry lies inside the view (checked by construction) and is aligned for T
        // (64-byte aligned start); T accepts any bit pattern.
        unsafe {
            std::slice::from_raw_parts(self.as_ptr().add(e.offset as usize).cast::<T>(), n).to_vec()
        }
    }
}
