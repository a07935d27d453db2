//! Command-line options: the [`Args`] a run is configured with, their
//! parsing, the [`USAGE`] text, the server they describe, how its readers
//! receive events, and its address taken from `--url`.

use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs};

/// The `--help` text, listing every option and its default.
pub const USAGE: &str = "\
usage: loadgen [options]

  --url URL                 server base URL (default http://127.0.0.1:5101);
                            WebSocket on ws://HOST:PORT/, products on /api/v1/products
  --ws-url URL              base URL of a node the reading clients connect to; repeat
                            it for several nodes of one cluster: client i connects to
                            the (i mod n)-th, and the report adds each node's figures.
                            Products still go to --url (default: --url alone)
  --clients N               reading clients (default 1000)
  --sse                     the readers open GET /api/v1/events (Server-Sent Events,
                            HTTP/1.1) instead of a WebSocket; ocha-server only. Slow
                            clients stay WebSocket
  --events M                products to create (default 30)
  --interval-ms MS          latency mode: one POST every MS ms (default 200)
  --back-to-back            throughput mode: next POST as soon as the previous answered
  --server-pid PID          read server RSS and CPU time from /proc/PID (RSS per idle
                            connection is only meaningful on a freshly started server)
  --token T                 bearer token to send as is
  --jwt-secret S            mint an HS256 admin token (default $JWT_SECRET or dev-secret)
  --slow-clients K          also open K clients that never read (default 0)
  --slow-rcvbuf BYTES       SO_RCVBUF of the slow clients (default 4096)
  --description-bytes B     pad each product description to B bytes (default: short)
  --threads T               client runtime worker threads (default 1, leaving the
                            other core to the server)
  --source-ips S            spread clients over 127.0.0.1..127.0.0.S (default 4)
  --connect-concurrency C   handshakes in flight (default 100: below common listen
                            backlogs of 128, whose overflow costs a 1 s SYN retry)
  --settle-ms MS            pause after connecting, before sampling RSS (default 1500)
  --timeout-s S             wait this long after the last POST for deliveries (default 10)
  --json                    print one JSON object instead of the table

Several loadgen processes on one run (more clients than one process has descriptors for):
  --run-id ID               name the run ID (letters and digits) instead of a random name;
                            events are recognised by it
  --listen-only             POST nothing: connect, say `loadgen ID: listening` on stderr,
                            then wait for the --events events another loadgen POSTs with
                            the same --run-id, until every client has them all or
                            --timeout-s passed without a new delivery. Latency counts from
                            the send time the POSTing loadgen writes in each product
                            (microseconds since the UNIX epoch: one machine, one clock)

Channels, against the rooms example (examples/rooms.rs) instead of ocha-server:
  --channel NAME            clients expect no welcome; events are POSTed to
                            /channels/NAME without a token, and only members expect them
  --channel-members K       K of the clients (default all) connect with /?channel=NAME,
                            the others with / and must receive nothing
  --broadcast               POST the events to /broadcast instead: every client expects them
";

/// Where ocha-server serves its events as Server-Sent Events.
const SSE_PATH: &str = "/api/v1/events";

/// Command-line options; see [`USAGE`].
#[derive(Debug, Clone)]
pub struct Args {
    pub(crate) url: String,
    /// `--ws-url`s; empty means `url`.
    pub(crate) ws_urls: Vec<String>,
    pub(crate) clients: usize,
    pub(crate) events: usize,
    pub(crate) interval_ms: u64,
    pub(crate) back_to_back: bool,
    pub(crate) server_pid: Option<u32>,
    pub(crate) token: Option<String>,
    pub(crate) jwt_secret: String,
    pub(crate) slow_clients: usize,
    pub(crate) slow_rcvbuf: u32,
    pub(crate) description_bytes: usize,
    pub(crate) threads: usize,
    pub(crate) source_ips: u8,
    pub(crate) connect_concurrency: usize,
    pub(crate) settle_ms: u64,
    pub(crate) timeout_s: u64,
    pub(crate) json: bool,
    pub(crate) run_id: Option<String>,
    pub(crate) listen_only: bool,
    pub(crate) transport: Transport,
    pub(crate) server: Server,
}

/// How the reading clients receive the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// A WebSocket on the node's `/`: one text frame per event.
    WebSocket,
    /// `GET /api/v1/events`: one Server-Sent Event per event, in a chunked
    /// `text/event-stream` body (`--sse`).
    Sse,
}

