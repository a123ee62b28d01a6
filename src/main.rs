//! `snapnet`: the daemon (`serve`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use snapnet::control::daemon::format_report;
use snapnet::control::{Config, Daemon};

#[derive(Parser)]
#[command(
    name = "snapnet",
    version,
    about = "Userspace host networking for VMs: vhost-user virtio-net vNICs, Snap-style engines, an edge switch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the embedded default config unless --config is given).
    Serve {
        /// JSON config file (see schemas/config.schema.json).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the embedded default config and exit.
        #[arg(long)]
        print_default_config: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            print_default_config,
        } => {
            if print_default_config {
                println!("{}", snapnet::control::config::EMBEDDED_DEFAULT);
                return ExitCode::SUCCESS;
            }
            let cfg = match config {
                Some(path) => Config::from_file(&path),
                None => Ok(Config::embedded_default()),
            };
            match cfg {
                Ok(cfg) => serve(&cfg),
                Err(e) => {
                    eprintln!("snapnet: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn serve(cfg: &Config) -> ExitCode {
    let signals = match snapnet::control::signals::Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapnet: cannot set up signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match Daemon::start(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("snapnet: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "snapnet {} running; SIGUSR1 prints counters, SIGINT/SIGTERM stop",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        match signals.wait() {
            snapnet::control::signals::Signal::Stop => break,
            snapnet::control::signals::Signal::Report => {
                print!("{}", format_report(&daemon.report()))
            }
        }
    }
    log::info!("stopping");
    let report = daemon.report();
    daemon.stop();
    print!("{}", format_report(&report));
    ExitCode::SUCCESS
}
