//! `ocha-server`: serve, or print a token. See the library docs for the parts.

use std::io::IsTerminal;
use std::process::ExitCode;

use ocha_server::auth::Keys;
use ocha_server::cli::{self, Command, TokenRequest, USAGE};
use ocha_server::config::{self, Config};
use ocha_server::server;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than the system allocator: tokio aligns each task and
/// each socket's readiness state to 128 bytes, which glibc's allocator pays
/// for in padding and fragments, and jemalloc's size classes do not
/// (BENCHMARKS.md, "Where the memory goes").
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads at start: memory freed after a burst
/// goes back to the system within about a quarter of a second, by a thread
/// of its own, instead of after ten seconds and only when the server
/// allocates again.
#[cfg(all(unix, not(target_env = "musl")))]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: JemallocOptions =
    JemallocOptions(c"background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0".as_ptr());

/// A C string pointer, as jemalloc's `malloc_conf` is.
#[cfg(all(unix, not(target_env = "musl")))]
#[repr(transparent)]
struct JemallocOptions(*const std::ffi::c_char);

// SAFETY: it points to a static string that nothing writes.
#[cfg(all(unix, not(target_env = "musl")))]
unsafe impl Sync for JemallocOptions {}

/// Exit status for a command line that cannot be understood, as in most
/// Unix tools.
const USAGE_EXIT: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Serve) => serve().await,
        Ok(Command::Token(request)) => print_token(&request),
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ocha-server: {error}\n\n{USAGE}");
            ExitCode::from(USAGE_EXIT)
        }
    }
}

async fn serve() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colour codes only for people: log files and collectors get plain text.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    let shutdown = match server::shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => return fail(&format!("cannot install signal handlers: {error}")),
    };
    // On a worker thread rather than `main`'s: each accepted connection's
    // task then starts on the worker that accepted it, instead of waking
    // one from outside the runtime.
    match tokio::spawn(server::serve(config, shutdown)).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => fail(&error),
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}

fn print_token(request: &TokenRequest) -> ExitCode {
    match config::jwt_secret(|name| std::env::var_os(name)) {
        Ok(Some(secret)) => {
            println!("{}", request.sign(&Keys::from_secret(secret.as_bytes())));
            ExitCode::SUCCESS
        }
        Ok(None) => {
            fail(&"JWT_SECRET must be set to the server's secret to sign a token it accepts")
        }
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ocha-server: {error}");
    ExitCode::FAILURE
}
