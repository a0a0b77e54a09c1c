//! Telling a service manager how the daemon is doing: systemd's
//! `sd_notify` protocol (a unit of `Type=notify`), through the `sd-notify`
//! crate.
//!
//! - [`ready`]: `READY=1` (with a `STATUS=` line) once the process serves:
//!   its sockets are bound and its controllers or link are set up, so that
//!   units ordered after it find it answering.
//! - [`stopping`]: `STOPPING=1` when it was asked to stop.
//! - [`Watchdog`]: with `WatchdogSec=` in the unit, the manager passes
//!   `WATCHDOG_USEC` (and `WATCHDOG_PID`); a thread sends `WATCHDOG=1`
//!   every half of it, but only while a progress check the process gives
//!   passes (its pollers or its events thread went round since the last
//!   check). When the check fails the thread stops for good and logs why,
//!   once: the manager then kills and restarts the hung process.
//! - [`listen_socket`]: a listening socket the manager passed (socket
//!   activation, `LISTEN_FDS`).
//!
//! Without `NOTIFY_SOCKET` (no service manager, or a unit that does not
//! ask for notifications) all of it does nothing. systemd's managers give
//! `NOTIFY_SOCKET` as a path; a socket in the abstract namespace (`@...`)
//! is not supported by the crate, and a send that fails is logged.

use sd_notify::NotifyState;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static READY: AtomicBool = AtomicBool::new(false);
static STOPPING: AtomicBool = AtomicBool::new(false);
static SEND_FAILED: AtomicBool = AtomicBool::new(false);
static LISTEN_TAKEN: AtomicBool = AtomicBool::new(false);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a service manager listens for notifications.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        // Once: a manager that went away would make every pet fail.
        if !SEND_FAILED.swap(true, Ordering::Relaxed) {
            tracing::warn!("cannot notify the service manager: {e}");
        }
    }
}

