//! Reads a process's memory and CPU figures from Linux `/proc`.

use std::fs;
use std::io;

/// Memory figures from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size since the process started (`VmHWM`).
    pub peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of process `pid`, or of this process for [`None`].
pub fn memory(pid: Option<u32>) -> io::Result<Memory> {
    let text = fs::read_to_string(proc_path(pid, "status"))?;
    parse_status(&text).ok_or_else(|| io::Error::other("VmRSS/VmHWM missing in status"))
}

/// CPU time (user + system, all threads) consumed so far by process `pid`,
/// or by this process for [`None`], in clock ticks; see [`clock_ticks_per_second`].
pub fn cpu_ticks(pid: Option<u32>) -> io::Result<u64> {
    let text = fs::read_to_string(proc_path(pid, "stat"))?;
    parse_stat_cpu(&text).ok_or_else(|| io::Error::other("malformed stat line"))
}

/// Clock ticks per second used by `/proc/PID/stat` (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Host-wide count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`). Every drop costs the
/// client a SYN retransmission, one second later.
pub fn listen_overflows() -> io::Result<u64> {
    let text = fs::read_to_string("/proc/net/netstat")?;
    parse_netstat(&text, "TcpExt:", "ListenOverflows")
        .ok_or_else(|| io::Error::other("ListenOverflows missing in /proc/net/netstat"))
}

/// Finds counter `name` in the `prefix` section of `/proc/net/netstat`-style
/// text, where a line of names is followed by a line of values.
pub fn parse_netstat(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let column = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// Bytes the kernel holds in the send queues of established TCP sockets whose
/// local port is `port` (the server's side of its connections), from
/// `/proc/net/tcp` and `/proc/net/tcp6`. RSS does not show this memory.
pub fn send_queues(port: u16) -> io::Result<SendQueues> {
    let mut total = SendQueues::default();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(file) {
            Ok(text) => total.add(&parse_send_queues(&text, port)),
            // A kernel without IPv6 has no tcp6.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Send-queue totals over a set of sockets; see [`send_queues`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendQueues {
    /// Sockets with a non-empty send queue.
    pub sockets: u64,
    /// Bytes queued over all of them.
    pub bytes: u64,
    /// The longest single queue, in bytes.
    pub max_bytes: u64,
}

impl SendQueues {
    fn add(&mut self, other: &SendQueues) {
        self.sockets += other.sockets;
        self.bytes += other.bytes;
        self.max_bytes = self.max_bytes.max(other.max_bytes);
    }
}

/// Sums `tx_queue` over the established sockets with local port `port` in
/// `/proc/net/tcp`-style text (hex fields: `local_address` is `ADDR:PORT`,
/// `st` 01 is ESTABLISHED, the fifth column is `tx_queue:rx_queue`).
pub fn parse_send_queues(text: &str, port: u16) -> SendQueues {
    let mut q = SendQueues::default();
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(local), Some(_remote), Some(state), Some(queues)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) || state != "01" {
            continue;
        }
        let tx = queues
            .split(':')
            .next()
            .and_then(|t| u64::from_str_radix(t, 16).ok())
            .unwrap_or(0);
        if tx > 0 {
            q.sockets += 1;
            q.bytes += tx;
            q.max_bytes = q.max_bytes.max(tx);
        }
    }
    q
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// Extracts `VmRSS` and `VmHWM` (both `kB`) from the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Extracts `utime + stime` (fields 14 and 15) from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is parenthesised and may itself contain spaces
/// or parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    // After ")": field 3 (state) is index 0, so utime (14) is index 11.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_counts_fields_after_the_command_name() {
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 300 0 0 0 \
                    17 5 0 0 20 0 1 0 123 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some(22));
    }

    #[test]
    fn status_reads_rss_and_peak() {
        let text = "Name:\tnode\nVmHWM:\t  51200 kB\nVmRSS:\t  40960 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss_kib: 40960,
                peak_kib: 51200
            })
        );
    }

    #[test]
    fn netstat_pairs_names_with_values() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 88 90\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 0\n";
        assert_eq!(parse_netstat(text, "TcpExt:", "ListenOverflows"), Some(88));
        assert_eq!(parse_netstat(text, "TcpExt:", "Nope"), None);
    }

    #[test]
    fn send_queues_sum_established_sockets_of_the_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr\n\
            0: 00000000:13F1 00000000:0000 0A 00000000:00000000 00:00000000\n\
            1: 0100007F:13F1 0200007F:B3A0 01 00000400:00000000 01:00000014\n\
            2: 0100007F:13F1 0300007F:B3A2 01 00001000:00000000 01:00000014\n\
            3: 0100007F:13F1 0300007F:B3A4 01 00000000:00000000 00:00000000\n\
            4: 0200007F:B3A0 0100007F:13F1 01 00000999:00000000 00:00000000\n";
        assert_eq!(
            parse_send_queues(text, 0x13F1),
            SendQueues {
                sockets: 2,
                bytes: 0x1400,
                max_bytes: 0x1000
            }
        );
    }

    #[test]
    fn own_process_is_readable() {
        assert!(memory(None).unwrap().rss_kib > 0);
        cpu_ticks(None).unwrap();
        assert!(clock_ticks_per_second() > 0);
    }
}
