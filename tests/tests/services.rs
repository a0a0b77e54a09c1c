//! Storage services served to a guest: a striped namespace and an
//! encrypted one, behind a host-driver and a runtime in another process,
//! with verified I/O; what lands on the children is checked on the host.

use leapio_host_driver::port::Timeouts;
use leapio_tests::split::{kill9, SplitHost, Workload};
use std::time::Duration;

fn timeouts() -> Timeouts {
    Timeouts {
        ack: Duration::from_secs(10),
        drain: Duration::from_secs(10),
        fence: Duration::from_secs(10),
    }
}

fn file(host: &SplitHost, name: &str, size: u64) -> String {
    let p = host.dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p.display().to_string()
}

#[test]
fn a_striped_namespace_serves_verified_io_and_spreads_it_over_its_children() {
    let host = SplitHost::start("vm0", 1, timeouts());
    let (a, b) = (file(&host, "a.img", 4 << 20), file(&host, "b.img", 4 << 20));
    let mut socp = host.spawn_socp(&format!("ns=raid0:(file:{a}|file:{b})?strip=4K"), &[]);
    assert!(
        host.wait_attached(Duration::from_secs(30)),
        "{}",
        host.socp_logs()
    );
    // 1024 chunks of 4 KiB: half the 8 MiB namespace, strips alternating
    // between the children.
    let mut w = Workload::new(&host.vfio, 1024, 16, 3).expect("guest");
    w.run_for(Duration::from_millis(1500));
    w.drain(Duration::from_secs(10));
    w.verify_all();
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    assert!(w.writes > 100, "only {} writes", w.writes);
    drop(w);
    kill9(&mut socp);
    for child in [&a, &b] {
        let data = std::fs::read(child).unwrap();
        let used = data
            .chunks(4096)
            .filter(|c| c.iter().any(|x| *x != 0))
            .count();
        assert!(used > 50, "{child}: only {used} strips written");
    }
}

#[test]
fn an_encrypted_namespace_serves_verified_io_and_its_child_holds_no_plaintext() {
    let host = SplitHost::start("vm0", 1, timeouts());
    let img = file(&host, "c.img", 4 << 20);
    let key = host.dir.join("vm0.key");
    std::fs::write(&key, (0..64u8).collect::<Vec<u8>>()).unwrap();
    let spec = format!("ns=crypt:(file:{img})?key={}", key.display());
    let mut socp = host.spawn_socp(&spec, &[]);
    assert!(
        host.wait_attached(Duration::from_secs(30)),
        "{}",
        host.socp_logs()
    );
    let mut w = Workload::new(&host.vfio, 256, 16, 5).expect("guest");
    w.run_for(Duration::from_millis(1500));
    w.drain(Duration::from_secs(10));
    w.verify_all();
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    drop(w);
    kill9(&mut socp);
    // The workload writes each chunk as one 8-byte tag repeated: no such
    // run of 16 identical tags is in the child.
    let data = std::fs::read(&img).unwrap();
    let plain = data[4096..].chunks(4096).any(|c| {
        let tag = &c[..8];
        tag.iter().any(|x| *x != 0) && c[..128].chunks(8).all(|t| t == tag)
    });
    assert!(!plain, "a plaintext chunk in the child");
    // Another key: the runtime refuses the namespace at start.
    std::fs::write(&key, [9u8; 64]).unwrap();
    let mut again = host.spawn_socp(&spec, &[]);
    let status = again.wait().expect("socp exits");
    assert!(!status.success());
    let logs = host.socp_logs();
    assert!(logs.contains("key check value"), "{logs}");
}

/// A mirror operated through the runtime's control socket while a guest
/// writes: a child failed by the operator costs the guest nothing, the
/// returning child is resynchronised from the regions written meanwhile
/// only, and the two children end identical.
#[test]
fn a_mirror_is_operated_from_the_control_socket_while_the_guest_writes() {
    use leapio_service::control::call;
    use serde_json::{json, Value};
    let host = SplitHost::start("vm0", 1, timeouts());
    let (a, b) = (
        file(&host, "m0.img", 8 << 20),
        file(&host, "m1.img", 8 << 20),
    );
    let bitmap = host.dir.join("vm0.bitmap");
    let control = host.dir.join("socp-ctl.sock");
    let spec = format!(
        "ns=raid1:(file:{a}|file:{b})?bitmap={}&region=64K",
        bitmap.display()
    );
    let mut socp = host.spawn_socp(&spec, &["--control", control.to_str().unwrap()]);
    assert!(
        host.wait_attached(Duration::from_secs(30)),
        "{}",
        host.socp_logs()
    );
    let state = || -> Value {
        call(&control, "service", json!({"ctrl": "vm0", "nsid": 1})).expect("service state")
    };
    let settled = |what: &str| {
        let t0 = std::time::Instant::now();
        loop {
            let s = state();
            let ok = s["children"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["state"] == "in-sync"))
                && s["dirty_regions"] == 0;
            if ok {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{what}: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A new mirror rebuilds its second child in full first.
    settled("the first rebuild");
    let mut w = Workload::new(&host.vfio, 512, 8, 11).expect("guest");
    w.run_for(Duration::from_millis(500));
    let r = call(
        &control,
        "service",
        json!({"ctrl": "vm0", "nsid": 1, "action": "fail", "child": 1}),
    )
    .expect("fail child 1");
    assert!(r["done"].is_string(), "{r}");
    assert_eq!(state()["children"][1]["state"], "failed");
    w.run_for(Duration::from_millis(800));
    let dirty = state()["dirty_regions"].as_u64().unwrap();
    assert!(dirty > 0 && dirty < 128, "{dirty} of 128 regions marked");
    let before = state()["resync"]["bytes"].as_u64().unwrap();
    call(
        &control,
        "service",
        json!({"ctrl": "vm0", "nsid": 1, "action": "readd", "child": 1}),
    )
    .expect("readd child 1");
    w.run_for(Duration::from_millis(300));
    let s = settled("the resync");
    let copied = s["resync"]["bytes"].as_u64().unwrap() - before;
    assert!(
        copied <= (dirty + 8) * (64 << 10),
        "copied {copied} bytes for {dirty} marked regions"
    );
    // Child 0 replaced by a new file while the guest writes (the children
    // left in sync: child 1): rebuilt in full, and the old file gets
    // nothing more.
    let c = file(&host, "m2.img", 8 << 20);
    let r = call(
        &control,
        "service",
        json!({"ctrl": "vm0", "nsid": 1, "action": "replace", "args": ["0", format!("file:{c}")]}),
    )
    .expect("replace child 0");
    assert!(
        r["done"]
            .as_str()
            .is_some_and(|d| d.contains("rebuilding in full")),
        "{r}"
    );
    w.run_for(Duration::from_millis(500));
    let s = settled("the replacement's rebuild");
    assert!(
        s["children"][0]["backend"]
            .as_str()
            .is_some_and(|b| b.contains("m2.img")),
        "{s}"
    );
    w.drain(Duration::from_secs(10));
    w.verify_all();
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    drop(w);
    // A namespace that is no service says so.
    let e = call(&control, "service", json!({"ctrl": "vm0", "nsid": 2})).unwrap_err();
    assert!(e.contains("no namespace 2"), "{e}");
    kill9(&mut socp);
    assert!(
        std::fs::read(&c).unwrap() == std::fs::read(&b).unwrap(),
        "the children differ"
    );
    assert!(
        std::fs::read(&a).unwrap() != std::fs::read(&b).unwrap(),
        "the replaced child got the writes made after its replacement"
    );
}
