//! Load generator for the realtime product fan-out.
//!
//! Opens N WebSocket clients against a server, checks each welcome frame,
//! creates M products through `POST /api/v1/products` and measures how each
//! `new_product` event reaches every client: losses, latency, time until the
//! last client has an event, deliveries per second and, given the server's
//! PID, its RSS per idle connection and CPU time per delivery and per publish.
//!
//! ```text
//! cargo run --release -p benches --bin loadgen -- \
//!     --url http://127.0.0.1:5101 --clients 10000 --events 30 --jwt-secret s3
//! ```
//!
//! With `--sse` the clients open ocha-server's `GET /api/v1/events`
//! instead, check the welcome comment and position that start the stream,
//! and take each event's `data` for the WebSocket frame it stands for: the
//! figures are the same, for the other transport.
//!
//! With `--channel NAME` it drives the rooms example (`examples/rooms.rs`)
//! instead: `--channel-members K` of the clients join the channel, events
//! are POSTed to `/channels/NAME` (or `/broadcast` with `--broadcast`), and
//! the other clients must receive nothing. `benches/channels.sh` compares
//! the two.
//!
//! Against a cluster, `--ws-url` (repeated) spreads the clients over its
//! nodes while products still go to `--url`, and the report adds each
//! node's figures. More clients than one process has descriptors for take
//! several processes on one run: one POSTs, the others `--listen-only` with
//! the same `--run-id`; `benches/cluster.sh` runs them and merges their
//! reports.
//!
//! Run with `--help` for every option. Exits 1 when anything was lost,
//! duplicated, reordered, delivered to a client that should not have it or
//! failed to connect, so that a small run (200 × 5) serves as a smoke test.

use benches::args::{Args, USAGE};
use benches::run;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = run::runtime(&args).expect("tokio runtime");
    let json = args.json();
    let report = match runtime.block_on(run::run(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", report.to_json());
    } else {
        report.print_table();
    }
    // Skip tearing down thousands of client tasks one by one: the OS closes the sockets.
    let code = if report.passed() { 0 } else { 1 };
    std::io::stdout().flush().ok();
    std::process::exit(code)
}
