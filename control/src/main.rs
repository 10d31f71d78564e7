//! `ipcctl`: parse, run, report. See the library for everything else.
#![forbid(unsafe_code)]

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use ipcctl::{Cli, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|usage| usage.exit());
    let mut stdout = std::io::stdout().lock();
    let result = ipcctl::run(&cli, &mut stdout)
        .await
        .and_then(|()| Ok(stdout.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader such as `head` stopped reading: nothing left to say.
        Err(Error::Output(err)) if err.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprint!("{}", err.report());
            ExitCode::from(err.exit_code())
        }
    }
}
