//! The data bus moves bulk data only through shared memory: the control bytes exchanged per
//! chunk are the same for a 1 MiB and a 1 GiB input, while the engine provably reads every
//! byte (its checksum of the input is exact).

use livecalc_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

fn run_checksum(rows: u64, workers: u32) -> Value {
    let dir = TempDir::new("bus");
    let dag = json!({
        "version": 1,
        "data_sources": {"data": {"sequence": {"rows": rows}}},
        "engines": [{
            "id": "sum", "type": "cpp_checksum", "inputs": {"data": "data"},
            "chunk_size": 1 << 17, "workers": workers, "timeout_s": 120,
            "outputs": {"checksum": {"reduce": "sum", "columns": {
                "total": {"dtype": "int64", "shape": [1]},
                "rows": {"dtype": "int64", "shape": [1]}}}}
        }],
        "output": ["sum.checksum"]
    });
    let path = write_dag(dir.path(), &dag);
    let out = dir.join("out");
    let f = run_supervisor(
        &[
            "run",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert_eq!(f.code, 0, "{}", f.stderr);
    let cols = read_parquet(&out.join("sum/checksum.parquet"));
    let n = rows as i64;
    assert_eq!(
        i64_column(&cols, "total"),
        vec![n * (n - 1) / 2],
        "the engine read every row"
    );
    assert_eq!(i64_column(&cols, "rows"), vec![n]);
    f.manifest(&out)
}

#[test]
fn control_bytes_per_chunk_do_not_grow_with_the_data() {
    // 1 MiB and 1 GiB of int64, in chunks of 1 MiB.
    let small = run_checksum(1 << 17, 2);
    let large = run_checksum(1 << 27, 2);
    let per_chunk = |m: &Value| -> Vec<u64> {
        m["nodes"][0]["control_bytes"]["per_chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let s = per_chunk(&small);
    let l = per_chunk(&large);
    assert_eq!(s.len(), 1);
    assert_eq!(l.len(), 1024);
    assert!(
        s[0] > 0 && s[0] < 200,
        "a chunk costs a few dozen bytes of control, not data: {}",
        s[0]
    );
    assert!(
        l.iter().all(|&b| b == s[0]),
        "1 GiB chunks cost {:?}.. bytes, 1 MiB chunk {}",
        &l[..4],
        s[0]
    );
    let total = large["nodes"][0]["control_bytes"]["total"]
        .as_u64()
        .unwrap();
    assert!(
        total < 1 << 20,
        "all control traffic for 1 GiB is {total} bytes"
    );
}
