//! Measuring helpers: a recorder of arrivals and latencies, percentiles, CPU time, resident
//! memory and the date.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The bench's clock: every payload carries the nanoseconds since this instant in its first
/// eight bytes, so the receiver (in the same process) measures one-way latency.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self(Instant::now())
    }

    /// Nanoseconds since the clock started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A payload of `size` bytes (at least 8) stamped with the current time.
    pub fn stamp(&self, size: usize) -> Vec<u8> {
        let mut p = vec![0x5a; size.max(8)];
        p[..8].copy_from_slice(&self.now_ns().to_le_bytes());
        p
    }
}

/// The send time stamped in a payload, if it has one.
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// Counts what arrives inside the measuring window `[start, end)` (bench-clock nanoseconds) and
/// keeps the latency of every message sent inside it.
#[derive(Debug)]
pub struct Recorder {
    clock: Clock,
    start: AtomicU64,
    end: AtomicU64,
    /// Messages that arrived, whenever they were sent (used to wait for warm-up).
    pub arrived: AtomicU64,
    count: AtomicU64,
    bytes: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

impl Recorder {
    /// A recorder whose window is not open yet.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            start: AtomicU64::new(u64::MAX),
            end: AtomicU64::new(u64::MAX),
            arrived: AtomicU64::new(0),
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            latencies: Mutex::new(Vec::new()),
        }
    }

    /// Forgets everything and closes the window (before the next run on the same pipe).
    pub fn reset(&self) {
        for a in [&self.start, &self.end] {
            a.store(u64::MAX, Ordering::SeqCst);
        }
        for a in [&self.arrived, &self.count, &self.bytes] {
            a.store(0, Ordering::SeqCst);
        }
        if let Ok(mut l) = self.latencies.lock() {
            l.clear();
        }
    }

    /// Opens the window now.
    pub fn open(&self) -> u64 {
        let now = self.clock.now_ns();
        self.start.store(now, Ordering::SeqCst);
        now
    }

    /// Closes the window now.
    pub fn close(&self) -> u64 {
        let now = self.clock.now_ns();
        self.end.store(now, Ordering::SeqCst);
        now
    }

    /// Records one message of `payload` arriving now.
    pub fn arrive(&self, payload: &[u8]) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_ns();
        let (start, end) = (self.start.load(Ordering::Relaxed), self.end.load(Ordering::Relaxed));
        if now < start || now >= end {
            return;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
        if let Some(sent) = stamp_of(payload)
            && sent >= start
            && let Ok(mut l) = self.latencies.lock()
        {
            l.push(now.saturating_sub(sent));
        }
    }

    /// Messages and bytes that arrived in the window, and the latencies (sorted).
    pub fn take(&self) -> (u64, u64, Vec<u64>) {
        let mut l = self.latencies.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
        l.sort_unstable();
        (self.count.load(Ordering::SeqCst), self.bytes.load(Ordering::SeqCst), l)
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Samples.
    pub samples: usize,
}

impl Percentiles {
    /// Percentiles of sorted nanosecond samples.
    pub fn of(sorted: &[u64]) -> Self {
        let at = |q: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[i] as f64 / 1000.0
        };
        Self { p50: at(0.50), p99: at(0.99), p999: at(0.999), samples: sorted.len() }
    }
}

/// User plus system CPU time of this process so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The CPU time process `pid` has used so far, user and system, every thread
/// (`/proc/<pid>/stat`, in clock ticks of 10 ms on Linux).
pub fn process_cpu_time(pid: u32) -> Result<Duration, crate::BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3 of the line, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("unreadable stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, crate::BoxError> {
        Ok(fields.get(i).ok_or("short stat")?.parse()?)
    };
    let total = ticks(11)?.saturating_add(ticks(12)?);
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

/// `VmRSS` of process `pid` (`None`: this process) in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: Option<u32>) -> std::io::Result<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmRSS line"))
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> std::io::Result<u64> {
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        l.rlim_cur = l.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(l.rlim_cur)
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Howard Hinnant's civil_from_days.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
