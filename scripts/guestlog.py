#!/usr/bin/env python3
"""Parse the serial console log of a LeapIO test guest (vm-images/init).

usage: guestlog.py COMMAND LOG [args]
  results LOG                 one line per "RESULT job ok|fail reason"
  block LOG JOB NAME          the text of one block (last occurrence)
  info LOG                    controller/namespace summary as JSON
  fio LOG [JOB]               fio phases as JSON lines
  queues LOG                  per-queue interrupt deltas of the fio job, JSON
  bench-table - ACCEL RUNTIME [--json]
                              table and ratios of bench-guest.sh results
                              (JSON lines on stdin, one per target)
  summary LOG [--json] [--accel A] [--wall S] [--set KEY=VALUE]...
                              the demo's readable summary, or (with --json)
                              one JSON object on the last line (--set adds
                              fields; VALUE is JSON or a string)
  kernel LOG                  {"guest_io_errors":N,"guest_nvme_resets":M}
  rdma-table LOG              the figures of the rdmabench job, markdown
Only the Python standard library is used.
"""
import json
import re
import sys

MARK = "@@LEAPIO "


def read_lines(path):
    with open(path, "rb") as f:
        data = f.read().decode("utf-8", errors="replace")
    return [line.rstrip("\r") for line in data.split("\n")]


def parse(path):
    """Return (events, blocks): events are marker lines split into words,
    blocks maps (job, name) -> text (the last occurrence wins)."""
    events, blocks = [], {}
    cur, buf = None, []
    for line in read_lines(path):
        # a marker may follow other output on the same line (e.g. no newline)
        idx = line.find(MARK)
        if idx >= 0:
            words = line[idx + len(MARK):].split()
            if not words:
                continue
            if words[0] == "BLOCK-BEGIN" and len(words) >= 3:
                cur, buf = (words[1], words[2]), []
                continue
            if words[0] == "BLOCK-END" and cur is not None:
                blocks[cur] = "\n".join(buf)
                cur = None
                continue
            if cur is None:
                events.append(words)
                continue
        if cur is not None:
            buf.append(line)
    return events, blocks


def load_json(text):
    if text is None:
        return None
    start = text.find("{")
    if start < 0:
        return None
    try:
        return json.loads(text[start:])
    except ValueError:
        # trailing noise after the document
        dec = json.JSONDecoder()
        try:
            return dec.raw_decode(text[start:])[0]
        except ValueError:
            return None


def results(events):
    out = []
    for w in events:
        if w[0] == "RESULT" and len(w) >= 3:
            out.append({"job": w[1], "status": w[2], "reason": " ".join(w[3:])})
    return out


def info(blocks):
    ctrl = load_json(blocks.get(("info", "id-ctrl-json"))) or {}
    nss = []
    for (job, name), text in sorted(blocks.items()):
        m = re.fullmatch(r"id-ns-json-(\d+)", name)
        if job != "info" or not m:
            continue
        ns = load_json(text) or {}
        nsze = int(ns.get("nsze", 0))
        flbas = int(ns.get("flbas", 0)) & 0xF
        lbafs = ns.get("lbafs") or ns.get("lbaf") or []
        ds = 9
        if flbas < len(lbafs):
            ds = int(lbafs[flbas].get("ds", 9))
        nss.append({"nsid": int(m.group(1)), "size_bytes": nsze << ds,
                    "lba_bytes": 1 << ds, "nsze": nsze})
    nss.sort(key=lambda n: n["nsid"])
    mq = blocks.get(("info", "mq"), "")
    hwq = re.search(r"hw_queues=(\d+)", mq)
    return {
        "model": str(ctrl.get("mn", "")).strip(),
        "serial": str(ctrl.get("sn", "")).strip(),
        "firmware": str(ctrl.get("fr", "")).strip(),
        "vid": ctrl.get("vid"),
        "mdts": ctrl.get("mdts"),
        "nn": ctrl.get("nn"),
        "namespaces": nss,
        "hw_queues": int(hwq.group(1)) if hwq else None,
    }