/// `READY=1` with `status` as the unit's status line; sent once.
pub fn ready(status: &str) {
    if !enabled() || READY.swap(true, Ordering::AcqRel) {
        return;
    }
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`; sent once.
pub fn stopping() {
    if !enabled() || STOPPING.swap(true, Ordering::AcqRel) {
        return;
    }
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The unit's status line (`systemctl status` shows it).
pub fn status(status: &str) {
    if enabled() {
        send(&[NotifyState::Status(status)]);
    }
}

/// How often to pet the manager's watchdog: half of `WATCHDOG_USEC`, when
/// it is set and `WATCHDOG_PID` is this process or absent.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|t| !t.is_zero())
        .map(|t| t / 2)
}

/// A progress check for [`Watchdog`]: `read` gives counters that each
/// working thread bumps as it goes round (one per poller, say); the check
/// passes when every one moved since the previous check (the first is
/// compared with the values at creation). A different number of counters
/// (a thread was added) starts again from the new values. `what` names the
/// threads in the error that says which did not move.
pub fn counters_moved<F>(what: &'static str, read: F) -> impl Fn() -> bool + Send + 'static
where
    F: Fn() -> Vec<u64> + Send + 'static,
{
    let last = Mutex::new(read());
    move || {
        let now = read();
        let mut last = lock(&last);
        let stuck: Vec<usize> = if now.len() == last.len() {
            now.iter()
                .zip(last.iter())
                .enumerate()
                .filter(|(_, (a, b))| a == b)
                .map(|(i, _)| i)
                .collect()
        } else {
            Vec::new()
        };
        *last = now;
        if stuck.is_empty() {
            return true;
        }
        tracing::error!(stuck = ?stuck, "{what}: no progress since the last watchdog check");
        false
    }
}

/// The thread that pets the service manager's watchdog while a progress
/// check passes. Stopped (and joined) on drop.
pub struct Watchdog {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Pet the manager's watchdog (see [`watchdog_interval`]) while `check`
    /// passes; `None` when the manager asked for no watchdog (or there is
    /// no manager).
    pub fn start(check: impl Fn() -> bool + Send + 'static) -> Option<Watchdog> {
        if !enabled() {
            return None;
        }
        let every = watchdog_interval()?;
        tracing::info!(every = ?every, "service manager's watchdog: petting it while the process makes progress");
        match Watchdog::with(every, check, || send(&[NotifyState::Watchdog])) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("cannot start the watchdog thread: {e}");
                None
            }
        }
    }

    /// Every `every`, run `check`: if it passes, `pet`; once it fails, log
    /// it and stop (no `pet` ever again).
    pub fn with(
        every: Duration,
        check: impl Fn() -> bool + Send + 'static,
        pet: impl Fn() + Send + 'static,
    ) -> std::io::Result<Watchdog> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let (flag, cv) = &*s;
                loop {
                    let until = Instant::now() + every;
                    let mut stopped = lock(flag);
                    while !*stopped {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        stopped = cv
                            .wait_timeout(stopped, left)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0;
                    }
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    if !check() {
                        tracing::error!(
                            "watchdog: the process made no progress in {every:?}: no longer \
                             telling the service manager it is alive (it will be restarted)"
                        );
                        return;
                    }
                    pet();
                }
            })?;
        Ok(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The listening Unix socket the service manager passed to this process
/// (socket activation: `LISTEN_PID` is this process and `LISTEN_FDS` is
/// 1), taken once; `None` when there is none, or it is not a listening
/// Unix stream socket.
pub fn listen_socket() -> Option<UnixListener> {
    let mut fds = sd_notify::listen_fds().ok()?;
    if fds.len() != 1 || LISTEN_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let fd = fds.next()?;
    let opt = |name: libc::c_int| {
        let mut v: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, an int
        // that lives through the call; a bad descriptor is an error.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                std::ptr::addr_of_mut!(v).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    if opt(libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || opt(libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        || opt(libc::SO_ACCEPTCONN) != Some(1)
    {
        tracing::warn!(
            fd,
            "the service manager passed a descriptor that is not a listening Unix stream socket: ignored"
        );
        return None;
    }
    // SAFETY: the descriptor was passed to this process by the service
    // manager (LISTEN_PID is ours), is open (getsockopt answered) and is
    // taken here only once (LISTEN_TAKEN), so nothing else owns it.
    Some(unsafe { UnixListener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

    #[test]
    fn the_watchdog_pets_only_while_the_check_passes() {
        let ok = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let o = ok.clone();
        let w = Watchdog::with(
            Duration::from_millis(10),
            move || o.load(Ordering::Acquire),
            move || {
                let _ = lock(&tx).send(());
            },
        )
        .unwrap();
        // It keeps petting while the check passes.
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("WATCHDOG=1 while the check passes");
        }
        ok.store(false, Ordering::Release);
        // A pet may have been under way when the check started failing.
        std::thread::sleep(Duration::from_millis(50));
        while rx.try_recv().is_ok() {}
        // None after that, even once the check would pass again.
        std::thread::sleep(Duration::from_millis(100));
        ok.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "WATCHDOG=1 after the check failed");
        drop(w);
    }

    #[test]
    fn a_watchdog_stops_at_once_when_dropped() {
        let t = Instant::now();
        let w = Watchdog::with(Duration::from_secs(60), || true, || {}).unwrap();
        drop(w);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn counters_must_all_move_between_checks() {
        let c = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let r = c.clone();
        let check = counters_moved("test threads", move || {
            r.iter().map(|a| a.load(Ordering::Relaxed)).collect()
        });
        // Neither moved.
        assert!(!check());
        c[0].fetch_add(1, Ordering::Relaxed);
        c[1].fetch_add(1, Ordering::Relaxed);
        assert!(check());
        // One stuck is enough to fail.
        c[0].fetch_add(1, Ordering::Relaxed);
        assert!(!check());
        // No counters (no threads yet): nothing is stuck.
        let none = counters_moved("none", Vec::new);
        assert!(none());
    }
}