/// The server under test: how it greets clients, where events are
/// published, and who should receive them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Server {
    /// ocha-server: every client is welcomed, and products POSTed to
    /// `/api/v1/products` with an admin token reach every client.
    Ocha,
    /// The rooms example: no welcome; clients `0..members` join `channel`
    /// on connecting. Events POSTed to `/channels/NAME` reach them only,
    /// or with `broadcast`, POSTed to `/broadcast`, every client.
    Rooms {
        channel: String,
        members: usize,
        broadcast: bool,
    },
}

impl Args {
    /// Parses the options after the program name. Accepts `--flag value` and
    /// `--flag=value`; unset options take their defaults, `--jwt-secret`
    /// from `$JWT_SECRET`.
    ///
    /// An error carries the message to print before the usage text; an empty
    /// message means `-h` or `--help` was given.
    pub fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args {
            url: "http://127.0.0.1:5101".into(),
            ws_urls: Vec::new(),
            clients: 1000,
            events: 30,
            interval_ms: 200,
            back_to_back: false,
            server_pid: None,
            token: None,
            jwt_secret: std::env::var("JWT_SECRET").unwrap_or_else(|_| "dev-secret".into()),
            slow_clients: 0,
            slow_rcvbuf: 4096,
            description_bytes: 0,
            threads: 1,
            source_ips: 4,
            connect_concurrency: 100,
            settle_ms: 1500,
            timeout_s: 10,
            json: false,
            run_id: None,
            listen_only: false,
            transport: Transport::WebSocket,
            server: Server::Ocha,
        };
        let (mut channel, mut members, mut broadcast) = (None, None, false);
        while let Some(arg) = argv.next() {
            // Accept both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| argv.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
                v.parse()
                    .map_err(|_| format!("{flag}: not a valid number: {v}"))
            }
            match flag.as_str() {
                "--url" => a.url = value()?,
                "--ws-url" => a.ws_urls.push(value()?),
                "--clients" => a.clients = num(&flag, value()?)?,
                "--events" => a.events = num(&flag, value()?)?,
                "--interval-ms" => a.interval_ms = num(&flag, value()?)?,
                "--back-to-back" => a.back_to_back = true,
                "--server-pid" => a.server_pid = Some(num(&flag, value()?)?),
                "--token" => a.token = Some(value()?),
                "--jwt-secret" => a.jwt_secret = value()?,
                "--slow-clients" => a.slow_clients = num(&flag, value()?)?,
                "--slow-rcvbuf" => a.slow_rcvbuf = num(&flag, value()?)?,
                "--description-bytes" => a.description_bytes = num(&flag, value()?)?,
                "--threads" => a.threads = num(&flag, value()?)?,
                "--source-ips" => a.source_ips = num(&flag, value()?)?,
                "--connect-concurrency" => a.connect_concurrency = num(&flag, value()?)?,
                "--settle-ms" => a.settle_ms = num(&flag, value()?)?,
                "--timeout-s" => a.timeout_s = num(&flag, value()?)?,
                "--json" => a.json = true,
                "--run-id" => a.run_id = Some(value()?),
                "--listen-only" => a.listen_only = true,
                "--sse" => a.transport = Transport::Sse,
                "--channel" => channel = Some(value()?),
                "--channel-members" => members = Some(num(&flag, value()?)?),
                "--broadcast" => broadcast = true,
                "-h" | "--help" => return Err(String::new()),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if a.source_ips == 0 || a.source_ips == 255 {
            return Err("--source-ips must be within 1..=254".into());
        }
        if a.connect_concurrency == 0 || a.threads == 0 {
            return Err("--connect-concurrency and --threads must be at least 1".into());
        }
        if let Some(id) = &a.run_id {
            // Part of every slug, and found in event frames without parsing them.
            if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err("--run-id: use 1 to 32 letters and digits".into());
            }
        }
        if a.listen_only && a.run_id.is_none() {
            return Err("--listen-only needs the --run-id of the loadgen that POSTs".into());
        }
        if channel.is_some() && a.transport == Transport::Sse {
            return Err(
                "--sse needs ocha-server: the rooms example serves no events stream".into(),
            );
        }
        if let Some(channel) = channel {
            // Sent unescaped in the WebSocket URL and the POST path.
            let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
            if channel.is_empty() || !channel.chars().all(unreserved) {
                return Err("--channel: use letters, digits and - . _ ~ only".into());
            }
            let members = members.unwrap_or(a.clients);
            if members > a.clients {
                return Err("--channel-members cannot exceed --clients".into());
            }
            a.server = Server::Rooms {
                channel,
                members,
                broadcast,
            };
        } else if members.is_some() || broadcast {
            return Err("--channel-members and --broadcast need --channel".into());
        }
        Ok(a)
    }

    /// Whether `--json` asked for one JSON object instead of the table.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Whether clients are welcomed on connecting.
    pub(crate) fn expects_welcome(&self) -> bool {
        self.server == Server::Ocha
    }

    /// The path events are POSTed to.
    pub(crate) fn post_path(&self) -> String {
        match &self.server {
            Server::Ocha => "/api/v1/products".into(),
            Server::Rooms {
                broadcast: true, ..
            } => "/broadcast".into(),
            Server::Rooms { channel, .. } => format!("/channels/{channel}"),
        }
    }

    /// How many clients should receive each event: clients `0..recipients`.
    pub(crate) fn recipients(&self) -> usize {
        match &self.server {
            Server::Rooms {
                members,
                broadcast: false,
                ..
            } => *members,
            _ => self.clients,
        }
    }

    /// The path reading client `client` opens on its node.
    pub(crate) fn client_path(&self, client: usize) -> String {
        if self.transport == Transport::Sse {
            return SSE_PATH.into();
        }
        match &self.server {
            Server::Rooms {
                channel, members, ..
            } if client < *members => format!("/?channel={channel}"),
            _ => "/".into(),
        }
    }

    /// The base URLs of the nodes the WebSocket clients connect to.
    pub(crate) fn ws_bases(&self) -> Vec<&str> {
        if self.ws_urls.is_empty() {
            vec![&self.url]
        } else {
            self.ws_urls.iter().map(String::as_str).collect()
        }
    }

    /// The node (an index into [`Args::ws_bases`]) that client `client`
    /// connects to: round robin, so that clients `0..k` spread evenly
    /// whatever `k`, channel members included.
    pub(crate) fn node_of(&self, client: usize) -> usize {
        client % self.ws_urls.len().max(1)
    }

    /// The POST schedule's name, as the report gives it.
    pub(crate) fn mode(&self) -> &'static str {
        if self.listen_only {
            "listen-only"
        } else if self.back_to_back {
            "back-to-back"
        } else {
            "interval"
        }
    }
}

