//! CPU time from /proc: the `stat` line of a process or thread (utime,
//! stime in clock ticks) and `schedstat` (on-CPU nanoseconds). Used by
//! `leapio-perf` and by tests that bound what a poller spends.

use std::path::Path;
use std::time::Duration;

/// The thread name (comm) and (utime, stime) in clock ticks from the
/// contents of /proc/PID/task/TID/stat. The name sits in parentheses and may
/// hold spaces and parentheses itself: fields follow the last ')'.
pub fn parse_stat(s: &str) -> Option<(&str, u64, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?;
    // After ")": state (field 3), ... utime is field 14, stime 15.
    let mut f = s.get(close + 1..)?.split_ascii_whitespace();
    let utime = f.nth(11)?.parse().ok()?;
    let stime = f.next()?.parse().ok()?;
    Some((comm, utime, stime))
}

/// A number field of /proc/PID/status (`Threads`, `VmRSS` in KiB, ...);
/// `pid` may be "self".
pub fn status_field(pid: &str, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid).join("status")).ok()?;
    status_value(&status, name)
}

/// The number after `name:` in the contents of a /proc status file.
pub fn status_value(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// On-CPU nanoseconds: the first field of /proc/.../schedstat.
pub fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_ascii_whitespace().next()?.parse().ok()
}

/// Nanoseconds per clock tick (the unit of utime and stime).
pub fn tick_ns() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    match u64::try_from(hz) {
        Ok(hz) if hz > 0 => 1_000_000_000 / hz,
        _ => 10_000_000,
    }
}

/// User + system time in the `stat` file at `path` (a process's or a
/// thread's), with its name; None if it cannot be read.
pub fn cpu_time(path: &Path) -> Option<(String, Duration)> {
    let s = std::fs::read_to_string(path).ok()?;
    let (comm, u, st) = parse_stat(&s)?;
    Some((comm.to_owned(), Duration::from_nanos((u + st) * tick_ns())))
}

/// User + system time of this process's thread named `name`.
pub fn thread_cpu(name: &str) -> Option<Duration> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .filter_map(|t| cpu_time(&t.path().join("stat")))
        .find(|(comm, _)| comm == name)
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines() {
        let line = "4242 (socp-poller-0) R 1 2 3 4 5 6 7 8 9 10 1234 56 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("socp-poller-0", 1234, 56)));
        // A name with spaces and a parenthesis.
        let line = "7 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 0 0";
        assert_eq!(parse_stat(line), Some(("a) b (c", 11, 12)));
        assert_eq!(parse_stat("7 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
        let status = "Name:\tsocp\nThreadsX:\t1\nThreads:\t9\nVmRSS:\t   20276 kB\n";
        assert_eq!(status_value(status, "Threads"), Some(9));
        assert_eq!(status_value(status, "VmRSS"), Some(20276));
        assert_eq!(status_value(status, "VmHWM"), None);
        assert_eq!(parse_schedstat("123456789 1000 42\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn this_process_and_a_named_thread_are_found() {
        assert!(cpu_time(Path::new("/proc/self/stat")).is_some());
        let name = "proc-stat-probe";
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (up_tx, up) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Running: the thread has its name.
                up_tx.send(()).unwrap();
                rx.recv()
            })
            .unwrap();
        up.recv().unwrap();
        assert!(thread_cpu(name).is_some());
        assert!(thread_cpu("no-such-thread").is_none());
        tx.send(()).unwrap();
        t.join().unwrap().unwrap();
    }
}
