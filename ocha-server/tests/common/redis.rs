//! A Redis server of its own for a test, on a port of 127.0.0.1, with
//! nothing saved to disk: a restart starts empty.
//!
//! ```ignore
//! let mut redis = RedisServer::new();
//! connect_to(&redis.url());
//! redis.stop();  // down...
//! redis.start(); // ...and back on the same port
//! ```
//!
//! `redis-server` must be on the `PATH` (`scripts/test.sh` installs it).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::daemon::{unused_port, Daemon};

/// How long a command waits for an answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// A Redis server running in a temporary directory, stopped on drop.
pub struct RedisServer {
    port: u16,
    process: Option<Daemon>,
    // Last: removed once the server has stopped.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on an unused port and waits until it answers.
    pub fn new() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("ocha-redis-")
            .tempdir()
            .expect("create the Redis directory");
        let mut server = RedisServer {
            port: 0,
            process: None,
            dir,
        };
        // Another test may take the port between the check and the bind.
        for attempt in 1.. {
            server.port = unused_port();
            match server.try_start() {
                Ok(process) => {
                    server.process = Some(process);
                    break;
                }
                Err(error) if attempt < 5 => eprintln!("Redis did not start, retrying: {error}"),
                Err(error) => panic!("Redis did not start: {error}"),
            }
        }
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGTERM, which closes clients and exits) and waits
    /// for it. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop("TERM");
        }
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "Redis is already running");
        match self.try_start() {
            Ok(process) => self.process = Some(process),
            Err(error) => panic!("Redis did not start again: {error}"),
        }
    }

    fn try_start(&self) -> Result<Daemon, String> {
        let mut redis = Command::new("redis-server");
        redis
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        Daemon::start(&mut redis, &self.dir.path().join("redis.log"), || {
            ping(self.port)
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis server on `port` of 127.0.0.1 answers `PING` with
/// `+PONG`, over a connection of its own.
pub fn ping(port: u16) -> bool {
    inline_command(port, "PING").is_ok_and(|line| line == "+PONG\r\n")
}

/// Runs `command` (inline syntax: words separated by spaces) on the Redis
/// server on `port`, and panics unless it answers `+OK`.
pub fn command(port: u16, command: &str) {
    let answer = inline_command(port, command).expect("Redis answers");
    assert_eq!(answer, "+OK\r\n", "{command}");
}

/// The first line of Redis's answer to `command`, over a connection of
/// its own.
fn inline_command(port: u16, command: &str) -> std::io::Result<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, REPLY_TIMEOUT)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}
