use std::process::ExitCode;

fn main() -> ExitCode {
    agent_tokens::cli::main()
}
