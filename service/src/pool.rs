//! A fixed pool of threads serving any number of strands.
//!
//! A daemon serving many VMs must not have a thread per VM: its threads
//! grow with its pollers and its configuration, not with its tenants. A
//! [`Strand`] is one tenant's serial work (a controller's messages, its
//! device's requests): woken by whoever has something for it, it runs on
//! one of the pool's threads, never on two at once, and again if it was
//! woken while running, so no wake-up is lost. Its work is a function that
//! does what is pending and returns; state it keeps between runs lives in
//! the function (behind its own lock).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Not woken.
const IDLE: u8 = 0;
/// Woken, waiting for a thread.
const QUEUED: u8 = 1;
/// Running on a thread.
const RUNNING: u8 = 2;
/// Running, and woken again meanwhile: it runs once more after this run.
const AGAIN: u8 = 3;
/// Closed: wake-ups are ignored.
const CLOSED: u8 = 4;

type Work = Box<dyn Fn() + Send + Sync>;

struct Inner {
    name: String,
    queue: Mutex<VecDeque<Arc<Strand>>>,
    ready: Condvar,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The pool's threads. Dropping it stops them once the strands that are
/// running return (queued ones are left).
pub struct Pool {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

/// One tenant's serial work on a [`Pool`].
pub struct Strand {
    name: String,
    state: AtomicU8,
    pool: Arc<Inner>,
    work: Work,
}

impl Pool {
    /// Start `threads` threads (at least one), named `name-N`.
    pub fn start(name: &str, threads: usize) -> std::io::Result<Pool> {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let me = inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || me.serve());
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Those started stop with the pool.
                    drop(Pool {
                        inner,
                        threads: handles,
                    });
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            inner,
            threads: handles,
        })
    }

    /// How many threads serve the strands.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// A strand running `work` on this pool; it runs when first woken.
    pub fn strand(&self, name: &str, work: impl Fn() + Send + Sync + 'static) -> Arc<Strand> {
        Arc::new(Strand {
            name: name.to_string(),
            state: AtomicU8::new(IDLE),
            pool: self.inner.clone(),
            work: Box::new(work),
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        // Taking the lock orders the flag before any thread's next wait.
        drop(lock(&self.inner.queue));
        self.inner.ready.notify_all();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // Dropped from its own work (the last owner let go there): that
            // thread ends when the work returns.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl Inner {
    fn push(&self, s: Arc<Strand>) {
        lock(&self.queue).push_back(s);
        self.ready.notify_one();
    }

    fn serve(&self) {
        loop {
            let strand = {
                let mut q = lock(&self.queue);
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(s) = q.pop_front() {
                        break s;
                    }
                    q = self
                        .ready
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            strand.run_once();
        }
    }
}

impl Strand {
    /// Have the work run (soon, on a pool thread). Waking a strand that is
    /// queued does nothing more; one that is running runs again after.
    pub fn wake(self: &Arc<Self>) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let next = match s {
                IDLE => QUEUED,
                RUNNING => AGAIN,
                _ => return,
            };
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if next == QUEUED {
                        self.pool.push(self.clone());
                    }
                    return;
                }
                Err(now) => s = now,
            }
        }
    }

    /// Ignore wake-ups from now on (a run in progress finishes).
    pub fn close(&self) {
        self.state.store(CLOSED, Ordering::Release);
    }

    /// Whether it was closed (or its work panicked).
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    fn run_once(self: Arc<Self>) {
        if self
            .state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Closed while queued.
            return;
        }
        if catch_unwind(AssertUnwindSafe(|| (self.work)())).is_err() {
            tracing::error!(pool = %self.pool.name, strand = %self.name, "work panicked: the strand is closed");
            self.close();
            return;
        }
        match self
            .state
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(AGAIN) => {
                // Woken while running: to the back of the queue, so that one
                // busy strand does not hold a thread from the others.
                self.state.store(QUEUED, Ordering::Release);
                let pool = self.pool.clone();
                pool.push(self);
            }
            Err(_) => {}
        }
    }
}