/// Where the server under test listens.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// `host:port` as given, for the Host header and the WebSocket URL.
    pub(crate) authority: String,
}

impl Target {
    /// Resolves the IPv4 address of `--url`'s host.
    pub(crate) fn from_url(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad --url {url}: {e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url {url} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        // Source addresses are 127.0.0.x, so only an IPv4 target makes sense.
        let addr = (authority.host(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("{authority} has no IPv4 address"))?;
        Ok(Target {
            addr,
            authority: format!("{}:{port}", authority.host()),
        })
    }

    /// The WebSocket URL with `path`, which starts with `/`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.authority)
    }

    /// Where readers of `transport` connect, before any per-client query.
    pub(crate) fn reader_url(&self, transport: Transport) -> String {
        match transport {
            Transport::WebSocket => self.ws_url("/"),
            Transport::Sse => format!("http://{}{SSE_PATH}", self.authority),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_flags_and_values() {
        let argv = "--url=http://127.0.0.1:5103 --clients 200 --events 5 --back-to-back --json";
        let a = Args::parse(argv.split(' ').map(String::from)).unwrap();
        assert_eq!((a.clients, a.events), (200, 5));
        assert!(a.back_to_back && a.json);
        assert_eq!(a.url, "http://127.0.0.1:5103");
        assert!(Args::parse(["--clients".to_string()].into_iter()).is_err());
        assert!(Args::parse(["--bogus".to_string()].into_iter()).is_err());
        let t = Target::from_url("http://127.0.0.1:5103").unwrap();
        assert_eq!(t.ws_url("/"), "ws://127.0.0.1:5103/");
        assert_eq!(a.server, Server::Ocha);
        assert_eq!(a.post_path(), "/api/v1/products");
        assert_eq!((a.recipients(), a.client_path(0).as_str()), (200, "/"));
    }

    #[test]
    fn channel_options_choose_the_rooms_server() {
        let parse = |argv: &str| Args::parse(argv.split(' ').map(String::from));
        let a = parse("--clients 10 --channel c --channel-members 3").unwrap();
        assert!(!a.expects_welcome());
        assert_eq!((a.post_path().as_str(), a.recipients()), ("/channels/c", 3));
        assert_eq!(a.client_path(2), "/?channel=c");
        assert_eq!(a.client_path(3), "/");
        let b = parse("--clients 10 --channel c --channel-members 3 --broadcast").unwrap();
        assert_eq!((b.post_path().as_str(), b.recipients()), ("/broadcast", 10));
        assert_eq!(b.client_path(2), "/?channel=c");
        let all = parse("--clients 10 --channel c").unwrap();
        assert_eq!(all.recipients(), 10);
        assert!(parse("--clients 10 --channel c --channel-members 11").is_err());
        assert!(parse("--channel a/b").is_err());
        assert!(parse("--broadcast").is_err());
    }

    #[test]
    fn ws_urls_default_to_url_and_clients_go_round_robin() {
        let parse = |argv: &str| Args::parse(argv.split(' ').map(String::from));
        let one = parse("--url http://127.0.0.1:5201").unwrap();
        assert_eq!(one.ws_bases(), ["http://127.0.0.1:5201"]);
        assert_eq!((one.node_of(0), one.node_of(7)), (0, 0));

        let three =
            parse("--url http://a:1 --ws-url http://a:1 --ws-url=http://b:2 --ws-url http://c:3")
                .unwrap();
        assert_eq!(three.url, "http://a:1", "POSTs still go to --url");
        assert_eq!(three.ws_bases(), ["http://a:1", "http://b:2", "http://c:3"]);
        let nodes: Vec<usize> = (0..7).map(|c| three.node_of(c)).collect();
        assert_eq!(nodes, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn sse_readers_open_the_events_stream_of_ocha_server() {
        let parse = |argv: &str| Args::parse(argv.split(' ').map(String::from));
        let ws = parse("--clients 10").unwrap();
        assert_eq!(
            (ws.transport, ws.client_path(3)),
            (Transport::WebSocket, "/".into())
        );
        let sse = parse("--clients 10 --sse").unwrap();
        assert_eq!(sse.transport, Transport::Sse);
        assert_eq!(sse.client_path(3), "/api/v1/events");
        let target = Target::from_url("http://127.0.0.1:5101").unwrap();
        assert_eq!(
            target.reader_url(sse.transport),
            "http://127.0.0.1:5101/api/v1/events"
        );
        assert_eq!(target.reader_url(ws.transport), "ws://127.0.0.1:5101/");
        assert!(parse("--sse --channel c").is_err());
    }

    #[test]
    fn listen_only_needs_a_run_id_of_letters_and_digits() {
        let parse = |argv: &str| Args::parse(argv.split(' ').map(String::from));
        let listener = parse("--listen-only --run-id c1x42 --events 30").unwrap();
        assert!(listener.listen_only);
        assert_eq!(listener.run_id.as_deref(), Some("c1x42"));
        assert_eq!(listener.mode(), "listen-only");
        assert!(parse("--listen-only").is_err());
        let poster = parse("--run-id c1x42").unwrap();
        assert!(!poster.listen_only);
        assert_eq!(poster.mode(), "interval");
        for bad in ["a-b", "lg_1", "", &"x".repeat(33)] {
            assert!(parse(&format!("--run-id={bad}")).is_err(), "{bad:?}");
        }
    }
}
