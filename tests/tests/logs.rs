//! What the daemons write for a log collector: `--log-format json` gives
//! one JSON object per line, with the event's fields as keys.

use leapio_tests::split::{bin, term};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn json_logs_are_one_object_per_line_with_the_fields_as_keys() {
    let dir = leapio_tests::server::test_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("link.sock");
    let mut hostd = Command::new(bin("leapio-hostd"))
        .arg("--log-format")
        .arg("json")
        .arg("--link")
        .arg(format!("unix:{}", link.display()))
        .arg("--ctrl")
        .arg(format!("name=vm0,sock={}", dir.join("vm0.sock").display()))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn leapio-hostd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !link.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped = term(&mut hostd, Duration::from_secs(10));
    let mut text = String::new();
    hostd
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stopped.is_some(), "leapio-hostd did not stop:\n{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        assert!(
            l["level"].is_string() && l["message"].is_string() && l["timestamp"].is_string(),
            "{l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["ctrl"] == "vm0" && l["level"] == "INFO"),
        "no line with the controller's name as a key:\n{text}"
    );
}
