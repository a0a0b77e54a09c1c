//! Figures: the latency histogram's summary, and CPU time of threads read
//! from /proc with files opened before the run (sampling reads into a fixed
//! buffer: no allocation while I/O runs).

use hdrhistogram::Histogram;
use leapio_tests::proc_stat::{parse_schedstat, parse_stat, tick_ns};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to an hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    // Latencies stay far below 2^52 ns: exact.
    #[allow(clippy::cast_precision_loss)]
    let v = ns as f64;
    v / 1000.0
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p95_us: us(h.value_at_quantile(0.95)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// CPU time of a thread, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// On-CPU time (schedstat's first field when the kernel has it,
    /// otherwise user + system from stat at clock-tick resolution).
    pub total_ns: u64,
    pub user_ns: u64,
    pub sys_ns: u64,
}

impl CpuTimes {
    pub fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes {
            total_ns: self.total_ns.saturating_sub(before.total_ns),
            user_ns: self.user_ns.saturating_sub(before.user_ns),
            sys_ns: self.sys_ns.saturating_sub(before.sys_ns),
        }
    }
    fn add(&mut self, o: CpuTimes) {
        self.total_ns += o.total_ns;
        self.user_ns += o.user_ns;
        self.sys_ns += o.sys_ns;
    }
}

struct ThreadFiles {
    /// Thread ID (0: the calling thread).
    tid: libc::pid_t,
    name: String,
    stat: File,
    schedstat: Option<File>,
    /// The last figures read (kept once the thread has exited).
    last: CpuTimes,
}

/// The threads of a process whose names start with given prefixes,
/// followed through their /proc files. Threads that appear later (socp's
/// io_uring workers, `iou-wrk-*`, start when the kernel first punts a
/// request to them) are picked up by [`ThreadCpu::rescan`]; threads that
/// exit keep the CPU time last read.
pub struct ThreadCpu {
    dir: Option<String>,
    prefixes: Vec<String>,
    threads: Vec<ThreadFiles>,
    tick_ns: u64,
    buf: [u8; 1024],
}

impl ThreadCpu {
    /// Threads of `pid` (None: this process) named `prefix*` for any of
    /// `prefixes`.
    pub fn open(pid: Option<u32>, prefixes: &[&str]) -> io::Result<ThreadCpu> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}/task"),
            None => "/proc/self/task".to_owned(),
        };
        let mut t = ThreadCpu {
            dir: Some(dir),
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            threads: Vec::new(),
            tick_ns: tick_ns(),
            buf: [0; 1024],
        };
        t.rescan()?;
        Ok(t)
    }

    /// The calling thread only.
    pub fn current_thread() -> io::Result<ThreadCpu> {
        let path = Path::new("/proc/thread-self");
        Ok(ThreadCpu {
            dir: None,
            prefixes: Vec::new(),
            threads: vec![ThreadFiles {
                tid: 0,
                name: "self".to_owned(),
                stat: File::open(path.join("stat"))?,
                schedstat: File::open(path.join("schedstat")).ok(),
                last: CpuTimes::default(),
            }],
            tick_ns: tick_ns(),
            buf: [0; 1024],
        })
    }

    /// Look for matching threads that started since the last scan
    /// (allocates: call it outside the I/O loop's steady state).
    pub fn rescan(&mut self) -> io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            let Some(tid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            if self.threads.iter().any(|t| t.tid == tid) {
                continue;
            }
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue; // exited meanwhile
            };
            let comm = comm.trim_end();
            if !self.prefixes.iter().any(|p| comm.starts_with(p.as_str())) {
                continue;
            }
            let Ok(stat) = File::open(path.join("stat")) else {
                continue;
            };
            self.threads.push(ThreadFiles {
                tid,
                name: comm.to_owned(),
                stat,
                schedstat: File::open(path.join("schedstat")).ok(),
                last: CpuTimes::default(),
            });
        }
        Ok(())
    }

    /// Names of the threads followed, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.threads.iter().map(|t| t.name.clone()).collect();
        v.sort();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Run every thread on CPU `cpu` only.
    pub fn pin(&self, cpu: usize) -> io::Result<()> {
        for t in &self.threads {
            pin_thread(t.tid, cpu)?;
        }
        Ok(())
    }

    /// CPU time of all the threads, summed (no allocation).
    pub fn sample(&mut self) -> CpuTimes {
        let mut sum = CpuTimes::default();
        for t in &mut self.threads {
            let mut c = CpuTimes::default();
            let mut ok = false;
            if let Some(s) = read_at(&t.stat, &mut self.buf) {
                if let Some((_, u, s)) = parse_stat(s) {
                    c.user_ns = u * self.tick_ns;
                    c.sys_ns = s * self.tick_ns;
                    c.total_ns = c.user_ns + c.sys_ns;
                    ok = true;
                }
            }
            if let Some(f) = &t.schedstat {
                if let Some(ns) = read_at(f, &mut self.buf).and_then(parse_schedstat) {
                    c.total_ns = ns;
                }
            }
            if ok {
                t.last = c;
            }
            sum.add(t.last);
        }
        sum
    }
}

/// Restrict thread `tid` (0: the calling thread) to CPU `cpu`.
pub fn pin_thread(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    if tid < 0 {
        return Err(io::Error::other("no such thread"));
    }
    // SAFETY: cpu_set_t is plain data: all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::other(format!("CPU {cpu} out of range")));
    }
    // SAFETY: cpu is below the set's capacity (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes a valid set of the size given; no memory is retained.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read_at<'b>(f: &File, buf: &'b mut [u8]) -> Option<&'b str> {
    let n = f.read_at(buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_summary_in_microseconds() {
        let mut h = new_histogram();
        assert_eq!(LatencySummary::of(&h), LatencySummary::default());
        // 1..=1000 us, one sample each.
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert!(close(s.min_us, 1.0), "{s:?}");
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p90_us, 900.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert!(close(s.max_us, 1000.0), "{s:?}");
        assert!(close(s.mean_us, 500.5), "{s:?}");
        // A tail: 1% at 10 ms moves p99.9 and max, not p50.
        for _ in 0..10 {
            h.record(10_000_000).unwrap();
        }
        let t = LatencySummary::of(&h);
        assert!(close(t.p50_us, 505.0) || close(t.p50_us, 506.0), "{t:?}");
        assert!(close(t.p999_us, 10_000.0), "{t:?}");
        assert!(close(t.max_us, 10_000.0), "{t:?}");
    }

    #[test]
    fn this_threads_cpu_is_readable() {
        let mut me = ThreadCpu::current_thread().unwrap();
        let a = me.sample();
        let b = me.sample();
        assert!(b.total_ns >= a.total_ns);
        assert_eq!(b.since(a).total_ns, b.total_ns - a.total_ns);
        let mut all = ThreadCpu::open(None, &[""]).unwrap();
        assert!(!all.is_empty());
        let n = all.names().len();
        all.rescan().unwrap();
        assert!(all.names().len() >= n, "no thread counted twice or lost");
        let none = ThreadCpu::open(None, &["no-such-thread-"]).unwrap();
        assert!(none.is_empty());
    }
}
