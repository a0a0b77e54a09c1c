//! Bad runtimes on the link: garbage, an old protocol version, namespaces
//! that do not match what the guest has, a runtime that vanishes in the
//! middle of attaching or never answers. The host-driver must stay up,
//! say why, and let a good runtime serve the guest afterwards with its
//! data intact.

use leapio_host_driver::port::Timeouts;
use leapio_link::proto::{PROTOCOL_MAJOR, PROTOCOL_MINOR};
use leapio_link::{frame, LinkError, NsDecl, ToHost, ToRuntime};
use leapio_tests::split::{kill9, SplitHost, Workload, CHUNK};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const CHUNKS: u64 = 256;

fn host() -> (SplitHost, String) {
    let t = Timeouts {
        ack: Duration::from_secs(2),
        drain: Duration::from_secs(2),
        fence: Duration::from_secs(5),
    };
    let h = SplitHost::start("vm0", 4, t);
    let path = h.dir.join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(CHUNKS * CHUNK)
        .unwrap();
    let ns = format!("ns=file:{}", path.display());
    (h, ns)
}

/// A hand-driven runtime: connected and welcomed.
fn fake(h: &SplitHost) -> UnixStream {
    let s = UnixStream::connect(&h.link).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    hello(&s, PROTOCOL_MAJOR);
    match frame::recv::<ToRuntime>(&s).unwrap().0 {
        ToRuntime::Welcome { .. } => s,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

fn hello(s: &UnixStream, major: u16) {
    let m = ToHost::Hello {
        major,
        minor: PROTOCOL_MINOR,
        software: "fake-runtime 0".into(),
    };
    frame::send(s, &m, &[]).unwrap();
}

fn decl(num_blocks: u64) -> NsDecl {
    NsDecl {
        nsid: 1,
        block_size: 512,
        num_blocks,
        volatile_write_cache: true,
        write_zeroes: true,
        deallocate: true,
        persistent: true,
        describe: "fake".into(),
        zoned: None,
    }
}

fn attach(s: &UnixStream, ns: Vec<NsDecl>) {
    let m = ToHost::Attach {
        ctrl: "vm0".into(),
        namespaces: ns,
        handover: false,
    };
    frame::send(s, &m, &[]).unwrap();
}

/// The link ends (the host-driver closed it).
fn closed(s: &UnixStream) -> bool {
    loop {
        match frame::recv::<ToRuntime>(s) {
            Err(LinkError::Closed) | Err(LinkError::Io(_)) => return true,
            Err(LinkError::Timeout(_)) => return false,
            Err(LinkError::Protocol(_)) => return true,
            Ok(_) => {}
        }
    }
}

/// A good runtime serves the guest afterwards: verified I/O, and the data
/// written before is still there.
fn good_runtime_serves(h: &SplitHost, ns: &str, w: Option<Workload>) {
    let mut socp = h.spawn_socp(ns, &[]);
    assert!(
        h.wait_attached(Duration::from_secs(20)),
        "{}",
        h.socp_logs()
    );
    let mut w = match w {
        Some(w) => w,
        None => Workload::new(&h.vfio, CHUNKS, 8, 3).unwrap(),
    };
    w.run_for(Duration::from_millis(200));
    w.drain(Duration::from_secs(20));
    w.verify_all();
    assert!(w.errors.is_empty(), "{:?}\n{}", w.errors, h.socp_logs());
    kill9(&mut socp);
}

#[test]
fn garbage_and_old_versions_are_cut_off() {
    let (h, ns) = host();
    // Garbage instead of Hello.
    let s = UnixStream::connect(&h.link).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    frame::send_raw(&s, b"GET / HTTP/1.1\r\n\r\n and then some").unwrap();
    assert!(closed(&s));
    // Garbage after a good start.
    let s = fake(&h);
    frame::send_raw(&s, &frame::raw_header(frame::FRAME_MAGIC, 9, 0)).unwrap();
    frame::send_raw(&s, b"not json!").unwrap();
    assert!(closed(&s));
    // A frame announcing a huge body.
    let s = fake(&h);
    frame::send_raw(&s, &frame::raw_header(frame::FRAME_MAGIC, u32::MAX, 0)).unwrap();
    assert!(closed(&s));
    // Another major version: refused, saying why.
    let s = UnixStream::connect(&h.link).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    hello(&s, PROTOCOL_MAJOR + 1);
    match frame::recv::<ToRuntime>(&s).unwrap().0 {
        ToRuntime::Refused { reason } => {
            assert!(reason.contains("speaks link protocol"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(closed(&s));
    good_runtime_serves(&h, &ns, None);
}

#[test]
fn a_runtime_that_lies_about_a_namespace_is_refused() {
    let (h, ns) = host();
    // The first runtime sets what the guest sees.
    let mut socp = h.spawn_socp(&ns, &[]);
    assert!(h.wait_attached(Duration::from_secs(20)));
    let mut w = Workload::new(&h.vfio, CHUNKS, 8, 5).unwrap();
    w.run_for(Duration::from_millis(100));
    w.drain(Duration::from_secs(10));
    kill9(&mut socp);
    assert!(h.wait_detached(Duration::from_secs(20)));
    let s = fake(&h);
    for (bad, why) in [
        (
            vec![decl(CHUNKS * 8 + 8)],
            "for the guest, the runtime declares",
        ),
        (vec![], "is not declared"),
        (
            vec![NsDecl {
                block_size: 1000,
                ..decl(CHUNKS * 8)
            }],
            "not a power of two",
        ),
    ] {
        attach(&s, bad);
        // (The host-driver may first say it waits for the killed runtime
        // to be gone.)
        let reply = loop {
            match frame::recv::<ToRuntime>(&s).unwrap().0 {
                ToRuntime::AttachWaiting { .. } => {}
                other => break other,
            }
        };
        match reply {
            ToRuntime::AttachRefused { reason, .. } => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("expected AttachRefused, got {other:?}"),
        }
    }
    drop(s);
    good_runtime_serves(&h, &ns, Some(w));
}

#[test]
fn a_volatile_namespace_cannot_be_taken_over() {
    let (h, _) = host();
    let mut socp = h.spawn_socp("ns=ram:1M", &[]);
    assert!(h.wait_attached(Duration::from_secs(20)));
    kill9(&mut socp);
    let mut again = h.spawn_socp("ns=ram:1M", &[]);
    let status = again.wait().unwrap();
    assert!(!status.success());
    let logs = h.socp_logs();
    assert!(
        logs.contains("is volatile: its data did not survive"),
        "{logs}"
    );
}

#[test]
fn a_runtime_vanishing_mid_attach_or_never_answering_leaves_no_damage() {
    let (h, ns) = host();
    let mut socp = h.spawn_socp(&ns, &[]);
    assert!(h.wait_attached(Duration::from_secs(20)));
    let mut w = Workload::new(&h.vfio, CHUNKS, 8, 11).unwrap();
    w.run_for(Duration::from_millis(100));
    w.drain(Duration::from_secs(10));
    kill9(&mut socp);
    // Gone right after asking.
    for _ in 0..5 {
        let s = fake(&h);
        attach(&s, vec![decl(CHUNKS * 8)]);
        drop(s);
    }
    // Attached, then silent: it never answers the queue resumption; the
    // host-driver gives up on it after its timeout.
    // (The vanished ones' requests may still fill the controller's queue
    // of attach requests for a moment: asked again then.)
    let mut saw_attached = false;
    for _ in 0..50 {
        let s = fake(&h);
        attach(&s, vec![decl(CHUNKS * 8)]);
        let mut busy = false;
        while let Ok((m, _)) = frame::recv::<ToRuntime>(&s) {
            match m {
                ToRuntime::Attached { .. } => saw_attached = true,
                ToRuntime::AttachRefused { reason, .. } if reason.contains("already wait") => {
                    busy = true;
                    break;
                }
                _ => {}
            }
        }
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_attached);
    // The guest's admin queue still answers.
    w.d.identify_controller().expect("admin queue answers");
    good_runtime_serves(&h, &ns, Some(w));
}

#[test]
fn a_runtime_asking_while_another_is_asked_to_let_go_is_answered() {
    let (h, ns) = host();
    let mut socp = h.spawn_socp(&ns, &[]);
    assert!(
        h.wait_attached(Duration::from_secs(20)),
        "{}",
        h.socp_logs()
    );
    // The serving runtime stops answering; a successor asks for a
    // handover, so the controller waits for the first to let go...
    let pid = i32::try_from(socp.id()).unwrap();
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let a = fake(&h);
    let m = ToHost::Attach {
        ctrl: "vm0".into(),
        namespaces: vec![decl(CHUNKS * 8)],
        handover: true,
    };
    frame::send(&a, &m, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // ... while a third asks too: it gets an answer once the wait is over
    // (its request is not lost in the meantime).
    let b = fake(&h);
    attach(&b, vec![decl(CHUNKS * 8)]);
    let answer = frame::recv::<ToRuntime>(&b);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    kill9(&mut socp);
    match answer {
        Ok((ToRuntime::AttachRefused { .. } | ToRuntime::AttachWaiting { .. }, _)) => {}
        other => panic!("the third runtime got {other:?}"),
    }
}