def fio_phases(blocks, job=None):
    out = []
    for (j, name), text in blocks.items():
        if not name.startswith("fio-") or name.endswith("-stderr"):
            continue
        if job is not None and j != job:
            continue
        doc = load_json(text)
        phase = name[len("fio-"):]
        if not doc or not doc.get("jobs"):
            out.append({"job": j, "name": phase, "iops": 0, "bw_kib_s": 0,
                        "clat_p99_us": None, "errors": None,
                        "note": "no fio JSON (fio failed?)"})
            continue
        fj = doc["jobs"][0]
        rd, wr = fj.get("read", {}), fj.get("write", {})
        opts = fj.get("job options", {})
        # a verify_only pass reports the replayed writes with 0 IOPS: it reads
        writes = "write" in opts.get("rw", "") and "verify_only" not in opts
        d = wr if writes and wr.get("io_bytes", 0) else rd
        pct = (d.get("clat_ns") or {}).get("percentile") or {}
        p99 = pct.get("99.000000")
        cmax = (d.get("clat_ns") or {}).get("max")
        out.append({
            "job": j,
            "name": phase,
            "rw": "write" if d is wr else "read",
            "iops": round(float(d.get("iops", 0)), 1),
            "bw_kib_s": int(d.get("bw", 0)),
            "clat_p99_us": round(p99 / 1000.0, 1) if p99 is not None else None,
            "clat_max_us": round(cmax / 1000.0, 1) if cmax is not None else None,
            "io_mib": round(d.get("io_bytes", 0) / 1048576.0, 1),
            "errors": int(fj.get("error", 0)) + int(fj.get("total_err", 0) or 0),
        })
    return out


def queues(blocks, job="fio"):
    text = blocks.get((job, "queue-irqs"), "")
    vals = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        when, rest = line.split(":", 1)
        for kv in rest.split():
            k, _, v = kv.partition("=")
            vals.setdefault(k, {})[when.strip()] = int(v or 0)
    return {k: v.get("after", 0) - v.get("before", 0) for k, v in sorted(vals.items())}


def kernel(events):
    """The guest kernel's I/O error and nvme reset/timeout counts (None if
    the guest did not report them)."""
    out = {"guest_io_errors": None, "guest_nvme_resets": None}
    for e in events:
        if e[0] == "KERNEL":
            for kv in e[1:]:
                k, _, v = kv.partition("=")
                if k == "io_errors":
                    out["guest_io_errors"] = int(v or 0)
                elif k == "nvme_resets":
                    out["guest_nvme_resets"] = int(v or 0)
    return out


