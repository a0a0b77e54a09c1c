//! The control socket: JSON-RPC 2.0 over a Unix socket (mode 0600), one
//! request per line, one response per line (as SPDK's `rpc.py` talks to
//! its target). `leapio-hostd --control`, `socp --control` and `leapio --control` serve it;
//! `leapioctl` is the client. A malformed request gets a JSON-RPC error and
//! the connection goes on; a line over [`MAX_LINE`] closes it.

use crate::socket::{OwnedSocket, SocketAccess};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request line.
pub const MAX_LINE: usize = 64 << 10;
/// Connections served at once.
const MAX_CLIENTS: usize = 16;

/// Runs one method: `(method, params) -> result or message`.
pub type Handler = Arc<dyn Fn(&str, &Value) -> Result<Value, String> + Send + Sync>;

/// How long a client may stay silent (or leave a response unread) before
/// its connection is closed: idle clients must not hold the slots.
pub const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// Serve `handler` on `path` until `stop`. The socket appears with mode
/// 0600 (see [`crate::socket`]); a client of another user than ours (or
/// root) is refused; at most [`MAX_CLIENTS`] are served at once, each
/// closed after [`CLIENT_IDLE`] of silence. A socket another process
/// still serves (the one this process takes over from, in an upgrade) is
/// taken once it lets go; any other problem is returned.
pub fn serve(
    path: &Path,
    handler: Handler,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let first = match OwnedSocket::bind(path, &SocketAccess::default()) {
        Ok(s) => {
            s.listener().set_nonblocking(true)?;
            Some(s)
        }
        Err(crate::socket::BindError::InUse(_)) => {
            tracing::warn!(path = %path.display(), "control socket in use: served once it is free");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let path = path.to_path_buf();
    let clients = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let mut sock = first;
            while sock.is_none() && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(100));
                match OwnedSocket::bind(&path, &SocketAccess::default()) {
                    Ok(s) => match s.listener().set_nonblocking(true) {
                        Ok(()) => sock = Some(s),
                        Err(e) => {
                            tracing::error!(path = %path.display(), "control socket: {e}");
                            return;
                        }
                    },
                    Err(crate::socket::BindError::InUse(_)) => {}
                    Err(e) => {
                        tracing::error!(path = %path.display(), "control socket: {e}");
                        return;
                    }
                }
            }
            let Some(sock) = sock else { return };
            while !stop.load(Ordering::Acquire) {
                match sock.listener().accept() {
                    Ok((s, _)) => {
                        match crate::socket::peer_cred(&s) {
                            Ok(c) if c.uid == me || c.uid == 0 => {}
                            Ok(c) => {
                                tracing::warn!(
                                    uid = c.uid,
                                    pid = c.pid,
                                    "control socket: a client of another user refused"
                                );
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!("control socket: a client without credentials: {e}");
                                continue;
                            }
                        }
                        if clients.load(Ordering::Acquire) >= MAX_CLIENTS {
                            let _ = s.set_nonblocking(true);
                            let mut s = s;
                            let _ =
                                writeln!(s, "{}", error(Value::Null, -32000, "too many clients"));
                            continue;
                        }
                        clients.fetch_add(1, Ordering::AcqRel);
                        let (h, c) = (handler.clone(), clients.clone());
                        let spawned = std::thread::Builder::new()
                            .name("control-client".into())
                            .spawn(move || {
                                client(s, &h);
                                c.fetch_sub(1, Ordering::AcqRel);
                            });
                        if spawned.is_err() {
                            clients.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!("control socket: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            // `sock` goes: its path is removed if it still names it.
        })
}

fn client(s: UnixStream, handler: &Handler) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(CLIENT_IDLE));
    let _ = s.set_write_timeout(Some(CLIENT_IDLE));
    let Ok(mut out) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded read of one line.
        let n = match (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.len() > MAX_LINE {
            let _ = writeln!(out, "{}", error(Value::Null, -32600, "request too long"));
            return;
        }
        let resp = respond(&line, handler);
        if writeln!(out, "{resp}").is_err() {
            return;
        }
    }
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The response to one request line.
pub fn respond(line: &[u8], handler: &Handler) -> Value {
    let req: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error(Value::Null, -32700, &format!("parse error: {e}")),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return error(id, -32600, "no method");
    };
    let params = req.get("params").cloned().unwrap_or_else(|| json!({}));
    tracing::info!(method, %params, "control request");
    match handler(method, &params) {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(msg) if msg.starts_with("unknown method") => error(id, -32601, &msg),
        Err(msg) => error(id, -32000, &msg),
    }
}

/// Call `method` on the control socket at `path`.
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(s, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad response: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_string());
    }
    Ok(v.get("result").cloned().unwrap_or(Value::Null))
}

