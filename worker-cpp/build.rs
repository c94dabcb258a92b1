// Compiles the C++ bridge and every built-in C++ engine into the worker binary.
fn main() {
    let mut engines: Vec<_> = std::fs::read_dir("engines")
        .expect("worker-cpp/engines exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    engines.sort();
    let mut build = cxx_build::bridge("src/ffi.rs");
    build
        .file("src/bridge.cpp")
        .files(&engines)
        .include("include")
        .include("engines")
        .std("c++20")
        // Results must not depend on whether the compiler fused a multiply and an add.
        .flag("-ffp-contract=off")
        .flag_if_supported("-fno-math-errno")
        .warnings(true)
        .extra_warnings(true);
    build.compile("livecalc_cpp_engines");
    println!("cargo:rerun-if-changed=src/bridge.cpp");
    println!("cargo:rerun-if-changed=src/bridge.hpp");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=engines");
}