def summary(path, as_json, accel, wall, extra=None):
    events, blocks = parse(path)
    res = results(events)
    kern = kernel(events)
    inf = info(blocks)
    phases = fio_phases(blocks, "fio")
    q = queues(blocks)
    fio_res = [r for r in res if r["job"] == "fio"]
    if not fio_res:
        verify = "fio job did not run"
    elif fio_res[-1]["status"] == "ok" and all(p.get("errors") == 0 for p in phases):
        verify = "ok"
    else:
        verify = fio_res[-1]["reason"] or "fio reported errors"
    if verify == "ok" and (kern["guest_io_errors"] or kern["guest_nvme_resets"]):
        verify = (f"the guest kernel logged {kern['guest_io_errors']} I/O error(s) and "
                  f"{kern['guest_nvme_resets']} nvme timeout/reset line(s)")
    if as_json:
        obj = {
            "accel": accel,
            "model": inf["model"],
            "serial": inf["serial"],
            "namespaces": inf["namespaces"],
            "hw_queues": inf["hw_queues"],
            "queue_irqs": q,
            "fio": [{k: p[k] for k in ("name", "iops", "bw_kib_s", "clat_p99_us", "errors")} for p in phases],
            "verify": verify,
        }
        obj.update(kern)
        if wall is not None:
            obj["wall_s"] = wall
        obj.update(extra or {})
        print(json.dumps(obj, separators=(",", ":")))
        return 0 if verify == "ok" else 1
    print(f"  controller : {inf['model']} (serial {inf['serial']}, fw {inf['firmware']}, "
          f"mdts {inf['mdts']}, {len(inf['namespaces'])} namespace(s))")
    for ns in inf["namespaces"]:
        print(f"  namespace  : nsid {ns['nsid']}: {ns['size_bytes'] / 2**30:.2f} GiB, "
              f"{ns['lba_bytes']}-byte blocks")
    print(f"  I/O queues : {inf['hw_queues']} in the guest; completions per queue vector during fio: "
          + (", ".join(f"{k} +{v}" for k, v in q.items()) or "n/a"))
    print(f"  accel      : {accel}")
    print(f"  {'fio phase':<10} {'rw':<6} {'IOPS':>10} {'BW KiB/s':>10} {'p99 us':>9} {'MiB':>7} errors")
    for p in phases:
        p99 = "-" if p["clat_p99_us"] is None else f"{p['clat_p99_us']:.0f}"
        print(f"  {p['name']:<10} {p.get('rw', '-'):<6} {p['iops']:>10.0f} {p['bw_kib_s']:>10} "
              f"{p99:>9} {p.get('io_mib', 0):>7} {p['errors']}")
    for k, v in (extra or {}).items():
        print(f"  {k:<11}: {v}")
    print(f"  guest kernel: {kern['guest_io_errors']} I/O errors, "
          f"{kern['guest_nvme_resets']} nvme timeout/reset lines")
    print(f"  verify     : {verify}")
    return 0 if verify == "ok" else 1


def bench_table(accel, runtime, as_json):
    rows = [json.loads(line) for line in sys.stdin if line.strip()]
    by = {r["target"]: r for r in rows}
    smp = rows[0].get("vcpus") if rows else None
    print(f"fio 4k randread QD32, libaio direct, {runtime}s, accel {accel}"
          + (f", {smp} vCPU(s)" if smp else ""))
    print(f"  {'target':<8} {'IOPS':>10} {'p99 us':>10} {'boot->fio s':>12} {'errors':>7} {'IRQs/IO':>8}")
    for r in rows:
        p99 = r.get("clat_p99_us") or 0
        irqs = r.get("irqs_per_io")
        print(f"  {r['target']:<8} {r['iops']:>10.0f} {p99:>10.0f} "
              f"{r.get('boot_to_fio_s', float('nan')):>12.1f} {r['errors']:>7} "
              f"{'-' if irqs is None else format(irqs, '.2f'):>8}")
    ratios = {}
    if "socp" in by:
        for other in ("nvme", "virtio"):
            o = by.get(other)
            if not o or not o["iops"]:
                continue
            s, op99 = by["socp"], o.get("clat_p99_us")
            ratio = {"iops": round(s["iops"] / o["iops"], 2),
                     "p99": round(s["clat_p99_us"] / op99, 2) if op99 and s.get("clat_p99_us") else None}
            ratios[f"socp/{other}"] = ratio
            print(f"  socp/{other}: IOPS x{ratio['iops']}, p99 x{ratio['p99']}")
    if as_json:
        print(json.dumps({"accel": accel, "runtime_s": int(runtime), "results": rows,
                          "ratios": ratios}, separators=(",", ":")))
    return 0


