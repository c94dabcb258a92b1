//! Files in and out of the bus: CSV and Parquet sources into segments, segments into Parquet.
//!
//! Reading goes through arrow-rs with the declared schema, so a malformed value is reported with
//! its file, row and column before any engine runs. Writing builds Arrow arrays over the
//! segment's columns (2-D columns become fixed-size lists) and writes through a temporary file
//! renamed into place, so a reader never sees half a file.

use crate::config::model::{ColumnSpec, ColumnType, DataSource, Dim, SourceFormat};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt8Type};
use arrow_array::{
    Array, ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, UInt8Array,
};
use arrow_schema::{DataType, Field, Schema};
use livecalc_protocol::layout::{ColumnEntry, DType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

fn arrow_type(d: DType) -> DataType {
    match d {
        DType::Float64 => DataType::Float64,
        DType::Float32 => DataType::Float32,
        DType::Int64 => DataType::Int64,
        DType::Int32 => DataType::Int32,
        DType::Uint8 => DataType::UInt8,
    }
}

fn dtype_of(t: &DataType) -> Option<DType> {
    Some(match t {
        DataType::Float64 => DType::Float64,
        DataType::Float32 => DType::Float32,
        DataType::Int64 => DType::Int64,
        DataType::Int32 => DType::Int32,
        DataType::UInt8 => DType::Uint8,
        _ => return None,
    })
}

/// Check a source file against its declared columns (or infer them) and count its rows.
pub fn inspect(
    path: &Path,
    format: SourceFormat,
    declared: Option<&[ColumnSpec]>,
) -> Result<(Vec<ColumnSpec>, u64), String> {
    let (schema, rows) = match format {
        SourceFormat::Csv => {
            let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let (schema, records) = arrow_csv::reader::Format::default()
                .with_header(true)
                .infer_schema(BufReader::new(&mut f), None)
                .map_err(|e| format!("{}: not a readable CSV file: {e}", path.display()))?;
            (schema, records as u64)
        }
        SourceFormat::Parquet => {
            let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let b = ParquetRecordBatchReaderBuilder::try_new(f)
                .map_err(|e| format!("{}: not a readable Parquet file: {e}", path.display()))?;
            let rows = b.metadata().file_metadata().num_rows().max(0) as u64;
            (b.schema().as_ref().clone(), rows)
        }
        SourceFormat::Sequence => unreachable!("sequences have no file"),
    };
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    match declared {
        Some(cols) => {
            let missing: Vec<&str> = cols
                .iter()
                .filter(|c| !names.contains(&c.name.as_str()))
                .map(|c| c.name.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{}: no column(s) {} in the file (it has: {})",
                    path.display(),
                    missing.join(", "),
                    names.join(", ")
                ));
            }
            if let Some(c) = cols.iter().find(|c| c.shape.len() != 1) {
                return Err(format!(
                    "column '{}': data-source columns are one-dimensional",
                    c.name
                ));
            }
            Ok((cols.to_vec(), rows))
        }
        None => {
            let mut cols = Vec::new();
            for f in schema.fields() {
                // CSV inference widens integers to Int64 and reals to Float64.
                let t = f.data_type();
                let dtype = dtype_of(t).ok_or_else(|| {
                    format!(
                        "{}: column '{}' is {t}; declare it under 'columns' (text columns as {{\"dtype\": \"category\", \"levels\": [..]}})",
                        path.display(),
                        f.name()
                    )
                })?;
                cols.push(ColumnSpec {
                    name: f.name().clone(),
                    ty: ColumnType::Plain(dtype),
                    shape: vec![Dim::Rows],
                });
            }
            Ok((cols, rows))
        }
    }
}

/// Destination of one column while loading: the mapped bytes of the column in its segment.
#[derive(Debug)]
pub struct ColumnSink<'a> {
    pub spec: &'a ColumnSpec,
    pub bytes: &'a mut [u8],
}

/// Fill `sinks` (one per declared column, in order) from a source. Returns rows written.
pub fn load(source: &DataSource, sinks: &mut [ColumnSink<'_>]) -> Result<u64, String> {
    match source.format {
        SourceFormat::Sequence => {
            let out = &mut sinks[0].bytes;
            for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
                chunk.copy_from_slice(&(i as i64).to_le_bytes());
            }
            Ok(source.rows)
        }
        SourceFormat::Csv => load_csv(source, sinks),
        SourceFormat::Parquet => load_parquet(source, sinks),
    }
}

fn place(
    source: &DataSource,
    sink: &mut ColumnSink<'_>,
    array: &dyn Array,
    row0: u64,
    line_offset: u64,
) -> Result<(), String> {
    let file = source
        .path
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let name = &sink.spec.name;
    if array.null_count() > 0 {
        let r = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0) as u64;
        return Err(format!(
            "{file}: row {} (line {}), column '{name}': empty value",
            row0 + r + 1,
            row0 + r + 1 + line_offset
        ));
    }
    match &sink.spec.ty {
        ColumnType::Category { levels } => {
            let strings = array.as_string_opt::<i32>().ok_or_else(|| {
                format!("{file}: column '{name}' is not text but is declared as a category")
            })?;
            let size = 4;
            for (i, s) in strings.iter().enumerate() {
                let s = s.unwrap_or_default();
                let code = levels.iter().position(|l| l == s).ok_or_else(|| {
                    format!(
                        "{file}: row {} (line {}), column '{name}': '{s}' is not one of the declared levels {levels:?}",
                        row0 + i as u64 + 1,
                        row0 + i as u64 + 1 + line_offset
                    )
                })? as i32;
                let at = (row0 as usize + i) * size;
                sink.bytes[at..at + size].copy_from_slice(&code.to_le_bytes());
            }
        }
        ColumnType::Plain(d) => {
            let size = d.size();
            let at = row0 as usize * size;
            let dst = &mut sink.bytes[at..at + array.len() * size];
            macro_rules! copy {
                ($t:ty) => {{
                    let a = array.as_primitive::<$t>();
                    for (chunk, v) in dst.chunks_exact_mut(size).zip(a.values().iter()) {
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                }};
            }
            match d {
                DType::Float64 => copy!(Float64Type),
                DType::Float32 => copy!(Float32Type),
                DType::Int64 => copy!(Int64Type),
                DType::Int32 => copy!(Int32Type),
                DType::Uint8 => copy!(UInt8Type),
            }
        }
    }
    Ok(())
}

