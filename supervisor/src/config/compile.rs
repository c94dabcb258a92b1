//! From JSON text to a validated [`Dag`], collecting every problem with its JSON path.
//!
//! Stages: parse the text; expand `${VAR}` in every string; check the document's shape key by
//! key (unknown keys are errors); read data-source metadata (existence, columns, row counts);
//! resolve inputs; order the graph (a cycle is spelled out as `a -> b -> a`); check that each
//! connected input gets the columns, dtypes and shapes it expects. The compiler never stops at
//! the first problem: a user fixes a DAG in one pass, not ten.

use super::model::*;
use crate::bus::files as sources;
use livecalc_protocol::{Credentials, DType};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem, located by JSON path (`$.engines[1].inputs.policies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one DAG file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {} problem(s)\n{}", .problems.len(), render(.problems))]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Built-in engine types and the worker that hosts each.
pub const BUILTIN_TYPES: &[(&str, &str)] = &[
    ("cpp_my_engine", "cpp"),
    ("cpp_projection", "cpp"),
    ("cpp_pv_statistics", "cpp"),
    ("cpp_checksum", "cpp"),
    ("python_hello", "python"),
    ("python_esg", "python"),
    ("python_solver", "python"),
];

const DEFAULT_CHUNK_SIZE: u64 = 4096;
const DEFAULT_TIMEOUT_S: f64 = 300.0;
const DEFAULT_STARTUP_TIMEOUT_S: f64 = 30.0;

/// Read and compile a DAG file, with `env` standing in for the process environment.
pub fn compile_file(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Dag, ConfigError> {
    let fail = |message: String| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            path: "$".into(),
            message,
        }],
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the DAG file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("the DAG file is not UTF-8".into()))?;
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    compile_str(&text, path, &dir, env)
}

/// Compile DAG text; relative paths resolve against `dir`.
pub fn compile_str(
    text: &str,
    path: &Path,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Dag, ConfigError> {
    let err = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let mut value: Value = serde_json::from_str(text).map_err(|e| {
        err(vec![Problem {
            path: format!("line {} column {}", e.line(), e.column()),
            message: format!("malformed JSON: {e}"),
        }])
    })?;
    let mut p = Problems::default();
    expand_vars(&mut value, "$", env, &mut p);
    let hash = hex(&Sha256::digest(text.as_bytes()));
    let dag = Compiler {
        dir: dir.to_path_buf(),
        p: &mut p,
        env,
    }
    .compile(&value, path, hash);
    if p.0.is_empty() {
        let mut dag = dag.expect("a DAG is produced whenever no problem was recorded");
        dag.resolved_hash = resolved_identity(&value, &dag);
        Ok(dag)
    } else {
        Err(err(p.0))
    }
}

/// What a run's results depend on, beyond the DAG's text: the DAG after `${VAR}` expansion,
/// and the size and modification time of every file it names (data sources, and any string in
/// an engine config that names an existing file). `--resume` accepts a journal only when this
/// is unchanged, so it never mixes chunks computed from different inputs.
fn resolved_identity(expanded: &Value, dag: &Dag) -> String {
    fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut h = Sha256::new();
    h.update(expanded.to_string().as_bytes());
    let mut named = Vec::new();
    strings(expanded, &mut named);
    let mut files: Vec<std::path::PathBuf> =
        dag.sources.iter().filter_map(|s| s.path.clone()).collect();
    files.extend(
        named
            .iter()
            .map(|s| dag.dir.join(s))
            .filter(|p| p.is_file()),
    );
    files.sort();
    files.dedup();
    for f in files {
        if let Ok(meta) = std::fs::metadata(&f) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            h.update(format!("\n{}\t{}\t{mtime}", f.display(), meta.len()).as_bytes());
        }
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replace `${NAME}` in every string; `$${` escapes a literal `${`.
fn expand_vars(v: &mut Value, path: &str, env: &dyn Fn(&str) -> Option<String>, p: &mut Problems) {
    match v {
        Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                if rest[..i].ends_with('$') {
                    out.push_str(&rest[..i - 1]);
                    out.push_str("${");
                    rest = &rest[i + 2..];
                    continue;
                }
                out.push_str(&rest[..i]);
                let Some(end) = rest[i..].find('}') else {
                    p.add(path, format!("unterminated '${{' in {s:?}"));
                    return;
                };
                let name = &rest[i + 2..i + end];
                match env(name) {
                    Some(val) => out.push_str(&val),
                    None => p.add(
                        path,
                        format!("environment variable '{name}' is not defined"),
                    ),
                }
                rest = &rest[i + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_vars(x, &format!("{path}[{i}]"), env, p);
            }
        }
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                expand_vars(x, &format!("{path}.{k}"), env, p);
            }
        }
        _ => {}
    }
}

struct Compiler<'a> {
    dir: PathBuf,
    p: &'a mut Problems,
    env: &'a dyn Fn(&str) -> Option<String>,
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], path: &str, p: &mut Problems) {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            p.add(
                format!("{path}.{k}"),
                format!(
                    "unknown key '{k}' (expected one of: {})",
                    allowed.join(", ")
                ),
            );
        }
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A raw node before graph checks.
struct RawNode {
    index: usize,
    node: Node,
    /// Inputs as written: name -> (producer text, expected columns, path).
    expects: Vec<(String, Vec<ColumnSpec>, String)>,
    chunk_by: Option<String>,
    rows: Option<u64>,
}

impl Compiler<'_> {
    fn compile(&mut self, value: &Value, path: &Path, hash: String) -> Option<Dag> {
        let Some(root) = value.as_object() else {
            self.p.add("$", "the DAG must be a JSON object");
            return None;
        };
        check_keys(
            root,
            &[
                "version",
                "name",
                "description",
                "data_sources",
                "engines",
                "output",
                "am_credentials",
            ],
            "$",
            self.p,
        );
        if let Some(v) = root.get("version") {
            if v.as_u64() != Some(1) {
                self.p.add("$.version", "only version 1 is supported");
            }
        }
        let sources = self.sources(root.get("data_sources"));
        let raw = self.engines(root.get("engines"), &sources);
        let credentials = self.credentials(root.get("am_credentials"));
        let mut nodes = self.graph(raw, &sources);
        self.check_sizes(&nodes);
        self.mark_warm(&mut nodes);
        let outputs = self.outputs(root.get("output"), &nodes);
        Some(Dag {
            path: path.to_path_buf(),
            dir: self.dir.clone(),
            hash,
            resolved_hash: String::new(),
            sources,
            nodes,
            outputs,
            credentials,
        })
    }

    fn sources(&mut self, v: Option<&Value>) -> Vec<DataSource> {
        let Some(v) = v else { return Vec::new() };
        let Some(obj) = v.as_object() else {
            self.p
                .add("$.data_sources", "must be an object of name -> source");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, spec) in obj {
            let path = format!("$.data_sources.{name}");
            if !valid_id(name) {
                self.p.add(
                    &path,
                    "a source name uses letters, digits, '_' and '-' only",
                );
                continue;
            }
            let Some(spec) = spec.as_object() else {
                self.p.add(&path, "must be an object");
                continue;
            };
            check_keys(
                spec,
                &["path", "format", "columns", "sequence", "description"],
                &path,
                self.p,
            );
            if let Some(src) = self.source(name, spec, &path) {
                out.push(src);
            }
        }
        out
    }

    fn source(&mut self, name: &str, spec: &Map<String, Value>, path: &str) -> Option<DataSource> {
        if let Some(seq) = spec.get("sequence") {
            let rows = seq.get("rows").and_then(Value::as_u64);
            let Some(rows) = rows else {
                self.p
                    .add(format!("{path}.sequence"), "expected {\"rows\": N}");
                return None;
            };
            return Some(DataSource {
                name: name.into(),
                path: None,
                format: SourceFormat::Sequence,
                columns: vec![ColumnSpec {
                    name: "value".into(),
                    ty: ColumnType::Plain(DType::Int64),
                    shape: vec![Dim::Rows],
                }],
                rows,
            });
        }
        let Some(file) = spec.get("path").and_then(Value::as_str) else {
            self.p.add(format!("{path}.path"), "missing string 'path'");
            return None;
        };
        let full = self.dir.join(file);
        let format = match spec.get("format").and_then(Value::as_str) {
            Some("csv") => SourceFormat::Csv,
            Some("parquet") => SourceFormat::Parquet,
            Some(other) => {
                self.p.add(
                    format!("{path}.format"),
                    format!("unknown format '{other}' (csv or parquet)"),
                );
                return None;
            }
            None => match full.extension().and_then(|e| e.to_str()) {
                Some("csv") => SourceFormat::Csv,
                Some("parquet") | Some("pq") => SourceFormat::Parquet,
                _ => {
                    self.p.add(
                        format!("{path}.format"),
                        "cannot tell the format from the file name: set 'format'",
                    );
                    return None;
                }
            },
        };
        let declared = match spec.get("columns") {
            Some(c) => Some(self.columns(c, &format!("{path}.columns"), false)?),
            None => None,
        };
        if !full.is_file() {
            self.p.add(
                format!("{path}.path"),
                format!("file not found: {}", full.display()),
            );
            return None;
        }
        match sources::inspect(&full, format, declared.as_deref()) {
            Ok((columns, rows)) => Some(DataSource {
                name: name.into(),
                path: Some(full),
                format,
                columns,
                rows,
            }),
            Err(e) => {
                self.p.add(path, e);
                None
            }
        }
    }

    /// Parse `{"name": "float64" | {"dtype": .., "shape": [..], "levels": [..]}}`.
    fn columns(
        &mut self,
        v: &Value,
        path: &str,
        allow_fixed_first: bool,
    ) -> Option<Vec<ColumnSpec>> {
        let Some(obj) = v.as_object() else {
            self.p
                .add(path, "must be an object of column name -> dtype");
            return None;
        };
        if obj.is_empty() {
            self.p.add(path, "declares no columns");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (name, spec) in obj {
            let cpath = format!("{path}.{name}");
            if name.is_empty() || name.len() > 40 || name.contains('.') {
                self.p
                    .add(&cpath, "a column name is 1-40 characters without '.'");
                ok = false;
                continue;
            }
            let (dtype_v, shape_v, levels_v) = match spec {
                Value::String(_) => (Some(spec), None, None),
                Value::Object(o) => {
                    check_keys(o, &["dtype", "shape", "levels"], &cpath, self.p);
                    (o.get("dtype"), o.get("shape"), o.get("levels"))
                }
                _ => (None, None, None),
            };
            let Some(dtype_s) = dtype_v.and_then(Value::as_str) else {
                self.p
                    .add(&cpath, "expected a dtype string or {\"dtype\": ...}");
                ok = false;
                continue;
            };
            let ty = if dtype_s == "category" {
                let levels: Option<Vec<String>> = levels_v.and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                });
                match levels {
                    Some(l) if !l.is_empty() => ColumnType::Category { levels: l },
                    _ => {
                        self.p.add(
                            &cpath,
                            "a category column needs a non-empty 'levels' list of strings",
                        );
                        ok = false;
                        continue;
                    }
                }
            } else if let Some(d) = DType::parse(dtype_s) {
                ColumnType::Plain(d)
            } else {
                self.p.add(
                    format!("{cpath}.dtype"),
                    format!("unknown dtype '{dtype_s}' (float64, float32, int64, int32, uint8, category)"),
                );
                ok = false;
                continue;
            };
            let shape = match shape_v {
                None => vec![Dim::Rows],
                Some(Value::Array(dims)) if (1..=2).contains(&dims.len()) => {
                    let mut shape = Vec::new();
                    for (i, d) in dims.iter().enumerate() {
                        match d {
                            Value::String(s) if s == "rows" && i == 0 => shape.push(Dim::Rows),
                            Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => {
                                shape.push(Dim::Fixed(n.as_u64().unwrap_or(1)))
                            }
                            _ => {
                                self.p.add(
                                    format!("{cpath}.shape[{i}]"),
                                    "a dimension is a positive integer, or \"rows\" in first place",
                                );
                                ok = false;
                            }
                        }
                    }
                    shape
                }
                Some(_) => {
                    self.p.add(
                        format!("{cpath}.shape"),
                        "a shape is a list of one or two dimensions",
                    );
                    ok = false;
                    continue;
                }
            };
            if !allow_fixed_first && shape.first() != Some(&Dim::Rows) {
                self.p.add(
                    format!("{cpath}.shape"),
                    "the first dimension of a row-wise column must be \"rows\"",
                );
                ok = false;
            }
            if allow_fixed_first && shape.contains(&Dim::Rows) {
                self.p.add(
                    format!("{cpath}.shape"),
                    "a per-chunk (reduced) column has fixed dimensions only",
                );
                ok = false;
            }
            if allow_fixed_first && shape.len() != 1 {
                self.p.add(
                    format!("{cpath}.shape"),
                    "a per-chunk (reduced) column is one-dimensional",
                );
                ok = false;
            }
            out.push(ColumnSpec {
                name: name.clone(),
                ty,
                shape,
            });
        }
        ok.then_some(out)
    }

    fn engines(&mut self, v: Option<&Value>, sources: &[DataSource]) -> Vec<RawNode> {
        let Some(v) = v else {
            self.p.add("$.engines", "missing list 'engines'");
            return Vec::new();
        };
        let Some(list) = v.as_array() else {
            self.p.add("$.engines", "must be a list of engines");
            return Vec::new();
        };
        if list.is_empty() {
            self.p.add("$.engines", "the DAG has no engines");
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, e) in list.iter().enumerate() {
            let path = format!("$.engines[{i}]");
            let Some(obj) = e.as_object() else {
                self.p.add(&path, "an engine must be an object");
                continue;
            };
            check_keys(
                obj,
                &[
                    "id",
                    "type",
                    "description",
                    "config",
                    "inputs",
                    "outputs",
                    "chunk_by",
                    "rows",
                    "workers",
                    "chunk_size",
                    "timeout_s",
                    "startup_timeout_s",
                    "retry",
                    "restart_limit",
                    "on_failure",
                    "accept_partial_inputs",
                    "memory_limit_mb",
                    "faults",
                    "evaluates",
                ],
                &path,
                self.p,
            );
            let Some(id) = obj.get("id").and_then(Value::as_str) else {
                self.p.add(format!("{path}.id"), "missing string 'id'");
                continue;
            };
            if !valid_id(id) {
                self.p.add(
                    format!("{path}.id"),
                    format!("'{id}' is not a valid id (letters, digits, '_', '-'; at most 40)"),
                );
                continue;
            }
            if let Some(first) = seen.insert(id.to_string(), i) {
                self.p.add(
                    format!("{path}.id"),
                    format!("duplicate id '{id}' (also $.engines[{first}].id)"),
                );
                continue;
            }
            if sources.iter().any(|s| s.name == id) {
                self.p.add(
                    format!("{path}.id"),
                    format!("'{id}' is also the name of a data source"),
                );
            }
            if let Some(n) = self.engine(i, id, obj, &path) {
                out.push(n);
            }
        }
        out
    }

    fn engine(
        &mut self,
        index: usize,
        id: &str,
        obj: &Map<String, Value>,
        path: &str,
    ) -> Option<RawNode> {
        let type_name = obj.get("type").and_then(Value::as_str);
        let kind = match type_name {
            None => {
                self.p.add(format!("{path}.type"), "missing string 'type'");
                None
            }
            Some(t) => match resolve_type(t) {
                Ok(k) => Some(k),
                Err(m) => {
                    self.p.add(format!("{path}.type"), m);
                    None
                }
            },
        };
        let config = obj
            .get("config")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        if !config.is_object() {
            self.p.add(format!("{path}.config"), "must be an object");
        }
        let mut inputs = Vec::new();
        let mut expects = Vec::new();
        if let Some(iv) = obj.get("inputs") {
            match iv.as_object() {
                None => self.p.add(
                    format!("{path}.inputs"),
                    "must be an object of input name -> producer",
                ),
                Some(im) => {
                    for (name, spec) in im {
                        let ipath = format!("{path}.inputs.{name}");
                        if !valid_id(name) {
                            self.p.add(
                                &ipath,
                                "an input name uses letters, digits, '_' and '-' only",
                            );
                            continue;
                        }
                        let (from, cols) = match spec {
                            Value::String(s) => (Some(s.as_str()), None),
                            Value::Object(o) => {
                                check_keys(o, &["from", "columns"], &ipath, self.p);
                                (o.get("from").and_then(Value::as_str), o.get("columns"))
                            }
                            _ => (None, None),
                        };
                        let Some(from) = from else {
                            self.p.add(
                                &ipath,
                                "expected \"source\", \"node.output\" or {\"from\": ..}",
                            );
                            continue;
                        };
                        let producer = match from.split_once('.') {
                            Some((n, o)) => Producer::Node {
                                node: n.into(),
                                output: o.into(),
                            },
                            None => Producer::Source(from.into()),
                        };
                        let expected = match cols {
                            Some(c) => self
                                .columns(c, &format!("{ipath}.columns"), false)
                                .unwrap_or_default(),
                            None => Vec::new(),
                        };
                        inputs.push(InputSpec {
                            name: name.clone(),
                            from: producer,
                            chunked: false,
                        });
                        expects.push((name.clone(), expected, ipath));
                    }
                }
            }
        }
        let mut outputs = Vec::new();
        match obj.get("outputs").and_then(Value::as_object) {
            None => self.p.add(
                format!("{path}.outputs"),
                "missing object 'outputs' (output name -> columns)",
            ),
            Some(om) => {
                for (name, spec) in om {
                    let opath = format!("{path}.outputs.{name}");
                    if !valid_id(name) {
                        self.p.add(
                            &opath,
                            "an output name uses letters, digits, '_' and '-' only",
                        );
                        continue;
                    }
                    let Some(so) = spec.as_object() else {
                        self.p.add(&opath, "must be an object with 'columns'");
                        continue;
                    };
                    check_keys(so, &["columns", "reduce"], &opath, self.p);
                    let reduce = match so.get("reduce").map(|r| r.as_str()) {
                        None => None,
                        Some(Some("sum")) => Some(Reduce::Sum),
                        Some(Some("first")) => Some(Reduce::First),
                        Some(_) => {
                            self.p
                                .add(format!("{opath}.reduce"), "expected \"sum\" or \"first\"");
                            continue;
                        }
                    };
                    let Some(cv) = so.get("columns") else {
                        self.p
                            .add(format!("{opath}.columns"), "missing object 'columns'");
                        continue;
                    };
                    let Some(columns) =
                        self.columns(cv, &format!("{opath}.columns"), reduce.is_some())
                    else {
                        continue;
                    };
                    if columns
                        .iter()
                        .any(|c| matches!(c.ty, ColumnType::Category { .. }))
                    {
                        self.p.add(
                            format!("{opath}.columns"),
                            "category columns are for data sources; outputs use int32",
                        );
                    }
                    if reduce.is_some() {
                        let lens: HashSet<Vec<Dim>> =
                            columns.iter().map(|c| c.shape.clone()).collect();
                        if lens.len() > 1 {
                            self.p.add(
                                format!("{opath}.columns"),
                                "the columns of a reduced output must share one shape",
                            );
                        }
                    }
                    outputs.push(OutputSpec {
                        name: name.clone(),
                        columns,
                        reduce,
                    });
                }
            }
        }
        let positive_u64 = |p: &mut Problems, key: &str, default: u64| -> u64 {
            match obj.get(key) {
                None => default,
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 => n,
                    _ => {
                        p.add(format!("{path}.{key}"), "must be a positive integer");
                        default
                    }
                },
            }
        };
        let workers = positive_u64(self.p, "workers", 1).min(256) as u32;
        let chunk_size = positive_u64(self.p, "chunk_size", DEFAULT_CHUNK_SIZE);
        let seconds = |p: &mut Problems, key: &str, default: f64| -> Duration {
            match obj.get(key) {
                None => Duration::from_secs_f64(default),
                Some(v) => match v.as_f64() {
                    Some(s) if s > 0.0 && s < 1e7 => Duration::from_secs_f64(s),
                    _ => {
                        p.add(
                            format!("{path}.{key}"),
                            "must be a positive number of seconds",
                        );
                        Duration::from_secs_f64(default)
                    }
                },
            }
        };
        let timeout = seconds(self.p, "timeout_s", DEFAULT_TIMEOUT_S);
        let startup_timeout = seconds(self.p, "startup_timeout_s", DEFAULT_STARTUP_TIMEOUT_S);
        let retry = self.retry(obj.get("retry"), &format!("{path}.retry"));
        let restart_limit =
            self.restart_limit(obj.get("restart_limit"), &format!("{path}.restart_limit"));
        let on_failure = match obj.get("on_failure").map(Value::as_str) {
            None | Some(Some("fail")) => OnFailure::Fail,
            Some(Some("partial")) => OnFailure::Partial,
            Some(_) => {
                self.p.add(
                    format!("{path}.on_failure"),
                    "expected \"fail\" or \"partial\"",
                );
                OnFailure::Fail
            }
        };
        let accept_partial_inputs = match obj.get("accept_partial_inputs") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.p.add(
                    format!("{path}.accept_partial_inputs"),
                    "must be true or false",
                );
                false
            }
        };
        let memory_limit_mb = match obj.get("memory_limit_mb") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 16 => Some(n),
                _ => {
                    self.p.add(
                        format!("{path}.memory_limit_mb"),
                        "must be an integer of at least 16 (MiB)",
                    );
                    None
                }
            },
        };
        let faults = obj.get("faults").cloned();
        if let Some(f) = &faults {
            if let Err(e) = livecalc_protocol_faults_check(f) {
                self.p.add(format!("{path}.faults"), e);
            }
        }
        let chunk_by = match obj.get("chunk_by") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.p
                    .add(format!("{path}.chunk_by"), "must be the name of an input");
                None
            }
        };
        let rows = match obj.get("rows") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n),
                None => {
                    self.p
                        .add(format!("{path}.rows"), "must be a non-negative integer");
                    None
                }
            },
        };
        let kind = kind?;
        Some(RawNode {
            index,
            node: Node {
                id: id.into(),
                decl_index: index,
                type_name: type_name.unwrap_or_default().into(),
                kind,
                config,
                inputs,
                outputs,
                rows: 0,
                chunk_size,
                workers,
                timeout,
                startup_timeout,
                retry,
                restart_limit,
                on_failure,
                accept_partial_inputs,
                memory_limit_mb,
                faults,
                evaluates: self.evaluates(obj, type_name.unwrap_or_default(), path),
                warm: false,
            },
            expects,
            chunk_by,
            rows,
        })
    }

    fn retry(&mut self, v: Option<&Value>, path: &str) -> RetryPolicy {
        let mut r = RetryPolicy::default();
        let Some(v) = v else { return r };
        let Some(o) = v.as_object() else {
            self.p.add(path, "must be an object");
            return r;
        };
        check_keys(
            o,
            &[
                "max_attempts",
                "initial_delay_ms",
                "factor",
                "max_delay_ms",
                "jitter",
            ],
            path,
            self.p,
        );
        if let Some(j) = o.get("jitter") {
            match j.as_f64() {
                Some(j) if (0.0..=1.0).contains(&j) => r.jitter = j,
                _ => self
                    .p
                    .add(format!("{path}.jitter"), "must be a number from 0 to 1"),
            }
        }
        if let Some(m) = o.get("max_attempts") {
            match m.as_u64() {
                Some(n) if (1..=100).contains(&n) => r.max_attempts = n as u32,
                _ => self.p.add(
                    format!("{path}.max_attempts"),
                    "must be an integer from 1 to 100",
                ),
            }
        }
        if let Some(d) = o.get("initial_delay_ms").and_then(Value::as_u64) {
            r.initial_delay = Duration::from_millis(d);
        }
        if let Some(f) = o.get("factor").and_then(Value::as_f64) {
            r.factor = f.max(1.0);
        }
        if let Some(d) = o.get("max_delay_ms").and_then(Value::as_u64) {
            r.max_delay = Duration::from_millis(d);
        }
        r
    }

    /// Nodes an engine may re-evaluate: `evaluates` as written, or for the built-in solver the
    /// node part of each `config.parameters[].name` (`"<node>.<key>"`).
    fn evaluates(&mut self, obj: &Map<String, Value>, type_name: &str, path: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(v) = obj.get("evaluates") {
            match v.as_array() {
                Some(a) if a.iter().all(Value::is_string) => {
                    out.extend(a.iter().filter_map(|x| x.as_str().map(String::from)))
                }
                _ => self
                    .p
                    .add(format!("{path}.evaluates"), "must be a list of engine ids"),
            }
        }
        if type_name == "python_solver" {
            let params = obj.get("config").and_then(|c| c.get("parameters"));
            match params.and_then(Value::as_array) {
                None => self.p.add(
                    format!("{path}.config.parameters"),
                    "the solver needs a list of parameters {name: \"<engine>.<config key>\", initial, lower, upper}",
                ),
                Some(list) => {
                    for (k, p) in list.iter().enumerate() {
                        match p.get("name").and_then(Value::as_str).and_then(|n| n.split_once('.')) {
                            Some((node, key)) if !node.is_empty() && !key.is_empty() => {
                                if !out.iter().any(|o| o == node) {
                                    out.push(node.to_string());
                                }
                            }
                            _ => self.p.add(
                                format!("{path}.config.parameters[{k}].name"),
                                "expected \"<engine id>.<config key>\"",
                            ),
                        }
                    }
                }
            }
        }
        out
    }

    fn restart_limit(&mut self, v: Option<&Value>, path: &str) -> RestartLimit {
        let mut r = RestartLimit::default();
        let Some(v) = v else { return r };
        let Some(o) = v.as_object() else {
            self.p
                .add(path, "must be an object {max_restarts, window_s}");
            return r;
        };
        check_keys(o, &["max_restarts", "window_s"], path, self.p);
        if let Some(m) = o.get("max_restarts") {
            match m.as_u64() {
                Some(n) if n <= 10_000 => r.max_restarts = n as u32,
                _ => self.p.add(
                    format!("{path}.max_restarts"),
                    "must be an integer from 0 to 10000",
                ),
            }
        }
        if let Some(w) = o.get("window_s") {
            match w.as_f64() {
                Some(s) if s > 0.0 && s < 1e7 => r.window = Duration::from_secs_f64(s),
                _ => self.p.add(
                    format!("{path}.window_s"),
                    "must be a positive number of seconds",
                ),
            }
        }
        r
    }

    fn credentials(&mut self, v: Option<&Value>) -> Option<Credentials> {
        let token_env = (self.env)("LIVECALC_AM_TOKEN");
        let Some(v) = v else {
            return token_env.map(|t| Credentials {
                am_url: (self.env)("LIVECALC_AM_URL").unwrap_or_default(),
                am_token: t,
                cache_dir: (self.env)("LIVECALC_AM_CACHE_DIR").unwrap_or_default(),
            });
        };
        let Some(o) = v.as_object() else {
            self.p.add("$.am_credentials", "must be an object");
            return None;
        };
        check_keys(
            o,
            &["am_url", "am_token", "cache_dir"],
            "$.am_credentials",
            self.p,
        );
        let get = |k: &str| o.get(k).and_then(Value::as_str).map(String::from);
        let token = get("am_token").or(token_env);
        let Some(am_token) = token else {
            self.p.add(
                "$.am_credentials.am_token",
                "no token: set 'am_token' (e.g. \"${LIVECALC_AM_TOKEN}\") or LIVECALC_AM_TOKEN",
            );
            return None;
        };
        Some(Credentials {
            am_url: get("am_url").unwrap_or_default(),
            am_token,
            cache_dir: get("cache_dir")
                .map(|c| self.dir.join(c).to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
    }

    /// Resolve inputs, order the graph, size every node and check every edge.
    fn graph(&mut self, raw: Vec<RawNode>, sources: &[DataSource]) -> Vec<Node> {
        let ids: HashMap<String, usize> = raw
            .iter()
            .enumerate()
            .map(|(i, r)| (r.node.id.clone(), i))
            .collect();
        let mut g: DiGraph<usize, ()> = DiGraph::new();
        let idx: Vec<NodeIndex> = (0..raw.len()).map(|i| g.add_node(i)).collect();
        let mut resolvable = vec![true; raw.len()];
        for (i, r) in raw.iter().enumerate() {
            for (inp, (_, _, ipath)) in r.node.inputs.iter().zip(&r.expects) {
                match &inp.from {
                    Producer::Source(s) => {
                        if !sources.iter().any(|x| &x.name == s) {
                            let hint = if ids.contains_key(s) {
                                format!(" ('{s}' is an engine: name one of its outputs, '{s}.<output>')")
                            } else {
                                String::new()
                            };
                            self.p.add(
                                ipath,
                                format!("unresolved input: no data source named '{s}'{hint}"),
                            );
                            resolvable[i] = false;
                        }
                    }
                    Producer::Node { node, output } => match ids.get(node) {
                        None => {
                            self.p.add(
                                ipath,
                                format!("unresolved input: no engine with id '{node}'"),
                            );
                            resolvable[i] = false;
                        }
                        Some(&j) => {
                            if raw[j].node.output(output).is_none() {
                                let have: Vec<_> = raw[j]
                                    .node
                                    .outputs
                                    .iter()
                                    .map(|o| o.name.as_str())
                                    .collect();
                                self.p.add(ipath, format!("unresolved input: engine '{node}' has no output '{output}' (it has: {})", have.join(", ")));
                                resolvable[i] = false;
                            } else {
                                g.add_edge(idx[j], idx[i], ());
                            }
                        }
                    },
                }
            }
        }
        let order = match petgraph::algo::toposort(&g, None) {
            Ok(o) => o,
            Err(cycle) => {
                // Spell the cycle from its first-declared engine, so the message is stable.
                let mut ring = spell_cycle(&g, cycle.node_id());
                ring.pop();
                let first = (0..ring.len())
                    .min_by_key(|&k| raw[g[ring[k]]].index)
                    .unwrap_or(0);
                ring.rotate_left(first);
                let start = g[ring[0]];
                ring.push(ring[0]);
                let names = ring
                    .into_iter()
                    .map(|i| raw[g[i]].node.id.clone())
                    .collect::<Vec<_>>();
                self.p.add(
                    format!("$.engines[{}]", raw[start].index),
                    format!("cycle: {}", names.join(" -> ")),
                );
                return Vec::new();
            }
        };
        // Size nodes in topological order: a node's rows may come from an upstream node's rows.
        let mut done: HashMap<String, Node> = HashMap::new();
        let mut ordered = Vec::new();
        let mut raw: Vec<Option<RawNode>> = raw.into_iter().map(Some).collect();
        for ni in order {
            let i = g[ni];
            let Some(mut r) = raw[i].take() else { continue };
            let path = format!("$.engines[{}]", r.index);
            if !resolvable[i] {
                continue;
            }
            // Schema of each input as produced upstream: (columns, rows, row-wise?).
            let mut produced = Vec::new();
            for inp in &r.node.inputs {
                let found = match &inp.from {
                    Producer::Source(s) => sources
                        .iter()
                        .find(|x| &x.name == s)
                        .map(|x| (x.columns.clone(), x.rows, true)),
                    Producer::Node { node, output } => done.get(node).and_then(|n| {
                        n.output(output).map(|o| {
                            let cols = match o.reduce {
                                None => o.columns.clone(),
                                // A reduced output reaches consumers as row-wise columns of its
                                // fixed length.
                                Some(_) => o
                                    .columns
                                    .iter()
                                    .map(|c| ColumnSpec {
                                        shape: vec![Dim::Rows],
                                        ..c.clone()
                                    })
                                    .collect(),
                            };
                            (cols, o.table_rows(n.rows), true)
                        })
                    }),
                };
                produced.push(found);
            }
            // Which input carries the chunk axis, and how many rows the node has.
            let chunk_input = match &r.chunk_by {
                Some(name) => match r.node.inputs.iter().position(|x| &x.name == name) {
                    Some(k) => Some(k),
                    None => {
                        self.p.add(
                            format!("{path}.chunk_by"),
                            format!("'{name}' is not one of this engine's inputs"),
                        );
                        None
                    }
                },
                None if r.rows.is_some() => None,
                None => r.node.inputs.iter().position(|_| true),
            };
            r.node.rows = match (chunk_input, r.rows) {
                (Some(k), Some(_)) => {
                    self.p.add(
                        format!("{path}.rows"),
                        format!(
                            "set either 'rows' or 'chunk_by' (rows come from input '{}')",
                            r.node.inputs[k].name
                        ),
                    );
                    0
                }
                (Some(k), None) => {
                    r.node.inputs[k].chunked = true;
                    produced[k].as_ref().map(|p| p.1).unwrap_or(0)
                }
                (None, Some(n)) => n,
                (None, None) => {
                    self.p.add(
                        format!("{path}.rows"),
                        "an engine without inputs needs 'rows' (the size of its chunk axis)",
                    );
                    0
                }
            };
            // Edge checks: expected columns against produced ones.
            for (k, (name, expected, ipath)) in r.expects.iter().enumerate() {
                let Some((cols, prod_rows, _)) = &produced[k] else {
                    continue;
                };
                for e in expected {
                    match cols.iter().find(|c| c.name == e.name) {
                        None => self.p.add(
                            format!("{ipath}.columns.{}", e.name),
                            format!(
                                "input '{name}' ({}) has no column '{}'",
                                r.node.inputs[k].from, e.name
                            ),
                        ),
                        Some(c) => {
                            if c.ty.dtype() != e.ty.dtype() {
                                self.p.add(
                                    format!("{ipath}.columns.{}", e.name),
                                    format!(
                                        "dtype mismatch: {} produces {}, this engine expects {}",
                                        r.node.inputs[k].from,
                                        c.ty.dtype(),
                                        e.ty.dtype()
                                    ),
                                );
                            }
                            if c.concrete_shape(*prod_rows) != e.concrete_shape(*prod_rows) {
                                self.p.add(
                                    format!("{ipath}.columns.{}", e.name),
                                    format!("shape mismatch: {} produces {:?}, this engine expects {:?}", r.node.inputs[k].from, shape_text(&c.shape, *prod_rows), shape_text(&e.shape, *prod_rows)),
                                );
                            }
                        }
                    }
                }
            }
            check_builtin_contract(&r.node, &produced, &path, self.p);
            done.insert(r.node.id.clone(), r.node.clone());
            ordered.push(r.node);
        }
        ordered
    }

    /// Every output column must fit in memory arithmetic: at most 2^48 bytes (256 TiB), so no
    /// size computation downstream can overflow.
    fn check_sizes(&mut self, nodes: &[Node]) {
        const LIMIT: u128 = 1 << 48;
        for n in nodes {
            for o in &n.outputs {
                for c in &o.columns {
                    let mut bytes = c.ty.dtype().size() as u128;
                    for d in c.concrete_shape(n.rows) {
                        bytes = bytes.saturating_mul(d as u128);
                    }
                    if o.reduce.is_some() {
                        bytes = bytes.saturating_mul(n.chunk_count().max(1) as u128);
                    }
                    if bytes > LIMIT {
                        self.p.add(
                            format!("$.engines[{}].outputs.{}.columns.{}", n.decl_index, o.name, c.name),
                            format!("column of {bytes} bytes is larger than the 256 TiB any segment may hold"),
                        );
                    }
                }
            }
        }
    }

    /// Check every `evaluates` entry names an upstream engine, and keep warm the engines that
    /// a re-evaluation re-runs: between a parameterised engine and its solver.
    fn mark_warm(&mut self, nodes: &mut [Node]) {
        let index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let ups: Vec<Vec<usize>> = nodes
            .iter()
            .map(|n| {
                n.inputs
                    .iter()
                    .filter_map(|i| match &i.from {
                        Producer::Node { node, .. } => index.get(node).copied(),
                        Producer::Source(_) => None,
                    })
                    .collect()
            })
            .collect();
        for s in 0..nodes.len() {
            if nodes[s].evaluates.is_empty() {
                continue;
            }
            let anc = ancestors(&ups, s);
            for p in nodes[s].evaluates.clone() {
                match index.get(&p) {
                    Some(&pi) if anc.contains(&pi) => {
                        for (k, a) in anc.iter().enumerate() {
                            let _ = k;
                            if *a == pi || ancestors(&ups, *a).contains(&pi) {
                                nodes[*a].warm = true;
                            }
                        }
                    }
                    _ => self.p.add(
                        format!("$.engines[{}].evaluates", nodes[s].decl_index),
                        format!("'{p}' is not an engine upstream of '{}': only upstream engines can be re-evaluated", nodes[s].id),
                    ),
                }
            }
        }
    }

    fn outputs(&mut self, v: Option<&Value>, nodes: &[Node]) -> Vec<OutputRef> {
        let Some(v) = v else {
            // Default: every output of every sink node.
            let consumed: HashSet<&str> = nodes
                .iter()
                .flat_map(|n| n.inputs.iter())
                .filter_map(|i| match &i.from {
                    Producer::Node { node, .. } => Some(node.as_str()),
                    Producer::Source(_) => None,
                })
                .collect();
            return nodes
                .iter()
                .filter(|n| !consumed.contains(n.id.as_str()))
                .flat_map(|n| {
                    n.outputs.iter().map(|o| OutputRef {
                        node: n.id.clone(),
                        output: o.name.clone(),
                    })
                })
                .collect();
        };
        let Some(list) = v.as_array() else {
            self.p
                .add("$.output", "must be a list of \"node.output\" names");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in list.iter().enumerate() {
            let path = format!("$.output[{i}]");
            let Some((node, output)) = item.as_str().and_then(|s| s.split_once('.')) else {
                self.p.add(&path, "expected \"node.output\"");
                continue;
            };
            match nodes.iter().find(|n| n.id == node) {
                None => self.p.add(&path, format!("no engine with id '{node}'")),
                Some(n) if n.output(output).is_none() => self
                    .p
                    .add(&path, format!("engine '{node}' has no output '{output}'")),
                Some(_) => {
                    let r = OutputRef {
                        node: node.into(),
                        output: output.into(),
                    };
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
            }
        }
        out
    }
}

/// Indices of every node upstream of `n`.
fn ancestors(ups: &[Vec<usize>], n: usize) -> Vec<usize> {
    let mut seen = vec![false; ups.len()];
    let mut stack = ups[n].clone();
    let mut out = Vec::new();
    while let Some(x) = stack.pop() {
        if !seen[x] {
            seen[x] = true;
            out.push(x);
            stack.extend(ups[x].iter().copied());
        }
    }
    out
}

fn shape_text(shape: &[Dim], rows: u64) -> Vec<String> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Rows => format!("rows={rows}"),
            Dim::Fixed(n) => n.to_string(),
        })
        .collect()
}

/// Find the cycle through `start` and return it closed (`a, b, a`).
fn spell_cycle(g: &DiGraph<usize, ()>, start: NodeIndex) -> Vec<NodeIndex> {
    // DFS from start looking for a path back to start.
    let mut stack = vec![(start, vec![start])];
    let mut seen = HashSet::new();
    while let Some((n, path)) = stack.pop() {
        for next in g.neighbors(n) {
            if next == start {
                let mut p = path.clone();
                p.push(start);
                return p;
            }
            if seen.insert(next) {
                let mut p = path.clone();
                p.push(next);
                stack.push((next, p));
            }
        }
    }
    vec![start, start]
}

/// `cpp:name`, `python:module:Class` or a built-in name.
pub fn resolve_type(t: &str) -> Result<EngineKind, String> {
    if let Some(name) = t.strip_prefix("cpp:") {
        if valid_id(name) {
            return Ok(EngineKind::Cpp(t.into()));
        }
        return Err(format!(
            "'{t}': a C++ engine name uses letters, digits, '_' and '-'"
        ));
    }
    if let Some(target) = t.strip_prefix("python:") {
        let ok = target.split_once(':').is_some_and(|(m, c)| {
            !m.is_empty()
                && !c.is_empty()
                && m.split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|ch| ch.is_alphanumeric() || ch == '_'))
                && c.chars().all(|ch| ch.is_alphanumeric() || ch == '_')
        });
        if ok {
            return Ok(EngineKind::Python(t.into()));
        }
        return Err(format!("'{t}': expected python:package.module:ClassName"));
    }
    match BUILTIN_TYPES.iter().find(|(n, _)| *n == t) {
        Some((n, "cpp")) => Ok(EngineKind::Cpp((*n).into())),
        Some((n, _)) => Ok(EngineKind::Python((*n).into())),
        None => Err(format!(
            "unknown engine type '{t}' (built in: {}; or cpp:<name>, python:<module>:<Class>)",
            BUILTIN_TYPES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Columns the built-in example engines read, so that a wrong edge is caught before any
/// process starts even when the DAG declares no expectations.
fn check_builtin_contract(
    node: &Node,
    produced: &[Option<(Vec<ColumnSpec>, u64, bool)>],
    path: &str,
    p: &mut Problems,
) {
    let contract: &[(&str, &[(&str, DType)])] = match node.type_name.as_str() {
        "python_hello" => &[(
            "policies",
            &[
                ("policy_id", DType::Int64),
                ("age", DType::Int32),
                ("sum_assured", DType::Float64),
            ],
        )],
        "cpp_my_engine" => &[(
            "priced",
            &[("policy_id", DType::Int64), ("premium", DType::Float64)],
        )],
        _ => &[],
    };
    let mut expected_inputs: BTreeMap<&str, &[(&str, DType)]> = BTreeMap::new();
    for (input, cols) in contract {
        expected_inputs.insert(input, cols);
    }
    for (input, cols) in expected_inputs {
        let Some(k) = node.inputs.iter().position(|i| i.name == input) else {
            p.add(
                format!("{path}.inputs"),
                format!(
                    "engine type '{}' needs an input named '{input}'",
                    node.type_name
                ),
            );
            continue;
        };
        let Some((have, _, _)) = &produced[k] else {
            continue;
        };
        for (col, dtype) in cols {
            match have.iter().find(|c| c.name == *col) {
                None => p.add(
                    format!("{path}.inputs.{input}"),
                    format!(
                        "{} provides no column '{col}' ({dtype}), which '{}' reads",
                        node.inputs[k].from, node.type_name
                    ),
                ),
                Some(c) if c.ty.dtype() != *dtype => p.add(
                    format!("{path}.inputs.{input}"),
                    format!(
                        "dtype mismatch on column '{col}': {} produces {}, '{}' reads {dtype}",
                        node.inputs[k].from,
                        c.ty.dtype(),
                        node.type_name
                    ),
                ),
                Some(_) => {}
            }
        }
    }
}

/// Syntax check of a `faults` list, so a typo fails validation rather than a worker.
fn livecalc_protocol_faults_check(v: &Value) -> Result<(), String> {
    livecalc_protocol::faults::FaultPlan::from_value(v).map(|_| ())
}
