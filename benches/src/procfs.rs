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
    fn own_process_is_readable() {
        assert!(memory(None).unwrap().rss_kib > 0);
        cpu_ticks(None).unwrap();
        assert!(clock_ticks_per_second() > 0);
    }
}
