//! The zoned backend through the `Backend` API: writes at the write
//! pointer, appends, actions, statuses, recovery after a reopen and after a
//! torn stripe, spec parsing.

// Test sizes are small.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::{BackendSpec, ZoneState};

const PAGE: usize = 4096;
/// 2 x 2 dies, 8 blocks of 4 pages: 8 zones of 16 blocks.
const GEO: &str = "channels=2&dies=2&blocks=8&pages=4&timing=0&max_open=2&max_active=3";

fn spec(path: &Path, extra: &str) -> ZnsSpec {
    match format!("zns:{}?{extra}", path.display()).parse().unwrap() {
        BackendSpec::Zns(s) => s,
        other => panic!("not a zns spec: {other:?}"),
    }
}

fn open(path: &Path) -> ZnsBackend {
    let b = ZnsBackend::open(&spec(path, GEO)).unwrap();
    b.claim().unwrap();
    b
}

fn data(lba: u64, n: usize) -> Vec<u8> {
    (0..n * PAGE)
        .map(|i| (lba as usize * 131 + i / PAGE * 7 + i % 251) as u8)
        .collect()
}

/// Run one request to completion: (result, value).
fn run(
    q: &mut dyn BackendQueue,
    kind: IoKind,
    lba: u64,
    buf: &mut [u8],
) -> (Result<(), IoError>, u64) {
    run_journal(q, kind, lba, buf, None)
}

/// [`run`] with what a journalling front end passes.
fn run_journal(
    q: &mut dyn BackendQueue,
    kind: IoKind,
    lba: u64,
    buf: &mut [u8],
    journal: Option<crate::Journal<'_>>,
) -> (Result<(), IoError>, u64) {
    let v = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let req = IoRequest {
        tag: 7,
        kind,
        offset: lba * PAGE as u64,
        len: if kind.has_data() { buf.len() as u64 } else { 0 },
        iov: if kind.has_data() { &v } else { &[] },
        owner: 0,
        journal,
    };
    // SAFETY: `buf` outlives the request (drained below).
    unsafe { q.submit(&req) }.unwrap();
    let mut out = Vec::new();
    q.drain(&mut out, Duration::from_secs(10));
    assert_eq!(out.len(), 1);
    (out[0].result, out[0].value)
}

/// A journal entry: first run or rerun, with the command's word.
fn journal(rerun: bool, placed: &AtomicU64) -> Option<crate::Journal<'_>> {
    Some(crate::Journal { rerun, placed })
}

fn zerr(r: (Result<(), IoError>, u64)) -> Option<ZoneError> {
    r.0.err().and_then(|e| e.zone)
}

fn action(q: &mut dyn BackendQueue, a: ZoneAction, zone: u64, all: bool) -> Option<ZoneError> {
    zerr(run(q, IoKind::Zone { action: a, all }, zone * 16, &mut []))
}

fn states(b: &ZnsBackend) -> Vec<(ZoneState, u64)> {
    b.report_zones(0, 100)
        .iter()
        .map(|z| (z.state, z.write_pointer - z.start))
        .collect()
}

