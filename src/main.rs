//! `snapnet`: the daemon (`serve`) and its control client (`ctl`).

mod ctl;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::{Parser, Subcommand};
use snapnet::control::daemon::format_report;
use snapnet::control::metrics::MetricsServer;
use snapnet::control::rpc::server::RpcServer;
use snapnet::control::rpc::Context;
use snapnet::control::signals::{Signal, Signals};
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
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Talk to a running daemon over its control socket.
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve {
            config,
            print_default_config,
            metrics_listen,
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
                Ok(cfg) => serve(&cfg, metrics_listen.as_deref()),
                Err(e) => {
                    eprintln!("snapnet: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Ctl(args) => ctl::run(args),
    }
}

fn group_id(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad group name '{name}'"))?;
    // SAFETY: `c` is a valid C string; getgrnam returns null or a pointer to
    // static storage that we read once, before any other getgr* call.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        return Err(format!("control_group: no unix group named '{name}'"));
    }
    // SAFETY: non-null result of getgrnam points to a valid struct group.
    Ok(unsafe { (*g).gr_gid })
}

fn serve(cfg: &Config, metrics_listen: Option<&str>) -> ExitCode {
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapnet: cannot set up signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gid = match cfg.control_group.as_deref().map(group_id).transpose() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("snapnet: {e}");
            return ExitCode::from(2);
        }
    };
    let daemon = match Daemon::start(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("snapnet: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Arc::new(Context {
        daemon: Mutex::new(Some(daemon)),
        started: Instant::now(),
        request_shutdown: Box::new(|| {
            // SAFETY: sends SIGTERM to this process; the main thread takes it.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        }),
    });
    let control_path = cfg.control_socket_path();
    let server = match RpcServer::start(&control_path, gid, ctx.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapnet: control socket {}: {e}", control_path.display());
            if let Some(d) = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner()).take() {
                d.stop();
            }
            return ExitCode::FAILURE;
        }
    };
    let metrics = match metrics_listen
        .map(|a| MetricsServer::start(a, ctx.clone()))
        .transpose()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("snapnet: --metrics-listen: {e}");
            server.stop();
            if let Some(d) = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner()).take() {
                d.stop();
            }
            return ExitCode::FAILURE;
        }
    };
    if let Some(m) = &metrics {
        log::info!("metrics at http://{}/metrics", m.addr);
    }
    log::info!(
        "snapnet {} running; control socket {}; SIGUSR1 prints counters, SIGINT/SIGTERM stop",
        env!("CARGO_PKG_VERSION"),
        control_path.display()
    );
    loop {
        match signals.wait() {
            Signal::Stop => break,
            Signal::Report => {
                if let Some(d) = ctx
                    .daemon
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    print!("{}", format_report(&d.report()));
                }
            }
        }
    }
    log::info!("stopping");
    if let Some(m) = metrics {
        m.stop();
    }
    server.stop();
    let daemon = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(d) = daemon {
        let report = d.report();
        d.stop();
        print!("{}", format_report(&report));
    }
    ExitCode::SUCCESS
}