def find_key(d, key):
    """The first value of `key` anywhere in nested dicts and lists."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        d = list(d.values())
    if isinstance(d, list):
        for v in d:
            r = find_key(v, key)
            if r is not None:
                return r
    return None


def rdma_table(blocks):
    """Rows (host, target, qd, iops, p50 us, p99 us) of the rdmabench job,
    then the ratios and the bytes copied per I/O."""
    rows, figs = [], {}
    hosts = {"linux": "Linux nvme-rdma (fio, libaio)",
             "socp": "socp nvme-rdma: backend (leapio-perf --backend)"}
    targets = {"nvmet": "Linux nvmet-rdma", "socp": "socp --rdma-target"}
    for host in ("linux", "socp"):
        for tgt in ("nvmet", "socp"):
            for qd in (1, 32):
                kind = "fio" if host == "linux" else "perf"
                d = load_json(blocks.get(("rdmabench", f"{kind}-{host}-{tgt}-qd{qd}")))
                if d is None:
                    continue
                if kind == "fio":
                    r = d["jobs"][0]["read"]
                    pct = r["lat_ns"].get("percentile", {})
                    fig = (r["iops"], pct.get("50.000000", 0) / 1e3, pct.get("99.000000", 0) / 1e3)
                else:
                    fig = (d["iops"], d["latency"]["p50_us"], d["latency"]["p99_us"])
                figs[(host, tgt, qd)] = fig
                rows.append(f"| {hosts[host]} | {targets[tgt]} | {qd} | {fig[0]:.0f} | {fig[1]:.0f} | {fig[2]:.0f} |")
    out = ["| host | target | QD | IOPS | p50 us | p99 us |", "|---|---|---|---|---|---|"] + rows
    out.append("")
    for qd in (1, 32):
        a, b = figs.get(("socp", "nvmet", qd)), figs.get(("linux", "nvmet", qd))
        if a and b and b[0] and b[1]:
            out.append(f"- hosts on nvmet-rdma, QD{qd}: socp / Linux IOPS {a[0] / b[0]:.2f}x, p50 {a[1] / b[1]:.2f}x")
        a, b = figs.get(("linux", "socp", qd)), figs.get(("linux", "nvmet", qd))
        if a and b and b[0] and b[1]:
            out.append(f"- targets under Linux's host, QD{qd}: socp / nvmet-rdma IOPS {a[0] / b[0]:.2f}x, p50 {a[1] / b[1]:.2f}x")
    perf = load_json(blocks.get(("rdmabench", "perf-guest-nvmet-qd32")))
    st = load_json(blocks.get(("rdmabench", "status-guest")))
    copied = find_key(st, "copied_bytes") if st else None
    if perf and copied is not None and perf.get("ios"):
        out.append(f"- bytes socp copied per I/O (leapio serving nvme-rdma: to a guest, QD32 4 KiB randrw, "
                   f"{perf['ios']} I/Os): {copied / perf['ios']:.1f} ({copied} in all)")
    print("\n".join(out))
    return 0 if rows else 1


def main(argv):
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    cmd, path = argv[1], argv[2]
    if cmd == "bench-table":
        return bench_table(argv[3], argv[4], "--json" in argv[5:])
    events, blocks = parse(path)
    if cmd == "results":
        for r in results(events):
            print(f"{r['job']} {r['status']} {r['reason']}".rstrip())
        return 0
    if cmd == "block":
        text = blocks.get((argv[3], argv[4]))
        if text is None:
            return 1
        print(text)
        return 0
    if cmd == "info":
        print(json.dumps(info(blocks)))
        return 0
    if cmd == "fio":
        for p in fio_phases(blocks, argv[3] if len(argv) > 3 else None):
            print(json.dumps(p))
        return 0
    if cmd == "queues":
        print(json.dumps(queues(blocks, argv[3] if len(argv) > 3 else "fio")))
        return 0
    if cmd == "kernel":
        print(json.dumps(kernel(events)))
        return 0
    if cmd == "rdma-table":
        return rdma_table(blocks)
    if cmd == "summary":
        rest = argv[3:]
        as_json = "--json" in rest
        accel = rest[rest.index("--accel") + 1] if "--accel" in rest else None
        wall = float(rest[rest.index("--wall") + 1]) if "--wall" in rest else None
        extra = {}
        for i, a in enumerate(rest):
            if a == "--set" and i + 1 < len(rest):
                k, _, v = rest[i + 1].partition("=")
                try:
                    extra[k] = json.loads(v)
                except ValueError:
                    extra[k] = v
        return summary(path, as_json, accel, wall, extra)
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