#[test]
fn geometry_and_spec() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.nand");
    let b = open(&p);
    let z = b.zoned().unwrap();
    assert_eq!((z.zone_blocks, z.capacity, z.zones), (16, 16, 8));
    assert_eq!((z.max_open, z.max_active), (2, 3));
    assert_eq!(b.geometry().num_blocks, 128);
    // 3 dies x 5 pages = 15 blocks: zone size 16, capacity 15.
    let p3 = dir.path().join("z3.nand");
    let b3 = ZnsBackend::open(&spec(&p3, "channels=3&dies=1&blocks=4&pages=5")).unwrap();
    let z3 = b3.zoned().unwrap();
    assert_eq!(
        (z3.zone_blocks, z3.capacity, b3.geometry().num_blocks),
        (16, 15, 64)
    );
    // Display round trip; op refused; flash refuses zoned media and back.
    let s = spec(&p, GEO);
    assert_eq!(
        s.to_string().parse::<BackendSpec>().unwrap(),
        BackendSpec::Zns(s)
    );
    let e = format!("zns:{}?op=0.2", p.display())
        .parse::<BackendSpec>()
        .unwrap_err();
    assert!(e.to_string().contains("op= does not apply"), "{e}");
    let e = "zns:/x?max_open=4&max_active=2"
        .parse::<BackendSpec>()
        .unwrap_err();
    assert!(e.to_string().contains("more than max_active"), "{e}");
    let flash: BackendSpec = format!("flash:{}", p.display()).parse().unwrap();
    assert!(
        crate::open_backend(&flash).is_err(),
        "the FTL refuses zoned media"
    );
    let pf = dir.path().join("f.nand");
    let flash: BackendSpec = format!(
        "flash:{}?channels=2&dies=2&blocks=8&pages=4&op=1",
        pf.display()
    )
    .parse()
    .unwrap();
    crate::open_backend(&flash).unwrap();
    let e = ZnsBackend::open(&spec(&pf, "")).err().unwrap().to_string();
    assert!(e.contains("formatted for the FTL"), "{e}");
}

#[test]
fn writes_appends_reads_and_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir.path().join("z.nand"));
    let q = &mut *b.open_queue(16).unwrap();
    let mut d = data(0, 5);
    assert_eq!(run(q, IoKind::Write, 0, &mut d).0, Ok(()));
    // Off the write pointer, across the zone's end.
    assert_eq!(
        zerr(run(q, IoKind::Write, 0, &mut data(0, 1))),
        Some(ZoneError::InvalidWrite)
    );
    assert_eq!(
        zerr(run(q, IoKind::Write, 6, &mut data(0, 1))),
        Some(ZoneError::InvalidWrite)
    );
    assert_eq!(
        zerr(run(q, IoKind::Write, 5, &mut data(0, 12))),
        Some(ZoneError::Boundary)
    );
    // Append: at the write pointer, the offset comes back.
    let mut a = data(5, 3);
    let (r, v) = run(q, IoKind::ZoneAppend { fua: true }, 0, &mut a);
    assert_eq!((r, v), (Ok(()), 5 * PAGE as u64));
    assert_eq!(
        zerr(run(
            q,
            IoKind::ZoneAppend { fua: false },
            3,
            &mut data(0, 1)
        )),
        Some(ZoneError::NotZoneStart)
    );
    // Read back across the write pointer: data, then zeroes.
    let mut back = vec![0xffu8; 10 * PAGE];
    assert_eq!(run(q, IoKind::Read, 0, &mut back).0, Ok(()));
    assert_eq!(&back[..5 * PAGE], &d[..]);
    assert_eq!(&back[5 * PAGE..8 * PAGE], &a[..]);
    assert!(back[8 * PAGE..].iter().all(|&x| x == 0));
    // Fill the zone: full, then appends and writes are refused.
    assert_eq!(run(q, IoKind::Write, 8, &mut data(8, 8)).0, Ok(()));
    assert_eq!(states(&b)[0], (ZoneState::Full, 16));
    assert_eq!(
        zerr(run(
            q,
            IoKind::ZoneAppend { fua: false },
            0,
            &mut data(0, 1)
        )),
        Some(ZoneError::Full)
    );
    // Limits: 2 open, 3 active.
    assert_eq!(action(q, ZoneAction::Open, 1, false), None);
    assert_eq!(run(q, IoKind::Write, 32, &mut data(32, 1)).0, Ok(()));
    assert_eq!(
        action(q, ZoneAction::Open, 3, false),
        Some(ZoneError::TooManyOpen)
    );
    assert_eq!(
        zerr(run(q, IoKind::Write, 48, &mut data(48, 1))),
        Some(ZoneError::TooManyOpen)
    );
    assert_eq!(action(q, ZoneAction::Close, 2, false), None);
    assert_eq!(action(q, ZoneAction::Open, 3, false), None);
    assert_eq!(
        action(q, ZoneAction::Close, 3, false),
        None,
        "open, nothing written: back to empty"
    );
    assert_eq!(run(q, IoKind::Write, 16, &mut data(16, 2)).0, Ok(()));
    assert_eq!(action(q, ZoneAction::Close, 1, false), None);
    assert_eq!(action(q, ZoneAction::Open, 4, false), None);
    assert_eq!(
        action(q, ZoneAction::Open, 5, false),
        Some(ZoneError::TooManyActive)
    );
    // Invalid transitions and zone addresses.
    assert_eq!(
        action(q, ZoneAction::Close, 6, false),
        Some(ZoneError::InvalidTransition)
    );
    assert_eq!(
        action(q, ZoneAction::Open, 0, false),
        Some(ZoneError::InvalidTransition)
    );
    assert_eq!(
        zerr(run(
            q,
            IoKind::Zone {
                action: ZoneAction::Open,
                all: false
            },
            17,
            &mut []
        )),
        Some(ZoneError::NotZoneStart)
    );
    // Finish pads the zone; reset erases; the padding reads as zeroes.
    assert_eq!(action(q, ZoneAction::Finish, 1, false), None);
    assert_eq!(states(&b)[1], (ZoneState::Full, 16));
    let mut back = vec![0xffu8; 16 * PAGE];
    run(q, IoKind::Read, 16, &mut back).0.unwrap();
    assert_eq!(&back[..2 * PAGE], &data(16, 2)[..]);
    assert!(back[2 * PAGE..].iter().all(|&x| x == 0));
    assert_eq!(action(q, ZoneAction::Reset, 0, false), None);
    assert_eq!(states(&b)[0], (ZoneState::Empty, 0));
    run(q, IoKind::Read, 0, &mut back).0.unwrap();
    assert!(back.iter().all(|&x| x == 0));
    assert_eq!(
        run(q, IoKind::Write, 0, &mut data(0, 2)).0,
        Ok(()),
        "a reset zone takes writes again"
    );
    // Select all.
    assert_eq!(action(q, ZoneAction::Close, 0, true), None);
    assert!(states(&b)
        .iter()
        .all(|s| !matches!(s.0, ZoneState::ImplicitlyOpen | ZoneState::ExplicitlyOpen)));
    assert_eq!(action(q, ZoneAction::Reset, 0, true), None);
    assert!(states(&b).iter().all(|s| *s == (ZoneState::Empty, 0)));
    // Conventional-only kinds are refused at submit.
    let req = IoRequest {
        tag: 1,
        kind: IoKind::Deallocate,
        offset: 0,
        len: PAGE as u64,
        iov: &[],
        owner: 0,
        journal: None,
    };
    // SAFETY: no iovecs.
    assert!(unsafe { q.submit(&req) }.is_err());
}

