//! The failure baseline: a worker that crashes, hangs, never connects or raises makes the run
//! fail with a message naming node, chunk and cause, exit code 1, and leaves nothing behind.
//! Signals to the supervisor stop every worker and remove every segment; segments of a
//! supervisor killed with SIGKILL are removed by `cleanup` and by the next run.

use livecalc_tests::*;
use rstest::rstest;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The hello DAG, with absolute data paths, optionally tweaked.
fn hello(edit: impl FnOnce(&mut Value)) -> (TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(examples().join("dag_config_hello.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["data_sources"]["policies"]["path"] =
        json!(examples().join("data/hello_policies.csv").to_str().unwrap());
    // The baseline is about reporting: one attempt, no restarts (retries are tested elsewhere).
    for e in v["engines"].as_array_mut().unwrap() {
        e["retry"] = json!({"max_attempts": 1});
        e["restart_limit"] = json!({"max_restarts": 0});
    }
    edit(&mut v);
    let dir = TempDir::new("fail");
    let dag = write_dag(dir.path(), &v);
    (dir, dag)
}

fn run_failing(dir: &TempDir, dag: &std::path::Path) -> (Finished, Value) {
    let out = dir.join("out");
    let f = run_supervisor(
        &["run", dag.to_str().unwrap(), "--out", out.to_str().unwrap()],
        Duration::from_secs(60),
    );
    let m = f.manifest(&out);
    (f, m)
}

/// Engine index in the hello DAG: 0 is the Python rater, 1 the C++ gross-up.
#[rstest]
#[case::segfault(json!({"kind": "segfault", "chunk": 2}), &["chunk 2 (rows 256..384)", "killed by SIGSEGV"])]
#[case::abort(json!({"kind": "abort", "chunk": 1}), &["chunk 1 (rows 128..256)", "killed by SIGABRT"])]
#[case::exit_code(json!({"kind": "exit", "code": 7, "chunk": 3}), &["chunk 3 (rows 384..512)", "exited with code 7"])]
#[case::after_output(json!({"kind": "segfault", "phase": "after_chunk", "chunk": 0}), &["chunk 0 (rows 0..128)", "SIGSEGV"])]
#[case::before_connecting(json!({"kind": "exit", "code": 4, "phase": "connect"}), &["exited before connecting: exited with code 4"])]
#[case::during_initialize(json!({"kind": "exit", "code": 9, "phase": "initialize"}), &["died during initialize: exited with code 9"])]
#[case::injected_error(json!({"kind": "error", "chunk": 4}), &["chunk 4 (rows 512..640)", "InjectedFault"])]
fn a_crashing_worker_fails_the_run_naming_node_chunk_and_cause(
    #[values(0, 1)] engine: usize,
    #[case] fault: Value,
    #[case] expected: &[&str],
) {
    let (dir, dag) = hello(|v| {
        v["engines"][engine]["faults"] = json!([fault]);
        v["engines"][engine]["workers"] = json!(1);
    });
    let (f, m) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "stderr:\n{}", f.stderr);
    assert_eq!(m["status"], "failed");
    let node = if engine == 0 { "rate" } else { "gross" };
    let all = m["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains(&format!("node '{node}'")), "{all}");
    for e in expected {
        assert!(all.contains(e), "errors lack {e:?}:\n{all}");
        assert!(f.stderr.contains(e), "stderr lacks {e:?}:\n{}", f.stderr);
    }
    assert_eq!(m["nodes"][engine]["status"], "failed");
}

#[rstest]
fn a_hung_chunk_times_out(#[values(0, 1)] engine: usize) {
    let (dir, dag) = hello(|v| {
        v["engines"][engine]["faults"] = json!([{"kind": "hang", "chunk": 1}]);
        v["engines"][engine]["timeout_s"] = json!(1);
    });
    let t = Instant::now();
    let (f, m) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("chunk 1 (rows 128..256): timed out after 1.0 s (timeout_s)"),
        "{}",
        f.stderr
    );
    assert_eq!(
        m["nodes"][engine]["chunks"]["failed"][0]["cause"],
        "timeout"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[rstest]
fn a_worker_that_never_connects_fails_the_run(#[values(0, 1)] engine: usize) {
    let (dir, dag) = hello(|v| {
        v["engines"][engine]["faults"] = json!([{"kind": "never_connect"}]);
        v["engines"][engine]["startup_timeout_s"] = json!(1);
    });
    let (f, _) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(
        f.stderr.contains("did not connect within 1.0 s"),
        "{}",
        f.stderr
    );
}

#[test]
fn a_cpp_exception_keeps_its_class() {
    let (dir, dag) = hello(|v| {
        v["engines"][1]["config"]["fail_on_policy_id"] = json!(300);
    });
    let (f, m) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "{}", f.stderr);
    // Policy 300 is row 299, in chunk 2 (rows 256..384).
    assert!(
        f.stderr.contains(
            "node 'gross' chunk 2 (rows 256..384): ExecutionError: policy 300 is marked to fail"
        ),
        "{}",
        f.stderr
    );
    assert_eq!(m["nodes"][0]["status"], "succeeded");
    // The completed node's output is still delivered.
    assert!(dir.join("out/rate/priced.parquet").is_file());
}

#[test]
fn a_python_configuration_error_keeps_its_class_and_traceback_goes_to_the_log() {
    let (dir, dag) = hello(|v| {
        v["engines"][0]["config"] = json!({"age_loading": 0.1});
    });
    let (f, _) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("during initialize: ConfigurationError: missing config key 'base_rate'"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.contains("Traceback (most recent call last)"),
        "{}",
        f.stderr
    );
}

#[test]
fn a_cpp_configuration_error_keeps_its_class() {
    let (dir, dag) = hello(|v| {
        v["engines"][1]["config"] = json!({});
    });
    let (f, _) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("ConfigurationError: Missing required_param"),
        "{}",
        f.stderr
    );
}

#[test]
fn an_unknown_python_module_is_reported() {
    let (dir, dag) = hello(|v| {
        v["engines"][0]["type"] = json!("python:no_such_pkg.engine:Engine");
    });
    let (f, _) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("could not be created: ModuleNotFoundError"),
        "{}",
        f.stderr
    );
}

