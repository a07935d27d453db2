//! Reads a process's memory figures from Linux `/proc`, and its CPU time
//! from the kernel's per-process CPU clock.

use std::fs;
use std::io;
use std::time::Duration;

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

/// CPU time (user + system, all threads, ended ones included) consumed so
/// far by process `pid`, or by this process for [`None`].
///
/// Read from the process's CPU clock, to the nanosecond: `/proc/PID/stat`
/// counts the same time in 10 ms ticks, too coarse for the milliseconds
/// that a run of publishes to a small channel costs.
pub fn cpu_time(pid: Option<u32>) -> io::Result<Duration> {
    let clock = match pid {
        None => libc::CLOCK_PROCESS_CPUTIME_ID,
        Some(pid) => {
            let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
            let mut clock: libc::clockid_t = 0;
            // SAFETY: `clock` is a valid place for the clock id.
            match unsafe { libc::clock_getcpuclockid(pid, &mut clock) } {
                0 => clock,
                error => return Err(io::Error::from_raw_os_error(error)),
            }
        }
    };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid place for the time; fails (EINVAL) once
    // the process is gone.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
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
/// local port is one of `ports` (the servers' side of their connections),
/// from `/proc/net/tcp` and `/proc/net/tcp6`. RSS does not show this memory.
pub fn send_queues(ports: &[u16]) -> io::Result<SendQueues> {
    let mut total = SendQueues::default();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(file) {
            Ok(text) => total.add(&parse_send_queues(&text, ports)),
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

/// Sums `tx_queue` over the established sockets with a local port among
/// `ports` in `/proc/net/tcp`-style text (hex fields: `local_address` is
/// `ADDR:PORT`, `st` 01 is ESTABLISHED, the fifth column is
/// `tx_queue:rx_queue`).
pub fn parse_send_queues(text: &str, ports: &[u16]) -> SendQueues {
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
        if !local_port.is_some_and(|p| ports.contains(&p)) || state != "01" {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            parse_send_queues(text, &[0x13F1]),
            SendQueues {
                sockets: 2,
                bytes: 0x1400,
                max_bytes: 0x1000
            }
        );
        assert_eq!(
            parse_send_queues(text, &[0x13F1, 0xB3A0]),
            SendQueues {
                sockets: 3,
                bytes: 0x1D99,
                max_bytes: 0x1000
            }
        );
    }

    #[test]
    fn own_process_is_readable() {
        assert!(memory(None).unwrap().rss_kib > 0);
        let pid = std::process::id();
        let before = cpu_time(Some(pid)).unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(5) {}
        assert!(cpu_time(Some(pid)).unwrap() > before);
        assert!(cpu_time(None).unwrap() > Duration::ZERO);
    }
}
