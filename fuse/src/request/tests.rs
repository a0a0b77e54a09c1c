use super::*;
use crate::abi::*;
use zerocopy::IntoBytes;

/// A request as the kernel lays it out: header, then `args`.
fn req(opcode: u32, nodeid: u64, args: &[&[u8]]) -> Vec<u8> {
    let body: usize = args.iter().map(|a| a.len()).sum();
    let h = InHeader {
        len: u32::try_from(40 + body).unwrap(),
        opcode,
        unique: 42,
        nodeid,
        uid: 1000,
        gid: 1000,
        pid: 7,
        ..InHeader::default()
    };
    let mut v = h.as_bytes().to_vec();
    for a in args {
        v.extend_from_slice(a);
    }
    v
}

fn parse(v: &[u8]) -> Result<Request<'_>, ParseError> {
    Request::parse(v, Proto::default())
}

#[test]
fn names_and_arguments_come_out_of_the_bytes() {
    let v = req(op::LOOKUP, 1, &[b"hello\0"]);
    let r = parse(&v).unwrap();
    assert_eq!(
        (r.header.unique, r.header.nodeid, r.header.uid),
        (42, 1, 1000)
    );
    assert_eq!(r.op, Op::Lookup { name: b"hello" });

    let mk = MkdirIn {
        mode: 0o755,
        umask: 0o22,
    };
    let v = req(op::MKDIR, 1, &[mk.as_bytes(), b"d\0"]);
    assert_eq!(
        parse(&v).unwrap().op,
        Op::Mkdir {
            arg: mk,
            name: b"d"
        }
    );

    let v = req(op::SYMLINK, 1, &[b"link\0", b"../target/x\0"]);
    assert_eq!(
        parse(&v).unwrap().op,
        Op::Symlink {
            name: b"link",
            target: b"../target/x"
        }
    );

    let rn = Rename2In {
        newdir: 9,
        flags: 1,
        padding: 0,
    };
    let v = req(op::RENAME2, 1, &[rn.as_bytes(), b"a\0", b"b\0"]);
    assert_eq!(
        parse(&v).unwrap().op,
        Op::Rename {
            newdir: 9,
            flags: 1,
            old: b"a",
            new: b"b"
        }
    );
    let v = req(op::RENAME, 1, &[&9u64.to_le_bytes(), b"a\0", b"b\0"]);
    assert!(matches!(
        parse(&v).unwrap().op,
        Op::Rename {
            newdir: 9,
            flags: 0,
            ..
        }
    ));

    let w = WriteIn {
        fh: 3,
        offset: 4096,
        size: 5,
        ..WriteIn::default()
    };
    let v = req(op::WRITE, 2, &[w.as_bytes(), b"12345"]);
    assert_eq!(
        parse(&v).unwrap().op,
        Op::Write {
            arg: w,
            data: b"12345"
        }
    );

    let c = CreateIn {
        flags: 0o101,
        mode: 0o644,
        umask: 0o22,
        open_flags: 0,
    };
    let v = req(op::CREATE, 1, &[c.as_bytes(), b"new\0"]);
    assert_eq!(
        parse(&v).unwrap().op,
        Op::Create {
            arg: c,
            name: b"new"
        }
    );

    let rd = ReadIn {
        fh: 1,
        offset: 0,
        size: 4096,
        ..ReadIn::default()
    };
    for (opc, want) in [
        (op::READ, Op::Read(rd)),
        (op::READDIR, Op::Readdir(rd)),
        (op::READDIRPLUS, Op::Readdirplus(rd)),
    ] {
        assert_eq!(parse(&req(opc, 2, &[rd.as_bytes()])).unwrap().op, want);
    }
    for (opc, want) in [
        (op::STATFS, Op::Statfs),
        (op::READLINK, Op::Readlink),
        (op::DESTROY, Op::Destroy),
        (op::SYNCFS, Op::Syncfs),
        (4242, Op::Unsupported { opcode: 4242 }),
        (op::IOCTL, Op::Unsupported { opcode: op::IOCTL }),
    ] {
        assert_eq!(parse(&req(opc, 1, &[])).unwrap().op, want);
    }
}

#[test]
fn xattrs_follow_the_negotiated_layout() {
    let v = req(
        op::SETXATTR,
        2,
        &[
            &3u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            b"user.a\0",
            b"xyz",
        ],
    );
    let r = parse(&v).unwrap();
    let Op::Setxattr { arg, name, value } = r.op else {
        panic!("{:?}", r.op);
    };
    assert_eq!((arg.size, name, value), (3, &b"user.a"[..], &b"xyz"[..]));
    let ext = SetxattrIn {
        size: 3,
        flags: 1,
        setxattr_flags: 1,
        padding: 0,
    };
    let v = req(op::SETXATTR, 2, &[ext.as_bytes(), b"user.a\0", b"xyz"]);
    let proto = Proto {
        setxattr_ext: true,
        ..Proto::default()
    };
    let r = Request::parse(&v, proto).unwrap();
    assert!(matches!(r.op, Op::Setxattr { arg, .. } if arg.setxattr_flags == 1));
    // a value shorter than its size
    let v = req(
        op::SETXATTR,
        2,
        &[
            &9u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            b"user.a\0",
            b"xyz",
        ],
    );
    assert!(matches!(
        parse(&v),
        Err(ParseError::Payload {
            said: 9,
            got: 3,
            ..
        })
    ));
    let g = GetxattrIn {
        size: 64,
        padding: 0,
    };
    let v = req(op::GETXATTR, 2, &[g.as_bytes(), b"user.a\0"]);
    assert_eq!(
        parse(&v).unwrap().op,
        Op::Getxattr {
            arg: g,
            name: b"user.a"
        }
    );
}

