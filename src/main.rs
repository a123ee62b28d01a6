//! `snapnet`: the daemon (`serve`) and its control client (`ctl`).

mod assets;
mod ctl;

use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::{Parser, Subcommand};
use snapnet::control::daemon::format_report;
use snapnet::control::metrics::MetricsServer;
use snapnet::control::rpc::server::RpcServer;
use snapnet::control::rpc::{Context, UpgradeFailure, UpgradeHook};
use snapnet::control::signals::{Signal, Signals};
use snapnet::control::socket_group;
use snapnet::control::systemd::{self, Heartbeat};
use snapnet::control::upgrade_process::{self, UpgradeError};
use snapnet::control::{Config, Daemon};

#[derive(Parser)]
#[command(
    name = "snapnet",
    version = snapnet::VERSION_LINE,
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
        /// Take over a running daemon through the handoff channel at this fd
        /// (started so by `snapnet ctl upgrade`; the configuration comes
        /// over the channel).
        #[arg(long, conflicts_with = "config")]
        takeover_fd: Option<i32>,
    },
    /// Talk to a running daemon over its control socket.
    Ctl(Box<ctl::CtlArgs>),
    /// Write man pages (DIR/man) and shell completions (DIR/completions),
    /// for packaging.
    #[command(hide = true)]
    GenerateAssets { dir: PathBuf },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Serve {
            config,
            print_default_config,
            metrics_listen,
            takeover_fd,
        } => {
            if print_default_config {
                println!("{}", snapnet::control::config::EMBEDDED_DEFAULT);
                return ExitCode::SUCCESS;
            }
            if let Some(fd) = takeover_fd {
                return take_over(fd, metrics_listen.as_deref());
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
        Command::Ctl(args) => ctl::run(*args),
        Command::GenerateAssets { dir } => {
            match assets::generate(<Cli as clap::CommandFactory>::command(), &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("snapnet: {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The new process of an upgrade: takes the running daemon over from the
/// process that started it, then serves as `serve` does.
fn take_over(fd: i32, metrics_listen: Option<&str>) -> ExitCode {
    // SAFETY: the fd was passed by the process that started this one
    // (`upgrade_process::spawn`), for this process alone; the channel checks
    // what it is.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapnet: cannot set up signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let taken = match upgrade_process::take_over(fd) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("snapnet: taking over: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = taken.daemon.config().clone();
    // From here on this process serves: the old one lets go and exits.
    // Control clients wait in the socket's backlog meanwhile.
    let committed = match taken.commit() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snapnet: the old process did not hear the commit: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "took over {} vNIC(s) and {} uplink(s)",
        committed.daemon.config().vnics.len(),
        committed.daemon.config().uplinks.len()
    );
    // The old process's metrics listener, if it served metrics: scrapers
    // keep their address. Otherwise this process's own --metrics-listen.
    let metrics = match committed.metrics {
        Some(l) => Metrics::Adopt(l),
        None => Metrics::from(metrics_listen),
    };
    run(
        &cfg,
        committed.daemon,
        Listen::Adopt(committed.control),
        metrics,
        signals,
    )
}

/// How the metrics endpoint comes to be, if there is one.
enum Metrics<'a> {
    None,
    Bind(&'a str),
    Adopt(std::net::TcpListener),
}

impl<'a> From<Option<&'a str>> for Metrics<'a> {
    fn from(addr: Option<&'a str>) -> Self {
        addr.map_or(Metrics::None, Metrics::Bind)
    }
}

/// How the control socket comes to be.
enum Listen {
    Bind(Option<u32>),
    /// Handed over by the process an upgrade replaced.
    Adopt(std::os::unix::net::UnixListener),
    /// Passed by systemd's socket activation: the path is the socket unit's.
    Activated(std::os::unix::net::UnixListener),
}

/// Set (and inherited by the successor an upgrade starts) when the control
/// socket came from systemd's socket activation: its path is the socket
/// unit's to keep, even after the process that took it over stops.
const CONTROL_FROM_SYSTEMD: &str = "SNAPNET_CONTROL_FROM_SYSTEMD";

fn serve(cfg: &Config, metrics_listen: Option<&str>) -> ExitCode {
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapnet: cannot set up signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gid = match cfg
        .control_group
        .as_deref()
        .map(|g| socket_group::group_id("control_group", g))
        .transpose()
    {
        Ok(g) => g,
        Err(e) => {
            eprintln!("snapnet: {e}");
            return ExitCode::from(2);
        }
    };
    let listen = match systemd::activated_control_socket() {
        Ok(Some(listener)) => {
            // Before any thread starts: the environment is not yet shared.
            std::env::set_var(CONTROL_FROM_SYSTEMD, "1");
            Listen::Activated(listener)
        }
        Ok(None) => Listen::Bind(gid),
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
    run(cfg, daemon, listen, Metrics::from(metrics_listen), signals)
}

/// Sends SIGTERM to this process; the main thread takes it.
fn request_shutdown() {
    // SAFETY: kill with this process's own pid and a valid signal.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

/// The `daemon.upgrade` method's work (see `upgrade_process`): on success
/// (or a failure after the hand-over began) the process is to exit with
/// the code left in `exit`, without stopping anything it handed over.
fn upgrade_hook(
    control: Arc<std::sync::OnceLock<std::os::fd::OwnedFd>>,
    metrics: Arc<std::sync::OnceLock<std::os::fd::OwnedFd>>,
    exit: Arc<Mutex<Option<u8>>>,
) -> Box<UpgradeHook> {
    Box::new(move |daemon, binary| {
        use std::os::fd::AsFd;
        let failure = |message: String, daemon_gone: bool| UpgradeFailure {
            message,
            daemon_gone,
        };
        let binary = match binary.map(Ok).unwrap_or_else(this_binary) {
            Ok(b) => b,
            Err(e) => return Err(failure(format!("which binary: {e}"), false)),
        };
        let Some(control) = control.get() else {
            return Err(failure("the control socket is not up yet".into(), false));
        };
        let finish = |code: u8| {
            *exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
            request_shutdown();
        };
        let metrics = metrics.get().map(|m| m.as_fd());
        match upgrade_process::upgrade(daemon, &binary, control.as_fd(), metrics) {
            Ok(report) => {
                finish(0);
                Ok(serde_json::to_value(report).unwrap_or_default())
            }
            Err(e @ (UpgradeError::NotStarted(_) | UpgradeError::RolledBack(_))) => {
                Err(failure(e.to_string(), false))
            }
            Err(e @ UpgradeError::Failed(_)) => {
                log::error!(
                    "{e}: exiting, so that the vNICs' frontends reconnect to what serves next"
                );
                finish(1);
                Err(failure(e.to_string(), true))
            }
        }
    })
}

/// What `systemctl status` shows: how many vNICs, how many with a guest.
fn status_line(ctx: &Context) -> String {
    match ctx
        .daemon
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        Some(d) => {
            let report = d.report();
            let attached = report.iter().filter(|v| v.rings_attached > 0).count();
            format!(
                "serving {} vNIC(s), {attached} with a guest attached",
                report.len()
            )
        }
        None => "handing over to a new process".into(),
    }
}

/// This process's binary, even when the file was replaced since it started
/// (the usual way a new version is installed).
fn this_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

fn run(
    cfg: &Config,
    daemon: Daemon,
    listen: Listen,
    metrics: Metrics,
    signals: Signals,
) -> ExitCode {
    let control_fd = Arc::new(std::sync::OnceLock::new());
    let metrics_fd = Arc::new(std::sync::OnceLock::new());
    let exit_after_upgrade = Arc::new(Mutex::new(None));
    let ctx = Arc::new(Context {
        daemon: Mutex::new(Some(daemon)),
        started: Instant::now(),
        request_shutdown: Box::new(request_shutdown),
        upgrade: Some(upgrade_hook(
            control_fd.clone(),
            metrics_fd.clone(),
            exit_after_upgrade.clone(),
        )),
        accept_paused: Default::default(),
        directory: Default::default(),
    });
    // Before the control socket serves, so that no vNIC change can come
    // between the directory's first look at the vNICs and its start.
    match snapnet::control::directory_start::start(&ctx) {
        Ok(Some(dir)) => {
            let _ = ctx.directory.set(dir);
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("snapnet: {e}");
            if let Some(d) = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner()).take() {
                d.stop();
            }
            return ExitCode::FAILURE;
        }
    }
    let mut control_path = cfg.control_socket_path();
    let heartbeat = Heartbeat::from_env(matches!(listen, Listen::Adopt(_)));
    // Set by `serve` for an activated socket, inherited by an upgrade's successor.
    let keep_path = std::env::var_os(CONTROL_FROM_SYSTEMD).is_some();
    let activated = matches!(listen, Listen::Activated(_));
    let started = match listen {
        Listen::Bind(gid) => RpcServer::start(&control_path, gid, ctx.clone()),
        Listen::Adopt(listener) | Listen::Activated(listener) => {
            if activated {
                // The name systemd bound (ours binds under a temporary name
                // and renames, so only an activated socket's own name is its
                // path).
                if let Some(p) = listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(Into::into))
                {
                    control_path = p;
                }
            }
            RpcServer::adopt(listener, &control_path, ctx.clone()).map(|mut s| {
                if keep_path {
                    s.keep_path();
                }
                s
            })
        }
    };
    if let Ok(s) = &started {
        if let Ok(fd) = s.listener().try_clone_to_owned() {
            let _ = control_fd.set(fd);
        }
    }
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapnet: control socket {}: {e}", control_path.display());
            if let Some(d) = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner()).take() {
                d.stop();
            }
            return ExitCode::FAILURE;
        }
    };
    let started = match metrics {
        Metrics::None => Ok(None),
        Metrics::Bind(addr) => MetricsServer::start(addr, ctx.clone()).map(Some),
        Metrics::Adopt(l) => MetricsServer::adopt(l, ctx.clone()).map(Some),
    };
    let metrics = match started {
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
        if let Ok(l) = m.listener().try_clone() {
            let _ = metrics_fd.set(std::os::fd::OwnedFd::from(l));
        }
    }
    // systemd's Type=notify: the sockets are up.
    systemd::notify_ready(&status_line(&ctx));
    log::info!(
        "snapnet {} running; control socket {}; SIGUSR1 prints counters, SIGINT/SIGTERM stop",
        snapnet::VERSION_LINE,
        control_path.display()
    );
    loop {
        let Some(signal) = signals.wait_timeout(heartbeat.interval()) else {
            // The main loop runs and the daemon answers (its lock is free
            // between control requests): tell systemd's watchdog so.
            heartbeat.beat(&status_line(&ctx));
            continue;
        };
        match signal {
            Signal::Stop => {
                let code = *exit_after_upgrade.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(code) = code {
                    // Handed over: the new process owns the sockets, the
                    // guests' memory and the pool. Leave them all as they
                    // are; the kernel closes this process's copies.
                    if let Some(m) = metrics {
                        m.stop();
                    }
                    server.release();
                    // The successor writes this host's keys again under
                    // its own lease: leave them to this one's lease.
                    if let Some(dir) = ctx.directory.get() {
                        dir.stop(false);
                    }
                    // The client that asked gets its answer first.
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    log::info!("handed over; exiting");
                    std::process::exit(i32::from(code));
                }
                break;
            }
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
    // This host's keys go now, not a lease later: other hosts stop
    // sending to guests that are going away.
    if let Some(dir) = ctx.directory.get() {
        dir.stop(true);
    }
    let daemon = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(d) = daemon {
        let report = d.report();
        d.stop();
        print!("{}", format_report(&report));
    }
    ExitCode::SUCCESS
}
