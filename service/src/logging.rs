//! How the daemons log: to stderr, as text (colours only on a terminal) or
//! as JSON lines for machines (`--log-format json`: one object per line,
//! the event's fields as keys, the current span's under "span"), with
//! repeats of one warning rate-limited: at most [`BURST`] a second from
//! one place in the code, then a count of what was left out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Warnings and errors from one place in the code per second, before the
/// rest of that second's are left out.
pub const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: expected text or json")),
        }
    }
}

/// Log to stderr in `format`, with `level` as the filter (tracing
/// env-filter syntax; RUST_LOG wins). For the binaries.
pub fn init(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let repeats = Repeats::default();
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(repeats.clone());
    let done = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if done.is_ok() {
        repeats.report_from_a_thread();
    }
}

/// One place's warnings in the current window.
struct Window {
    start: Instant,
    count: u32,
    /// Left out in this window and not reported yet.
    left_out: u64,
    file: &'static str,
    line: u32,
}

/// The rate limiter of repeated warnings: a layer that leaves events out.
#[derive(Clone, Default)]
pub struct Repeats {
    places: Arc<Mutex<HashMap<Identifier, Window>>>,
    reporter: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Repeats {
    /// Whether an event of level `level` from `place` is written now.
    pub fn allow(&self, place: Identifier, level: Level, file: &'static str, line: u32) -> bool {
        if level > Level::WARN {
            return true;
        }
        let now = Instant::now();
        let mut places = lock(&self.places);
        let w = places.entry(place).or_insert(Window {
            start: now,
            count: 0,
            left_out: 0,
            file,
            line,
        });
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.count = 0;
        }
        if w.count < BURST {
            w.count += 1;
            true
        } else {
            w.left_out += 1;
            false
        }
    }

    /// What was left out since the last call: (file, line, count).
    pub fn take_left_out(&self) -> Vec<(&'static str, u32, u64)> {
        lock(&self.places)
            .values_mut()
            .filter(|w| w.left_out > 0)
            .map(|w| (w.file, w.line, std::mem::take(&mut w.left_out)))
            .collect()
    }

    /// Say what was left out, once a second, from a thread of its own (an
    /// event cannot be logged from inside the logging of another).
    fn report_from_a_thread(&self) {
        if self.reporter.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let _ = std::thread::Builder::new()
            .name("log-repeats".into())
            .spawn(move || loop {
                std::thread::sleep(WINDOW);
                for (file, line, n) in me.take_left_out() {
                    tracing::warn!(
                        left_out = n,
                        at = format_args!("{file}:{line}"),
                        "repeats of a warning left out of the log"
                    );
                }
            });
    }
}

impl<S: Subscriber> Layer<S> for Repeats {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let m = event.metadata();
        self.allow(
            m.callsite(),
            *m.level(),
            m.file().unwrap_or("?"),
            m.line().unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Lines written, shared with the test.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_fields_and_repeats_are_left_out_and_counted() {
        let out = Lines::default();
        let w = out.clone();
        let repeats = Repeats::default();
        let sub = tracing_subscriber::registry().with(repeats.clone()).with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(move || w.clone()),
        );
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("controller", ctrl = "vm7");
            let _g = span.enter();
            for i in 0..25 {
                tracing::warn!(attempt = i, "the same warning");
            }
            for i in 0..25 {
                tracing::info!(n = i, "information is never left out");
            }
            tracing::error!("another place");
        });
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        let warned = lines
            .iter()
            .filter(|v| v["message"] == "the same warning")
            .count();
        assert_eq!(warned, BURST as usize);
        let first = lines
            .iter()
            .find(|v| v["message"] == "the same warning")
            .unwrap();
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["attempt"], 0);
        assert_eq!(first["span"]["ctrl"], "vm7");
        assert_eq!(
            lines
                .iter()
                .filter(|v| v["message"] == "information is never left out")
                .count(),
            25
        );
        assert_eq!(
            lines
                .iter()
                .filter(|v| v["message"] == "another place")
                .count(),
            1
        );
        let left = repeats.take_left_out();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].2, 15);
        assert!(left[0].0.ends_with("logging.rs"));
        assert!(repeats.take_left_out().is_empty(), "counted once");
    }

    #[test]
    fn formats_are_named() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("text or json"));
    }
}