#[test]
fn init_of_old_and_new_kernels() {
    let new = InitIn {
        major: 7,
        minor: 41,
        max_readahead: 4096,
        flags: 3,
        flags2: 1,
        ..InitIn::default()
    };
    let v = req(op::INIT, 0, &[new.as_bytes()]);
    assert_eq!(parse(&v).unwrap().op, Op::Init(new));
    // 16 bytes: the rest zero
    let v = req(op::INIT, 0, &[&new.as_bytes()[..16]]);
    let Op::Init(got) = parse(&v).unwrap().op else {
        panic!()
    };
    assert_eq!((got.major, got.minor, got.flags, got.flags2), (7, 41, 3, 0));
    let v = req(op::INIT, 0, &[&new.as_bytes()[..4]]);
    assert!(matches!(parse(&v), Err(ParseError::Short { need: 8, .. })));
}

#[test]
fn batch_forget_lists_its_nodes() {
    let b = BatchForgetIn { count: 2, dummy: 0 };
    let one = ForgetOne {
        nodeid: 5,
        nlookup: 1,
    };
    let two = ForgetOne {
        nodeid: 6,
        nlookup: 3,
    };
    let v = req(
        op::BATCH_FORGET,
        0,
        &[b.as_bytes(), one.as_bytes(), two.as_bytes()],
    );
    let r = parse(&v).unwrap();
    assert!(!r.op.wants_reply());
    assert_eq!(r.op.forgets().collect::<Vec<_>>(), [one, two]);
    let big = BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    };
    let v = req(op::BATCH_FORGET, 0, &[big.as_bytes(), one.as_bytes()]);
    assert!(matches!(parse(&v), Err(ParseError::Payload { .. })));
    let forget = req(op::FORGET, 5, &[&1u64.to_le_bytes()]);
    assert!(!parse(&forget).unwrap().op.wants_reply());
}

#[test]
fn a_guests_bad_lengths_and_strings_are_errors() {
    assert_eq!(parse(&[0u8; 39]), Err(ParseError::ShortHeader(39)));
    // the header's length beyond the bytes, or below a header
    let mut v = req(op::LOOKUP, 1, &[b"a\0"]);
    v[0] = 200;
    assert!(matches!(
        parse(&v),
        Err(ParseError::Length { said: 200, got: 42 })
    ));
    v[0] = 8;
    assert!(matches!(parse(&v), Err(ParseError::Length { said: 8, .. })));
    // bytes after the length are not the request's
    let mut v = req(op::LOOKUP, 1, &[b"ab\0"]);
    v.extend_from_slice(b"garbage");
    assert_eq!(parse(&v).unwrap().op, Op::Lookup { name: b"ab" });
    // a name without its NUL (the NUL is past the header's length)
    let mut v = req(op::LOOKUP, 1, &[b"abc"]);
    v.push(0);
    assert_eq!(parse(&v), Err(ParseError::Unterminated("LOOKUP")));
    // an argument cut short
    let v = req(op::READ, 1, &[&[0u8; 39]]);
    assert!(matches!(
        parse(&v),
        Err(ParseError::Short {
            op: "READ",
            got: 39,
            need: 40
        })
    ));
    // WRITE data against its size
    let w = WriteIn {
        size: 10,
        ..WriteIn::default()
    };
    let v = req(op::WRITE, 1, &[w.as_bytes(), b"12345"]);
    assert!(matches!(
        parse(&v),
        Err(ParseError::Payload {
            said: 10,
            got: 5,
            ..
        })
    ));
    // extensions longer than the request
    let mut v = req(op::LOOKUP, 1, &[b"a\0"]);
    v[36] = 1;
    assert_eq!(parse(&v), Err(ParseError::Extensions(8)));
    // a second name missing
    let v = req(op::RENAME, 1, &[&9u64.to_le_bytes(), b"a\0", b"b"]);
    assert_eq!(parse(&v), Err(ParseError::Unterminated("RENAME")));
}

#[test]
fn only_single_components_are_names() {
    for ok in [&b"a"[..], b"file.txt", b"...", b"a b", &[b'x'; 255]] {
        assert_eq!(check_component(ok), Ok(()), "{ok:?}");
    }
    assert_eq!(check_component(b""), Err(errno::ENOENT));
    assert_eq!(check_component(b"."), Err(errno::EINVAL));
    assert_eq!(check_component(b".."), Err(errno::EINVAL));
    assert_eq!(check_component(b"a/b"), Err(errno::EINVAL));
    assert_eq!(check_component(b"/etc"), Err(errno::EINVAL));
    assert_eq!(check_component(&[b'x'; 256]), Err(errno::ENAMETOOLONG));
}
