//! argv -> config -> telemetry -> process limits and signals -> bind -> vedge::run. Nothing else.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use vedge::cli::{Cli, Command, DemoArgs, ServeArgs};
use vedge::config::{Config, RawConfig};

/// mimalloc instead of glibc malloc: the hit path makes a handful of small, short-lived
/// allocations per request on every worker thread, and glibc's arenas showed ~6 % of the edge's
/// CPU on manifest hits (perf); mimalloc's thread-local free lists take a fraction of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Validate before anything else: a bad config never binds a port.
    let (serve_config, config_warnings) = match &cli.command {
        Some(Command::Serve(args)) => match load(args) {
            Ok((c, warnings)) => (Some(c), warnings),
            Err(e) => {
                eprintln!("vedge: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        _ => (None, Vec::new()),
    };
    // Held for the whole run: dropping it flushes the log writer.
    // `vedge ingest --json` prints its summary on stdout for scripts: its logs go to stderr.
    let to_stderr = matches!(cli.command, Some(Command::Ingest(_)));
    let _log_guard = init_tracing(log_filter(cli.log.as_deref()).as_str(), to_stderr);
    // Deprecated keys, reported now that logging is up.
    for w in &config_warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vedge: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Some(Command::Serve(_)) => match serve_config {
                Some(cfg) => serve(cfg).await,
                None => unreachable_config(),
            },
            Some(Command::Demo(args)) => vedge::demo::run(args, shutdown_signal()).await,
            None => vedge::demo::run(DemoArgs::default(), shutdown_signal()).await,
            Some(Command::Origin(args)) => vedge_bench::origin::run_cli(args).await,
            Some(Command::Bench(cmd)) => vedge_bench::run_cli(cmd).await,
            Some(Command::Ingest(args)) => vedge::ingest::run_cli(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vedge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn unreachable_config() -> anyhow::Result<()> {
    anyhow::bail!("internal: serve without a validated config")
}

fn load(args: &ServeArgs) -> anyhow::Result<(Config, Vec<String>)> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    args.apply_to(&mut raw);
    raw.default_threads_by_shape();
    // `[route.token] key_env`: the environment is read here, and only here.
    raw.read_env(|name| std::env::var(name).ok());
    Ok(Config::resolve(raw)?)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    raise_nofile_limit();
    let viewer = vedge::http::server::bind_viewer(cfg.listen, cfg.server.threads > 0)
        .and_then(TcpListener::from_std)
        .with_context(|| format!("listen: cannot bind {}", cfg.listen))?;
    let admin = match cfg.admin.listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("admin_listen: cannot bind {a}"))?,
        ),
        None => None,
    };
    let reload = std::sync::Arc::new(tokio::sync::Notify::new());
    reload_on_sighup(reload.clone());
    vedge::run_with(
        cfg,
        vedge::Listeners { viewer, admin },
        shutdown_signal(),
        reload,
    )
    .await
}

/// SIGHUP reloads the viewer TLS certificates and keys from their files.
fn reload_on_sighup(reload: std::sync::Arc<tokio::sync::Notify>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading TLS certificates");
                        reload.notify_one();
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS reload disabled"),
        }
    }
    #[cfg(not(unix))]
    let _ = reload;
}

/// Raises the soft open-file limit to the hard one: every viewer connection, origin connection,
/// splice pipe and store file is a descriptor, and the usual soft limit of 1,024 runs out long
/// before any other resource (the connection cap `limits.max_connections` assumes it was raised).
fn raise_nofile_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                let wanted = lim.rlim_max;
                lim.rlim_cur = wanted;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    tracing::warn!(wanted, "cannot raise the open-file limit");
                }
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested: draining");
}

/// Log lines queued for a sink slower than the edge writes them; past this, lines are
/// dropped (the writer is lossy) rather than held. tracing-appender's default, 128,000, held
/// 128,000 viewers' paths and user agents when stdout stalled (each clipped now, see
/// `http::access`, but a bound in lines is only a bound in bytes if lines are short).
const LOG_QUEUE_LINES: usize = 16_384;

/// The log filter: `--log` (or `VEDGE_LOG`), else `RUST_LOG` (what Rust programs and the
/// README's examples use), else `info`.
fn log_filter(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "info".to_string())
}

/// Logs go through a non-blocking writer: the access line of every request must never make a
/// worker wait on stdout. A filter that does not parse is said on stderr, then `info` is used.
fn init_tracing(filter: &str, to_stderr: bool) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("vedge: log filter `{filter}` is not valid ({e}); logging at info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let queue = || {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .lossy(true)
    };
    let (writer, guard, ansi) = if to_stderr {
        let (w, g) = queue().finish(std::io::stderr());
        (w, g, std::io::IsTerminal::is_terminal(&std::io::stderr()))
    } else {
        let (w, g) = queue().finish(std::io::stdout());
        (w, g, std::io::IsTerminal::is_terminal(&std::io::stdout()))
    };
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .init();
    guard
}