#[test]
fn write_pointers_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.nand");
    {
        let b = open(&p);
        let q = &mut *b.open_queue(16).unwrap();
        run(q, IoKind::Write, 0, &mut data(0, 7)).0.unwrap();
        run(q, IoKind::Write, 16, &mut data(16, 16)).0.unwrap();
        run(q, IoKind::Write, 48, &mut data(48, 3)).0.unwrap();
        assert_eq!(action(q, ZoneAction::Finish, 3, false), None);
        assert_eq!(action(q, ZoneAction::Open, 2, false), None);
        b.flush().unwrap();
    }
    let b = open(&p);
    let s = states(&b);
    assert_eq!(s[0], (ZoneState::Closed, 7));
    assert_eq!(s[1], (ZoneState::Full, 16));
    assert_eq!(
        s[2],
        (ZoneState::ExplicitlyOpen, 0),
        "an explicitly opened zone with no data comes back open"
    );
    assert_eq!(s[3], (ZoneState::Full, 16), "finished stays full");
    let q = &mut *b.open_queue(16).unwrap();
    let mut back = vec![0u8; 7 * PAGE];
    run(q, IoKind::Read, 0, &mut back).0.unwrap();
    assert_eq!(back, data(0, 7));
    assert_eq!(
        zerr(run(q, IoKind::Write, 0, &mut data(0, 1))),
        Some(ZoneError::InvalidWrite)
    );
    assert_eq!(run(q, IoKind::Write, 7, &mut data(7, 1)).0, Ok(()));
    // A gap in a zone's stripe (die 1's page lost in a host crash) makes it full.
    drop(b);
    let nand = NandGeometry {
        channels: 2,
        dies_per_channel: 2,
        blocks_per_die: 8,
        pages_per_block: 4,
        page_size: 4096,
        oob_size: 64,
    };
    {
        let mut m = NandMedia::open(&p, nand, None).unwrap();
        // Zone 5: block 5 of dies 0 and 2 programmed, die 1 not.
        for die in [0u32, 2] {
            let meta = PageMeta {
                kind: PageKind::Data,
                lba: 80,
                seq: 1,
            };
            m.program(nand.ppa(die * 8 + 5, 0), &data(80, 1), &meta, 0)
                .unwrap();
        }
    }
    let b = open(&p);
    let z = b.report_zones(80, 1)[0];
    assert_eq!(
        (z.state, z.finished_by_backend, z.write_pointer),
        (ZoneState::Full, true, 96)
    );
}

