//! The flusher: one thread per flash backend that makes the media file
//! durable (`fdatasync`) on request, so that neither a guest's Flush nor
//! GC's "relocated copies are durable before the victim is erased" ever
//! blocks a poller.
//!
//! A request returns a ticket; the ticket is done once a sync that started
//! after the request has finished. Pollers check tickets without locking.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Shared state of the flusher.
pub(crate) struct Syncer {
    state: Mutex<Requests>,
    cv: Condvar,
    /// Highest ticket covered by a finished sync.
    completed: AtomicU64,
    /// A sync failed: durability is no longer known.
    failed: AtomicBool,
}

struct Requests {
    requested: u64,
    stop: bool,
}

impl Syncer {
    fn new() -> Syncer {
        Syncer {
            state: Mutex::new(Requests {
                requested: 0,
                stop: false,
            }),
            cv: Condvar::new(),
            completed: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Ask for a sync of everything written so far; returns its ticket.
    pub(crate) fn request(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.requested += 1;
        self.cv.notify_all();
        s.requested
    }

    /// Highest ticket done.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// `None` while `ticket` is pending; `Some(false)` when a sync failed.
    pub(crate) fn status(&self, ticket: u64) -> Option<bool> {
        if self.completed() >= ticket {
            Some(!self.failed.load(Ordering::Acquire))
        } else {
            None
        }
    }

    /// Whether a sync ever failed.
    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// The flusher thread; stopped and joined on drop.
pub(crate) struct Flusher {
    syncer: Arc<Syncer>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Start the thread syncing `file`.
    pub(crate) fn start(file: File) -> std::io::Result<Flusher> {
        let syncer = Arc::new(Syncer::new());
        let s = Arc::clone(&syncer);
        let thread = std::thread::Builder::new()
            .name("flash-sync".to_owned())
            .spawn(move || run(&s, &file))?;
        Ok(Flusher {
            syncer,
            thread: Some(thread),
        })
    }

    pub(crate) fn syncer(&self) -> &Arc<Syncer> {
        &self.syncer
    }
}

fn run(s: &Syncer, file: &File) {
    loop {
        let target = {
            let mut st = s.state.lock().unwrap_or_else(PoisonError::into_inner);
            while !st.stop && st.requested <= s.completed() {
                st = s.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.stop && st.requested <= s.completed() {
                return;
            }
            st.requested
        };
        if let Err(e) = file.sync_data() {
            tracing::error!(error = %e, "flash media: fdatasync failed; later flushes report EIO");
            s.failed.store(true, Ordering::Release);
        }
        s.completed.store(target, Ordering::Release);
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        {
            let mut st = self
                .syncer
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            st.stop = true;
            self.syncer.cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
