use std::process::ExitCode;

use clap::Parser;
use maskpipe::cli::{self, Cli};

fn main() -> ExitCode {
    // A panic's message could quote what it was handling (a message body, a
    // key): report where it happened, never what it said.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|location| format!(" at {}:{}", location.file(), location.line()))
            .unwrap_or_default();
        eprintln!("maskpipe: internal error: a thread panicked{at}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cli::report_usage_error(&error),
    };
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
            eprintln!("maskpipe: error: {}", cli::one_line(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}