/// A runtime that died after the backend ran a command runs it again from
/// its journal entry: a write whose blocks landed completes without
/// writing them twice, one that landed in part writes the rest.
#[test]
fn a_write_run_again_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.nand");
    let (mut d1, mut d2) = (data(16, 4), data(32, 4));
    {
        let b = open(&p);
        let q = &mut *b.open_queue(16).unwrap();
        run(q, IoKind::Write, 16, &mut d1).0.unwrap();
        // Half of the next command's data reached the media.
        run(q, IoKind::Write, 32, &mut d2[..2 * PAGE]).0.unwrap();
    }
    let b = open(&p);
    let q = &mut *b.open_queue(16).unwrap();
    let word = AtomicU64::new(0);
    // Without the rerun mark the write is off the pointer, as before.
    assert_eq!(
        zerr(run_journal(
            q,
            IoKind::Write,
            16,
            &mut d1,
            journal(false, &word)
        )),
        Some(ZoneError::InvalidWrite)
    );
    let r = run_journal(q, IoKind::WriteFua, 16, &mut d1, journal(true, &word));
    assert_eq!(r, (Ok(()), 16 * PAGE as u64));
    let r = run_journal(q, IoKind::Write, 32, &mut d2, journal(true, &word));
    assert_eq!(r, (Ok(()), 32 * PAGE as u64));
    let s = states(&b);
    assert_eq!((s[1].1, s[2].1), (4, 4), "nothing written twice");
    let mut back = vec![0u8; 4 * PAGE];
    run(q, IoKind::Read, 32, &mut back).0.unwrap();
    assert_eq!(back, d2);
    // A rerun write past the pointer (nothing landed, a gap before it) is
    // still refused.
    assert_eq!(
        zerr(run_journal(
            q,
            IoKind::Write,
            50,
            &mut data(50, 1),
            journal(true, &word)
        )),
        Some(ZoneError::InvalidWrite)
    );
}