/// That a strand's work has finished for good, for whoever waits for it
/// (a controller removed, a runtime letting go).
#[derive(Default)]
pub struct Finished {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Finished {
    /// Say it: the work has finished (before closing its strand, if it
    /// does).
    pub fn set(&self) {
        *lock(&self.done) = true;
        self.cv.notify_all();
    }

    /// Wait until it is said; false if `strand` was closed without it (its
    /// work panicked: it never will be).
    pub fn wait(&self, strand: &Strand) -> bool {
        let mut d = lock(&self.done);
        while !*d {
            if strand.is_closed() {
                return false;
            }
            // A panic closes the strand without a word: look again now and
            // then.
            d = self
                .cv
                .wait_timeout(d, std::time::Duration::from_millis(100))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_strand_never_runs_on_two_threads_and_loses_no_wake_up() {
        let pool = Pool::start("t", 4).unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let overlap = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (i, o, p, d) = (
            inside.clone(),
            overlap.clone(),
            pending.clone(),
            done.clone(),
        );
        let s = pool.strand("one", move || {
            if i.fetch_add(1, Ordering::SeqCst) != 0 {
                o.store(true, Ordering::SeqCst);
            }
            // Take everything pending, as a mailbox does.
            let n = p.swap(0, Ordering::SeqCst);
            std::thread::yield_now();
            d.fetch_add(n, Ordering::SeqCst);
            i.fetch_sub(1, Ordering::SeqCst);
        });
        let wakers: Vec<_> = (0..4)
            .map(|_| {
                let (s, p) = (s.clone(), pending.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        p.fetch_add(1, Ordering::SeqCst);
                        s.wake();
                    }
                })
            })
            .collect();
        for w in wakers {
            w.join().unwrap();
        }
        wait_for("every item handled", || {
            done.load(Ordering::SeqCst) == 40_000
        });
        assert!(
            !overlap.load(Ordering::SeqCst),
            "the strand ran twice at once"
        );
    }

    #[test]
    fn many_strands_share_few_threads_and_a_slow_one_holds_up_only_itself() {
        let pool = Pool::start("t", 2).unwrap();
        let slow_release = Arc::new(AtomicBool::new(false));
        let r = slow_release.clone();
        let slow = pool.strand("slow", move || {
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        slow.wake();
        let ran = Arc::new(AtomicUsize::new(0));
        let strands: Vec<_> = (0..1000)
            .map(|i| {
                let ran = ran.clone();
                pool.strand(&format!("s{i}"), move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for s in &strands {
            s.wake();
        }
        wait_for("the 1000 strands", || ran.load(Ordering::SeqCst) == 1000);
        assert_eq!(pool.threads(), 2);
        slow_release.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_closed_or_panicking_strand_no_longer_runs_and_the_pool_goes_on() {
        let pool = Pool::start("t", 1).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let bad = pool.strand("bad", move || {
            r.fetch_add(1, Ordering::SeqCst);
            panic!("a bug in one tenant's work");
        });
        bad.wake();
        wait_for("the panic", || ran.load(Ordering::SeqCst) == 1);
        assert!(
            !Finished::default().wait(&bad),
            "a wait for a panicked strand ends"
        );
        bad.wake();
        let good_ran = Arc::new(AtomicUsize::new(0));
        let g = good_ran.clone();
        let good = pool.strand("good", move || {
            g.fetch_add(1, Ordering::SeqCst);
        });
        good.wake();
        wait_for("the good strand", || good_ran.load(Ordering::SeqCst) == 1);
        assert_eq!(ran.load(Ordering::SeqCst), 1, "a panicked strand ran again");
        good.close();
        good.wake();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(good_ran.load(Ordering::SeqCst), 1, "a closed strand ran");
    }
}
