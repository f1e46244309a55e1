use std::process::ExitCode;

use clap::Parser;
use maskpipe::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("maskpipe: error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            // One line, whole cause chain: what an operator needs at startup.
            eprintln!("maskpipe: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
