//! What every LeapIO daemon (`leapio-hostd`, `socp`, the all-in-one
//! `leapio`) shares, and nothing of the host side or the runtime:
//!
//! - [`config_file`]: `--config FILE`, one TOML file per process, the
//!   command line over it, and the running configuration rendered back;
//! - [`control`]: the JSON-RPC control socket and its client (`leapioctl`);
//! - [`logging`], [`error_chain`]: how the daemons log (text or JSON
//!   lines, repeats of a warning rate-limited) and report errors;
//! - [`metrics`]: latency histograms, the Prometheus text format and the
//!   endpoint that serves it;
//! - [`notify`]: telling a service manager (systemd's `Type=notify`) that
//!   the process serves, that it stops, and that it makes progress (the
//!   watchdog);
//! - [`pool`]: a fixed pool of threads serving any number of strands (one
//!   tenant's serial work each), so threads do not grow with tenants;
//! - [`socket`]: listening sockets that appear with their final mode and
//!   owner and are removed only by their owner; the peer's credentials.

pub mod config_file;
pub mod control;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod socket;

/// An error and its sources, joined with ": " (our error types do not
/// repeat their source in their own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Log to stderr as text with `level` as the filter (see [`logging`]).
pub fn init_logging(level: &str) {
    logging::init(level, logging::LogFormat::Text);
}
