//! The NVMe/TCP target's connection handling (`socp::tcp_target`): up to
//! three connections of one poller receive host PDUs (ICReq, Connect on
//! the admin queue and on I/O queues, property get/set, admin and I/O
//! commands with in-capsule data or R2T/H2CData, TermReqs, garbage), mostly
//! valid for the connection's state, split at arbitrary points. Backend
//! work (two RAM namespaces) completes between chunks.
//!
//! Properties: nothing panics; every PDU the target sends parses as a
//! valid controller-to-host PDU with the negotiated digests; after every
//! peer went away nothing is left: no connection, controller, orphaned
//! command or backend operation.
//!
//! Input: a byte (connections), then PDUs of [connection] [PDU choice...]
//! [split].
#![no_main]

use leapio_fuzz::tcp::host_pdu;
use leapio_fuzz::Input;
use leapio_nvme::tcp::{Digests, ParserConfig, PduHeader, PduParser, Role};
use libfuzzer_sys::fuzz_target;
use socp::tcp_target::fuzzing::{Harness, Leftovers};
use std::cell::RefCell;

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new().expect("harness"));
}

/// What the host side of one connection parses.
fn host_parser() -> PduParser {
    PduParser::new(ParserConfig {
        role: Role::Host,
        digests: Digests::default(),
        max_capsule_data: 0,
        max_data: 1 << 20,
    })
}

fn check_sent(parser: &mut PduParser, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let (used, r) = parser.feed(bytes);
        bytes = &bytes[used..];
        match r {
            Ok(Some(pdu)) => {
                if let PduHeader::IcResp(r) = pdu.header {
                    let cfg = *parser.config();
                    parser.set_config(ParserConfig {
                        digests: Digests::from_dgst(r.dgst),
                        ..cfg
                    });
                }
            }
            Ok(None) => {}
            Err(e) => panic!("the target sent an invalid PDU: {e}"),
        }
        if used == 0 {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let n = 1 + usize::from(input.u8() % 3);
    let mut dg = vec![Digests::default(); n];
    let mut cid = vec![0u16; n];
    let mut pdus: Vec<(usize, Vec<u8>)> = Vec::new();
    while !input.is_empty() {
        let c = usize::from(input.u8()) % n;
        let pdu = host_pdu(&mut input, &mut dg[c], &mut cid[c]);
        if input.u8() > 230 && pdu.len() > 1 {
            // The same bytes in two reads.
            let at = 1 + input.below(pdu.len() - 1);
            pdus.push((c, pdu[..at].to_vec()));
            pdus.push((c, pdu[at..].to_vec()));
        } else {
            pdus.push((c, pdu));
        }
    }
    let chunks: Vec<(usize, &[u8])> = pdus.iter().map(|(c, b)| (*c, &b[..])).collect();
    let mut parsers: Vec<PduParser> = (0..n).map(|_| host_parser()).collect();
    let left = HARNESS.with_borrow_mut(|h| {
        h.run(n, &chunks, &mut |c, pdu| check_sent(&mut parsers[c], pdu))
            .expect("run")
    });
    assert_eq!(
        left,
        Leftovers::default(),
        "left behind after every peer went away"
    );
});
