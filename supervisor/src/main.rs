//! `livecalc-supervisor`: see `livecalc_supervisor::cli`.

fn main() -> std::process::ExitCode {
    livecalc_supervisor::cli::main()
}
