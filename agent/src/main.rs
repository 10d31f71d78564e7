//! `ipcplane-agent`: parse the configuration, start logging, run until
//! SIGTERM or SIGINT. Exit codes: 0 clean stop, 64 bad configuration,
//! 69 a start-up or serving failure.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ipcplane_agent::config::{self, Cli, EX_CONFIG, Host, LogFormat};
use tracing_subscriber::EnvFilter;

const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    let config = match config::load(cli, &Host::current()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ipcplane-agent: {message}");
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    let filter = match EnvFilter::try_from_env(config::ENV_LOG) {
        Ok(filter) => filter,
        Err(_) if std::env::var_os(config::ENV_LOG).is_none() => EnvFilter::new("info"),
        Err(error) => {
            eprintln!("ipcplane-agent: invalid {}: {error}", config::ENV_LOG);
            return ExitCode::from(EX_CONFIG as u8);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Plain => logs.init(),
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ipcplane-agent: cannot start the runtime: {error}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let result = runtime.block_on(async {
        let (trigger, shutdown) = ipcplane_agent::shutdown::channel();
        // Handlers are installed before anything is served, so an early
        // SIGTERM stops the agent cleanly instead of killing it.
        let signals = match Signals::install() {
            Ok(signals) => signals,
            Err(error) => return Err(anyhow::anyhow!("cannot handle signals: {error}")),
        };
        tokio::spawn(async move {
            signals.wait().await;
            tracing::info!("shutting down");
            trigger.fire();
        });
        ipcplane_agent::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ipcplane-agent: {error:#}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

/// SIGTERM and SIGINT, either of which stops the agent.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
