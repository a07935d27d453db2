//! A Postgres server of its own for a test: a fresh cluster in a temporary
//! directory, on a port of 127.0.0.1, with a superuser `ocha` that needs no
//! password and an empty database `ocha`.
//!
//! ```ignore
//! let mut postgres = PostgresServer::new();
//! let store = Store::open(&Database::Postgres(postgres.url())).await?;
//! postgres.stop();  // the database is down...
//! postgres.start(); // ...and back, same port and data
//! ```
//!
//! The binaries come from `/usr/lib/postgresql/<version>/bin`, the highest
//! version installed (Debian's layout; `scripts/test.sh` installs them).
//! Postgres refuses to run as root, so as root the cluster belongs to the
//! `postgres` user and `initdb` and `postgres` run as it. Durability is off
//! (`fsync=off`): the tests need a server, not a crash-safe one.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::daemon::{unused_port, Daemon};

/// Where Debian installs each Postgres version's programs.
const INSTALLS: &str = "/usr/lib/postgresql";

/// The superuser `initdb` creates, and the database `new` creates.
const USER: &str = "ocha";

/// A Postgres server running in a temporary directory, stopped on drop.
pub struct PostgresServer {
    bin: PathBuf,
    /// The uid and gid to run the server as, when the tests run as root.
    owner: Option<(u32, u32)>,
    port: u16,
    process: Option<Daemon>,
    // Last: removed once the server has stopped.
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a cluster and starts it on an unused port, with an empty
    /// database `ocha`. Takes about a second.
    pub fn new() -> PostgresServer {
        let bin = binaries();
        // Under /tmp, whatever TMPDIR says: the `postgres` user must reach
        // it, and the socket path inside must stay under ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ocha-postgres-")
            .tempdir_in("/tmp")
            .expect("create the Postgres directory");
        // The directory was just created, so its owner is who runs the tests.
        let owner = (dir.path().metadata().unwrap().uid() == 0).then(postgres_user);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the Postgres directory to the postgres user");
        }
        let mut server = PostgresServer {
            bin,
            owner,
            port: 0,
            process: None,
            dir,
        };
        let initdb = server
            .command("initdb")
            .arg("--pgdata")
            .arg(server.data())
            .args(["--auth=trust", "--username", USER, "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );

        // Another test may take the port between the check and the bind.
        for attempt in 1.. {
            server.port = unused_port();
            match server.try_start() {
                Ok(process) => {
                    server.process = Some(process);
                    break;
                }
                Err(error) if attempt < 5 => eprintln!("Postgres did not start, retrying: {error}"),
                Err(error) => panic!("Postgres did not start: {error}"),
            }
        }
        server.create_database(USER);
        server
    }

    /// The URL of the database `ocha`, for `DATABASE_URL`.
    pub fn url(&self) -> String {
        self.database_url(USER)
    }

    /// The URL of the database `name`.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database and returns its URL, for tests that share
    /// one server.
    pub fn create_database(&self, name: &str) -> String {
        let created = self
            .client("createdb")
            .arg(name)
            .output()
            .expect("run createdb");
        assert!(
            created.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        self.database_url(name)
    }

    /// The port it listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server with a fast shutdown (SIGINT): open sessions are
    /// ended, what they had not committed rolled back, and it waits for
    /// the server to exit. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop("INT");
        }
    }

    /// Kills the server (SIGKILL), as a crash would. Its sessions end
    /// when they notice, shortly after.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again, on the same port and data. Retries for a
    /// while: after [`kill`](Self::kill), Postgres refuses to start until
    /// the killed server's sessions have exited.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "Postgres is already running");
        for attempt in 1.. {
            match self.try_start() {
                Ok(process) => {
                    self.process = Some(process);
                    return;
                }
                Err(error) if attempt == 50 => panic!("Postgres did not start again: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn try_start(&self) -> Result<Daemon, String> {
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            // The Unix socket goes in the test's directory, not in
            // /var/run/postgresql, which may not exist.
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        Daemon::start(&mut postgres, &self.dir.path().join("postgres.log"), || {
            self.client("pg_isready")
                .output()
                .is_ok_and(|ready| ready.status.success())
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server program, run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        // Postgres changes to its data directory itself; until then it
        // must be able to read where it runs.
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// A client program, connecting as `ocha` over TCP.
    fn client(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.args(["--host", "127.0.0.1", "--port", &self.port.to_string()]);
        command.args(["--username", USER]);
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `bin` directory of the highest Postgres version installed.
fn binaries() -> PathBuf {
    let versions = std::fs::read_dir(INSTALLS).unwrap_or_else(|error| {
        panic!("no Postgres in {INSTALLS} ({error}): scripts/test.sh installs it")
    });
    versions
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version: u32 = path.file_name()?.to_str()?.parse().ok()?;
            let bin = path.join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("no {INSTALLS}/*/bin/postgres: scripts/test.sh installs it"))
}

/// The uid and gid of the `postgres` user, which Debian's package creates.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<_> = line.split(':').collect();
            (fields.first() == Some(&"postgres")).then(|| {
                (
                    fields[2].parse().expect("a numeric uid"),
                    fields[3].parse().expect("a numeric gid"),
                )
            })
        })
        .expect("the tests run as root, and Postgres refuses to: no postgres user to run it as")
}