fn start_hanging_run(tag: &str) -> (TempDir, std::process::Child) {
    let (dir, dag) = hello(|v| {
        v["engines"][0]["faults"] = json!([{"kind": "hang", "chunk": 0}]);
        v["engines"][0]["timeout_s"] = json!(120);
    });
    let _ = tag;
    let out = dir.join("out");
    let child = supervisor()
        .args(["run", dag.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the worker is running the hung chunk: it exists and segments exist.
    let deadline = Instant::now() + Duration::from_secs(20);
    while workers_of(child.id()).is_empty() || segments_of(child.id()).is_empty() {
        assert!(Instant::now() < deadline, "workers never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    (dir, child)
}

#[rstest]
#[case::sigterm(nix::sys::signal::Signal::SIGTERM, "interrupted by SIGTERM")]
#[case::sigint(nix::sys::signal::Signal::SIGINT, "interrupted by SIGINT")]
fn a_signal_stops_every_worker_and_removes_every_segment(
    #[case] sig: nix::sys::signal::Signal,
    #[case] reason: &str,
) {
    let (dir, child) = start_hanging_run("signal");
    let pid = child.id();
    let t = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    let f = wait_supervisor(child, Duration::from_secs(20));
    assert_eq!(f.code, 1, "{}", f.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );
    let m = f.manifest(&dir.join("out"));
    assert_eq!(m["status"], "failed");
    assert!(m["errors"].to_string().contains(reason), "{}", m["errors"]);
}

#[test]
fn segments_of_a_killed_supervisor_are_removed_by_cleanup_and_by_the_next_run() {
    for use_cleanup in [true, false] {
        let (_dir, mut child) = start_hanging_run("kill9");
        let pid = child.id();
        let before = segments_of(pid);
        assert!(!before.is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        // Workers follow their supervisor through the kernel's parent-death signal.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !workers_of(pid).is_empty() {
            assert!(
                Instant::now() < deadline,
                "workers outlived a SIGKILLed supervisor"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            segments_of(pid),
            before,
            "segments stay until someone cleans up"
        );
        if use_cleanup {
            let f = run_supervisor(&["cleanup", "--json"], Duration::from_secs(20));
            assert_eq!(f.code, 0);
            let v: Value = serde_json::from_str(&f.stdout).unwrap();
            for s in &before {
                assert!(
                    v["removed"].to_string().contains(s.as_str()),
                    "{}",
                    f.stdout
                );
            }
        } else {
            let dag = examples().join("dag_config_hello.json");
            let out = TempDir::new("next");
            let f = run_supervisor(
                &[
                    "run",
                    dag.to_str().unwrap(),
                    "--out",
                    out.join("o").to_str().unwrap(),
                ],
                Duration::from_secs(60),
            );
            assert_eq!(f.code, 0, "{}", f.stderr);
        }
        assert!(
            segments_of(pid).is_empty(),
            "stale segments remain: {:?}",
            segments_of(pid)
        );
    }
}

#[test]
fn a_python_engine_keeping_a_view_of_shared_memory_ends_its_worker() {
    let (dir, dag) = hello(|v| {
        v["engines"][0]["type"] = json!("python:keeper:Keeper");
    });
    // A user engine (imported from the DAG's folder) that keeps a numpy view of its output.
    std::fs::write(
        dir.join("keeper.py"),
        "from livecalc import outputs\nfrom livecalc.engines.hello import HelloEngine\n\n\n\
class Keeper(HelloEngine):\n    def runChunk(self, input_buffer, output_buffer):\n        \
result = super().runChunk(input_buffer, output_buffer)\n        \
self.kept = outputs(output_buffer)[\"priced.premium\"]\n        return result\n",
    )
    .unwrap();
    let (f, m) = run_failing(&dir, &dag);
    assert_eq!(f.code, 1, "{}", f.stderr);
    let errors = m["errors"].to_string();
    assert!(errors.contains("exited with code 86"), "{errors}");
    assert!(
        errors.contains("kept a reference to shared memory"),
        "{errors}"
    );
    assert!(
        f.stderr
            .contains("Keeper.runChunk kept a reference to a shared-memory buffer"),
        "{}",
        f.stderr
    );
}