/// `handler` answering one more method, `config`: `{"toml": toml}`, the
/// configuration the process runs with as a config file (see
/// [`crate::config_file::Effective`]; `leapioctl config` prints it).
pub fn with_config(handler: Handler, toml: String) -> Handler {
    Arc::new(move |method, params| match method {
        "config" => Ok(json!({ "toml": toml })),
        _ => handler(method, params),
    })
}

/// A string parameter.
pub fn param_str<'a>(params: &'a Value, key: &str) -> Result<&'a str, String> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string parameter \"{key}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors() {
        let h: Handler = Arc::new(|m, p| match m {
            "echo" => Ok(p.clone()),
            "fail" => Err("it failed".into()),
            _ => Err(format!("unknown method {m}")),
        });
        let r = respond(
            br#"{"jsonrpc":"2.0","id":7,"method":"echo","params":{"a":1}}"#,
            &h,
        );
        assert_eq!(r["result"]["a"], 1);
        assert_eq!(r["id"], 7);
        assert_eq!(respond(b"{nope", &h)["error"]["code"], -32700);
        assert_eq!(respond(br#"{"id":1}"#, &h)["error"]["code"], -32600);
        assert_eq!(
            respond(br#"{"id":1,"method":"x"}"#, &h)["error"]["code"],
            -32601
        );
        assert_eq!(
            respond(br#"{"id":1,"method":"fail"}"#, &h)["error"]["message"],
            "it failed"
        );
    }

    #[test]
    fn with_config_answers_config_and_forwards_the_rest() {
        let h: Handler = Arc::new(|m, _| match m {
            "status" => Ok(json!("up")),
            _ => Err(format!("unknown method {m}")),
        });
        let h = with_config(h, "pollers = 2\n".into());
        let r = respond(br#"{"id":1,"method":"config"}"#, &h);
        assert_eq!(r["result"]["toml"], "pollers = 2\n");
        assert_eq!(
            respond(br#"{"id":1,"method":"status"}"#, &h)["result"],
            "up"
        );
        assert_eq!(
            respond(br#"{"id":1,"method":"x"}"#, &h)["error"]["code"],
            -32601
        );
    }

    #[test]
    fn over_a_socket() {
        let dir = std::env::temp_dir().join(format!("leapio-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let h: Handler = Arc::new(|m, _| Ok(json!({ "method": m })));
        let t = serve(&path, h, stop.clone()).unwrap();
        assert_eq!(
            call(&path, "status", json!({})).unwrap()["method"],
            "status"
        );
        // An oversized line closes the connection with an error.
        let mut s = UnixStream::connect(&path).unwrap();
        let big = vec![b'x'; MAX_LINE + 10];
        let _ = s.write_all(&big);
        let _ = s.write_all(b"\n");
        let mut resp = String::new();
        let _ = BufReader::new(s).read_line(&mut resp);
        assert!(resp.contains("request too long"), "{resp}");
        stop.store(true, Ordering::Release);
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An upgrade: the successor starts while its predecessor still serves
    /// the socket, and serves it once the predecessor lets go.
    #[test]
    fn a_socket_in_use_is_taken_once_its_server_lets_go() {
        let dir = std::env::temp_dir().join(format!("leapio-ctl-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let (old_stop, new_stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let old = serve(&path, Arc::new(|_, _| Ok(json!("old"))), old_stop.clone()).unwrap();
        let new = serve(&path, Arc::new(|_, _| Ok(json!("new"))), new_stop.clone()).unwrap();
        assert_eq!(call(&path, "who", json!({})).unwrap(), "old");
        old_stop.store(true, Ordering::Release);
        old.join().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while call(&path, "who", json!({})).ok() != Some(json!("new")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the successor never served"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        new_stop.store(true, Ordering::Release);
        new.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