/// A Zone Append records its LBA in the journal word before its data is
/// programmed; run again it goes where it went, not to the end once more.
#[test]
fn an_append_run_again_goes_where_it_went() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.nand");
    let word = AtomicU64::new(0);
    let mut a = data(32, 3);
    let append = IoKind::ZoneAppend { fua: false };
    {
        let b = open(&p);
        let q = &mut *b.open_queue(16).unwrap();
        let r = run_journal(q, append, 32, &mut a, journal(false, &word));
        assert_eq!(r, (Ok(()), 32 * PAGE as u64));
        assert_eq!(word.load(Ordering::Relaxed), 33, "1 + the LBA, recorded");
    }
    let b = open(&p);
    let q = &mut *b.open_queue(16).unwrap();
    let r = run_journal(q, append, 32, &mut a, journal(true, &word));
    assert_eq!(r, (Ok(()), 32 * PAGE as u64), "the same LBA");
    assert_eq!(states(&b)[2].1, 3, "appended once");
    // Placed at 35 but nothing programmed (the runtime died in between):
    // appended afresh, at the write pointer, which is 35 again.
    word.store(36, Ordering::Relaxed);
    let mut c = data(35, 2);
    let r = run_journal(q, append, 32, &mut c, journal(true, &word));
    assert_eq!(r, (Ok(()), 35 * PAGE as u64));
    assert_eq!(states(&b)[2].1, 5);
    // Placed at 37 with its first block programmed: the rest follows.
    let mut e = data(37, 2);
    run(q, IoKind::Write, 37, &mut e[..PAGE]).0.unwrap();
    word.store(38, Ordering::Relaxed);
    let r = run_journal(q, append, 32, &mut e, journal(true, &word));
    assert_eq!(r, (Ok(()), 37 * PAGE as u64));
    assert_eq!(states(&b)[2].1, 7);
    let mut back = vec![0u8; 7 * PAGE];
    run(q, IoKind::Read, 32, &mut back).0.unwrap();
    assert_eq!(&back[..3 * PAGE], &a[..]);
    assert_eq!(&back[3 * PAGE..5 * PAGE], &c[..]);
    assert_eq!(&back[5 * PAGE..], &e[..]);
    // A word that names another zone is not this append's: a fresh one.
    word.store(1, Ordering::Relaxed);
    let r = run_journal(q, append, 48, &mut data(48, 1), journal(true, &word));
    assert_eq!(r, (Ok(()), 48 * PAGE as u64));
    assert_eq!(word.load(Ordering::Relaxed), 49);
}

/// Explicitly opened zones stay open across a new mount (a runtime that
/// died) until the controller is reset or shut down; a Close run again
/// finds the zone already empty and succeeds.
#[test]
fn explicit_opens_survive_the_runtime_and_close_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.nand");
    {
        let b = open(&p);
        let q = &mut *b.open_queue(16).unwrap();
        assert_eq!(action(q, ZoneAction::Open, 3, false), None);
        assert_eq!(action(q, ZoneAction::Open, 4, false), None);
        run(q, IoKind::Write, 64, &mut data(64, 2)).0.unwrap();
    }
    let b = open(&p);
    let s = states(&b);
    assert_eq!(s[3], (ZoneState::ExplicitlyOpen, 0));
    assert_eq!(s[4], (ZoneState::ExplicitlyOpen, 2));
    let q = &mut *b.open_queue(16).unwrap();
    let word = AtomicU64::new(0);
    let close = IoKind::Zone {
        action: ZoneAction::Close,
        all: false,
    };
    assert_eq!(action(q, ZoneAction::Close, 3, false), None);
    assert_eq!(states(&b)[3], (ZoneState::Empty, 0));
    // The same Close again: refused as a new command, done as a rerun.
    assert_eq!(
        action(q, ZoneAction::Close, 3, false),
        Some(ZoneError::InvalidTransition)
    );
    let r = run_journal(q, close, 48, &mut [], journal(true, &word));
    assert_eq!(r.0, Ok(()));
    drop(b);
    let b = open(&p);
    let s = states(&b);
    assert_eq!(s[3], (ZoneState::Empty, 0), "a closed zone stays closed");
    assert_eq!(s[4], (ZoneState::ExplicitlyOpen, 2));
    // A controller reset closes what is open, for good.
    b.close_open_zones().unwrap();
    assert_eq!(states(&b)[4], (ZoneState::Closed, 2));
    drop(b);
    let b = open(&p);
    assert_eq!(states(&b)[4], (ZoneState::Closed, 2));
    // Filling an explicitly opened zone makes it full, and not open again.
    let q = &mut *b.open_queue(16).unwrap();
    assert_eq!(action(q, ZoneAction::Open, 5, false), None);
    run(q, IoKind::Write, 80, &mut data(80, 16)).0.unwrap();
    drop(b);
    assert_eq!(states(&open(&p))[5], (ZoneState::Full, 16));
}
