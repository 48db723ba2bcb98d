fn main() -> std::process::ExitCode {
    tokengate::cli::main()
}
