//! What the Postgres and Redis harnesses share: a free port, and a server
//! process that logs to a file, is ready once a check passes, and stops
//! gracefully or is killed.
//!
//! These block the calling thread (for at most seconds): call them from the
//! test itself, not from a task that must keep running meanwhile.

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to start or stop.
const DEADLINE: Duration = Duration::from_secs(30);

/// How often readiness is checked while a server starts.
const POLL: Duration = Duration::from_millis(20);

/// A port of 127.0.0.1 that nothing listens on now, picked at random in
/// 20000..32000: below Linux's ephemeral range (32768 and up), so that no
/// client socket of the tests takes it between this check and the server's
/// bind, or while a test has stopped the server to restart it. Another
/// test may still pick the same port first: callers retry with another.
pub fn unused_port() -> u16 {
    loop {
        let port = rand::random_range(20000..32000);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// A running server process whose output goes to a log file.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command` with its output appended to `log`, and waits until
    /// `ready` returns true. Fails with the log if the process exits first,
    /// and panics if it is not ready within 30 seconds.
    pub fn start(
        command: &mut Command,
        log: &Path,
        ready: impl Fn() -> bool,
    ) -> Result<Daemon, String> {
        let output = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the server log");
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("share the log"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
        let mut daemon = Daemon {
            child,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + DEADLINE;
        while !ready() {
            if let Some(status) = daemon.child.try_wait().expect("poll the server") {
                return Err(format!("{status}; its log:\n{}", daemon.log()));
            }
            if Instant::now() > deadline {
                let log = daemon.log();
                daemon.kill();
                panic!("the server is not ready after {DEADLINE:?}; its log:\n{log}");
            }
            std::thread::sleep(POLL);
        }
        Ok(daemon)
    }

    /// Sends `signal` (a name `kill` knows, such as `INT` or `TERM`) and
    /// waits for the process to exit; kills it if it has not in 30 seconds.
    pub fn stop(mut self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
        let deadline = Instant::now() + DEADLINE;
        while self.child.try_wait().expect("poll the server").is_none() {
            if Instant::now() > deadline {
                let log = self.log();
                self.kill();
                panic!("the server ignored SIG{signal} for {DEADLINE:?}; its log:\n{log}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|error| format!("<unreadable: {error}>"))
    }
}

impl Drop for Daemon {
    /// A safety net: the harnesses stop their server gracefully first.
    fn drop(&mut self) {
        self.kill();
    }
}