fn target_type(spec: &ColumnSpec) -> DataType {
    match &spec.ty {
        ColumnType::Plain(d) => arrow_type(*d),
        ColumnType::Category { .. } => DataType::Utf8,
    }
}

fn load_csv(source: &DataSource, sinks: &mut [ColumnSink<'_>]) -> Result<u64, String> {
    let path = source.path.as_deref().expect("csv sources have a path");
    let mut f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (header, _) = arrow_csv::reader::Format::default()
        .with_header(true)
        .infer_schema(BufReader::new(&mut f), Some(0))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    // Every file column gets a type: declared ones theirs, the rest text (projected away).
    let fields: Vec<Field> = header
        .fields()
        .iter()
        .map(|fld| {
            let t = sinks
                .iter()
                .find(|s| &s.spec.name == fld.name())
                .map(|s| target_type(s.spec))
                .unwrap_or(DataType::Utf8);
            Field::new(fld.name(), t, true)
        })
        .collect();
    let projection: Vec<usize> = sinks
        .iter()
        .map(|s| {
            header
                .fields()
                .iter()
                .position(|f| f.name() == &s.spec.name)
                .expect("inspect checked every declared column")
        })
        .collect();
    let reader = arrow_csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
        .with_header(true)
        .with_batch_size(64 * 1024)
        .with_projection(projection)
        .build(BufReader::new(f))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("{}: {e}", path.display()))?;
        for (k, sink) in sinks.iter_mut().enumerate() {
            place(source, sink, batch.column(k).as_ref(), row, 1)?;
        }
        row += batch.num_rows() as u64;
    }
    Ok(row)
}

fn load_parquet(source: &DataSource, sinks: &mut [ColumnSink<'_>]) -> Result<u64, String> {
    let path = source.path.as_deref().expect("parquet sources have a path");
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let schema = builder.schema().clone();
    let roots: Vec<usize> = sinks
        .iter()
        .map(|s| {
            schema
                .index_of(&s.spec.name)
                .expect("inspect checked every declared column")
        })
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| format!("{}: {e}", path.display()))?;
        for sink in sinks.iter_mut() {
            let col = batch
                .column_by_name(&sink.spec.name)
                .expect("projected column present");
            let want = target_type(sink.spec);
            let cast = arrow_cast::cast(col, &want).map_err(|e| {
                format!(
                    "{}: column '{}' ({}) cannot be read as {want}: {e}",
                    path.display(),
                    sink.spec.name,
                    col.data_type()
                )
            })?;
            place(source, sink, cast.as_ref(), row, 0)?;
        }
        row += batch.num_rows() as u64;
    }
    Ok(row)
}

/// Arrow array over a column's bytes (copied: Parquet encoding needs owned buffers anyway).
fn to_array(entry: &ColumnEntry, bytes: &[u8]) -> ArrayRef {
    macro_rules! prim {
        ($arr:ty, $t:ty, $n:expr) => {{
            let v: Vec<$t> = bytes
                .chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("width")))
                .collect();
            Arc::new(<$arr>::from(v)) as ArrayRef
        }};
    }
    let flat: ArrayRef = match entry.dtype {
        DType::Float64 => prim!(Float64Array, f64, 8),
        DType::Float32 => prim!(Float32Array, f32, 4),
        DType::Int64 => prim!(Int64Array, i64, 8),
        DType::Int32 => prim!(Int32Array, i32, 4),
        DType::Uint8 => Arc::new(UInt8Array::from(bytes.to_vec())),
    };
    if entry.shape.len() == 1 {
        return flat;
    }
    let width = entry.shape[1] as i32;
    let field = Arc::new(Field::new("item", arrow_type(entry.dtype), false));
    Arc::new(
        arrow_array::FixedSizeListArray::try_new(field, width, flat, None)
            .expect("length is rows * width"),
    )
}

/// Write columns (each `(entry, its bytes)`) as one Parquet table at `dest`, atomically.
/// Returns the file's size in bytes.
pub fn write_parquet(dest: &Path, columns: &[(ColumnEntry, &[u8])]) -> Result<u64, String> {
    let arrays: Vec<(String, ArrayRef)> = columns
        .iter()
        .map(|(e, b)| (e.name.clone(), to_array(e, b)))
        .collect();
    let schema = Arc::new(Schema::new(
        arrays
            .iter()
            .map(|(n, a)| Field::new(n, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), arrays.into_iter().map(|(_, a)| a).collect())
        .map_err(|e| format!("cannot assemble {}: {e}", dest.display()))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dest.with_extension(format!("parquet.tmp-{}", std::process::id()));
    let result = (|| -> Result<u64, String> {
        let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_created_by(format!("livecalc {}", env!("CARGO_PKG_VERSION")))
            .build();
        let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| e.to_string())?;
        w.write(&batch).map_err(|e| e.to_string())?;
        let file = w.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        std::fs::rename(&tmp, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        Ok(len)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
