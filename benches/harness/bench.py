"""scripts/bench's measuring part: runs the sections and writes their figures as JSON.

Key idea: every figure that matters is a ratio against a baseline measured in the same run, on
the same server (curl for the large file, tus-js-client for small files, the link's own rate
on a shaped link); the seconds are kept only to show them small. Large-file rounds alternate
the clients. report.py turns the JSON into BENCHMARKS.md and the SVG.

Usage: python3 bench.py --out results.json --ferry BIN --tuspy-python PY [--quick]
                        [--sections big,small,cuts,shaped]
"""

import argparse
import filecmp
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import clients as c

MIB = 1 << 20
KIB = 1 << 10
CLIENTS = ["ferry", "curl", "tus-js-client", "tuspy"]
# What the shaped section runs (`--shaped-parts`), and the figures of the last run (kept for
# the parts not run).
PARTS = {"validate", "cellular-good", "cellular-bad", "outage"}
PREV = {}
# Smoke-test sizes (`--tiny`): checks that every part runs, the figures mean nothing.
SCALE = {}
TINY = {"big": 8 * MIB, "small": 40, "cuts": 8 * MIB, "shaped": MIB, "shaped_small": 4,
        "outage": 5}
PROFILES = {
    "cellular-good": {"rate_bit": 10e6, "rtt_ms": 60, "loss": 0.001},
    "cellular-bad": {"rate_bit": 2e6, "rtt_ms": 300, "loss": 0.01, "down_every": 60, "down_for": 10},
}


def log(msg: str):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def write_random(path: Path, size: int, seed: int):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        block = rng.randbytes(MIB)
        while left > 0:
            n = min(left, MIB)
            # A fresh block now and then keeps the data incompressible without costing much.
            block = rng.randbytes(MIB) if rng.random() < 0.1 else block[7:] + block[:7]
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def small_files(dirpath: Path, count: int, size: int):
    dirpath.mkdir(parents=True, exist_ok=True)
    rng = random.Random(count)
    hour_ago = time.time() - 3600
    for i in range(count):
        p = dirpath / f"f{i:06d}.bin"
        p.write_bytes(rng.randbytes(size))
        os.utime(p, (hour_ago, hour_ago))


def ferry_concurrency(kind: str) -> int:
    """`daemon.concurrency` of a ferry row: `ferry c=4` is 4, `ferry` 1."""
    return int(kind.split("c=", 1)[1]) if "c=" in kind else 1


def check_big(server: c.TusServer, src: Path) -> str:
    """The one stored upload equals the one file of directory `src`, byte for byte."""
    src = next(p for p in src.iterdir() if p.is_file())
    stored = [server.data_dir / n for n, _ in server.stored()]
    if len(stored) != 1:
        return f"{len(stored)} uploads stored, expected 1"
    if not filecmp.cmp(stored[0], src, shallow=False):
        return "stored bytes differ from the file"
    return ""


def check_small(server: c.TusServer, count: int, size: int) -> str:
    stored = server.stored()
    done = sum(1 for _, s in stored if s == size)
    return "" if done == count and len(stored) == count else \
        f"{done} of {count} files stored complete ({len(stored)} uploads)"


def run_checked(m: c.Measure, why: str) -> dict:
    d = asdict(m)
    if why:
        d["ok"] = False
        d["note"] = (d["note"] + "; " if d["note"] else "") + why
    return d


def section_big(env, work: Path, quick: bool) -> dict:
    size = SCALE.get("big") or (256 * MIB if quick else 1024 * MIB)
    runs = 3
    src = work / "big"
    src.mkdir()
    log(f"big: writing {size // MIB} MiB")
    write_random(src / "random.bin", size, 1)
    server = c.TusServer(work / "big-data")
    rows = {k: [] for k in CLIENTS}
    try:
        # Warm-up, untimed: node's JIT.
        c.run_client("curl", server.endpoint, src, work, env)
        server.empty()
        for r in range(runs):
            order = CLIENTS if r % 2 == 0 else CLIENTS[::-1]
            for kind in order:
                log(f"big: round {r + 1}/{runs}: {kind}")
                m = c.run_client(kind, server.endpoint, src, work, env, timeout=1800)
                rows[kind].append(run_checked(m, check_big(server, src)))
                server.empty()
    finally:
        server.stop()
    return {"size": size, "runs": runs, "rows": rows}


def section_small(env, work: Path, quick: bool) -> dict:
    """ferry (`ferry run`) and tus-js-client in alternating rounds, each run on a fresh
    @tus/server, medians; curl and tuspy once each. The server's CPU per run is kept: on this
    kind of machine it swings between two levels (about 1.9 and 3.3 ms per file here) for
    the same work, whichever client runs, and a single run per client drew the lots."""
    count = SCALE.get("small") or (1000 if quick else 10000)
    size = 100 * KIB
    rounds = 3
    src = work / "small"
    log(f"small: writing {count} files of 100 KiB")
    small_files(src, count, size)
    paired = [k for k in ["tus-js-client", "ferry"] if k in CLIENTS]
    runs = {k: [] for k in CLIENTS + ["ferry c=4"]}
    plan = [(r, k) for r in range(rounds) for k in (paired if r % 2 == 0 else paired[::-1])]
    # Once each: curl, tuspy, and ferry with four uploads at once (the peak RSS of the
    # threads' allocations, and what concurrency buys where the server is the limit).
    plan += [(0, k) for k in ["ferry c=4", "curl", "tuspy"] if k.split(" ")[0] in CLIENTS]
    for r, kind in plan:
        log(f"small: round {r + 1}: {kind}")
        server = c.TusServer(work / f"small-data-{r}-{kind}")
        try:
            cpu0 = c.process_cpu(server.proc.pid)
            if kind.startswith("ferry"):
                m = c.run_ferry_daemon(server.endpoint, src, work, env, timeout=3600,
                                       concurrency=ferry_concurrency(kind))
            else:
                m = c.run_client(kind, server.endpoint, src, work, env, timeout=3600)
            d = run_checked(m, check_small(server, count, size))
            d["server_cpu"] = c.process_cpu(server.proc.pid) - cpu0
            runs[kind].append(d)
            server.empty()
        finally:
            server.stop()
    rows = {}
    for kind, rs in runs.items():
        if not rs:
            continue
        ok = [x for x in rs if x["ok"]]
        row = dict(sorted(ok, key=lambda x: x["wall"])[len(ok) // 2] if ok else rs[0])
        row["walls"] = [x["wall"] for x in rs]
        row["server_cpus"] = [x["server_cpu"] for x in rs]
        rows[kind] = row
    return {"count": count, "size": size, "rounds": rounds, "rows": rows}


def section_cuts(env, work: Path, quick: bool) -> dict:
    size = SCALE.get("cuts") or (128 * MIB if quick else 1024 * MIB)
    cuts_wanted = max(1, round(20 * size / (1024 * MIB)))
    src = work / "cut"
    src.mkdir()
    write_random(src / "random.bin", size, 2)
    server = c.TusServer(work / "cut-data")
    rows = {}
    try:
        for kind in [k for k in ["ferry", "tus-js-client", "tuspy"] if k in CLIENTS]:
            every = size // (cuts_wanted + 1)
            proxy = c.CutProxy(server.port, every)
            endpoint = server.endpoint.replace(f":{server.port}/", f":{proxy.port}/")
            log(f"cuts: {kind}, a reset every {every} bytes sent")
            extra = '[retry]\ninitial_delay = "100ms"\nmax_delay = "500ms"\n'
            m = c.run_client(kind, endpoint, src, work, env, retries=1000, ferry_extra=extra,
                             timeout=1800)
            d = run_checked(m, check_big(server, src))
            d["extra"] = {"cuts": proxy.cuts, "sent": proxy.sent, "resent_ratio": proxy.sent / size}
            rows[kind] = d
            proxy.close()
            server.empty()
    finally:
        server.stop()
    rows["curl"] = {"ok": False, "note": "curl does not resume an upload (no tus client logic)"}
    return {"size": size, "cuts_per_gib": 20, "rows": rows}


def section_shaped(env, work: Path, quick: bool) -> dict:
    big = SCALE.get("shaped") or (10 * MIB if quick else 50 * MIB)
    n_small = {"cellular-good": 30 if quick else 100, "cellular-bad": 15 if quick else 100}
    n_small = {k: SCALE.get("shaped_small") or v for k, v in n_small.items()}
    outage = SCALE.get("outage") or (60 if quick else 180)
    ns = c.Namespace(f"ferrybench{os.getpid()}")
    # Parts not selected keep their figures from the last run (same sizes only).
    out = {"file_size": big, "profiles": {}, "outage": {}}
    if PREV.get("shaped", {}).get("file_size") == big:
        out.update({k: v for k, v in PREV["shaped"].items() if k in ("validation", "profiles", "outage")})
    src = work / "shaped-big"
    src.mkdir()
    write_random(src / "random.bin", big, 3)
    try:
        server = c.TusServer(work / "shaped-data", ns=ns.name)
        try:
            if "validate" in PARTS:
                out["validation"] = validate(env, work, ns, server)
            for name, prof in PROFILES.items():
                if name not in PARTS:
                    continue
                res = {"big": {}, "small": {}, "small_count": n_small[name], "link": prof}
                counters = []
                for kind in CLIENTS:
                    # A fresh shaper per client: the same outage phase and loss sequence for all.
                    ns.shape(**prof)
                    log(f"shaped {name}: {big // MIB} MiB, {kind}")
                    m = c.run_client(kind, server.endpoint, src, work, env, ns=ns.name,
                                     retries=1000, timeout=1800)
                    d = run_checked(m, check_big(server, src))
                    d["goodput"] = big * 8 / m.wall / prof["rate_bit"]
                    res["big"][kind] = d
                    server.empty()
                    counters.append(ns.unshape())
                ssrc = work / f"shaped-small-{name}"
                small_files(ssrc, n_small[name], 100 * KIB)
                kinds = ["tus-js-client", "ferry", "ferry c=4", "curl", "tuspy"]
                for kind in [k for k in kinds if k.split(" ")[0] in CLIENTS]:
                    ns.shape(**prof)
                    log(f"shaped {name}: {n_small[name]} x 100 KiB, {kind}")
                    if kind.startswith("ferry"):
                        m = c.run_ferry_daemon(server.endpoint, ssrc, work, env, ns=ns.name,
                                               concurrency=ferry_concurrency(kind), timeout=1800)
                    else:
                        m = c.run_client(kind, server.endpoint, ssrc, work, env, ns=ns.name,
                                         retries=1000, timeout=1800)
                    res["small"][kind] = run_checked(m, check_small(server, n_small[name], 100 * KIB))
                    server.empty()
                    counters.append(ns.unshape())
                res["shaper"] = {d: {k: sum(c_.get(d, {}).get(k, 0) for c_ in counters)
                                     for k in ("accepted", "lost", "tail_dropped", "down_dropped", "bytes")}
                                 for d in ("up", "down")}
                out["profiles"][name] = res
            if "outage" in PARTS:
                out["outage"] = outage_runs(env, work, ns, server, src, big, outage)
        finally:
            server.stop()
    finally:
        ns.delete()
    return out


def validate(env, work, ns, server) -> dict:
    """The emulator's check: curl on a 50 MiB file on cellular-good, which reached 93 % of the
    rate under netem (shared/reference/netem.md); always 50 MiB, even with --quick."""
    vsize = SCALE.get("shaped") or 50 * MIB
    vsrc = work / "validate"
    vsrc.mkdir()
    write_random(vsrc / "random.bin", vsize, 4)
    ns.shape(**PROFILES["cellular-good"])
    log(f"shaped: validating the link with curl, {vsize // MIB} MiB on cellular-good")
    m = c.run_client("curl", server.endpoint, vsrc, work, env, ns=ns.name, timeout=900)
    v = run_checked(m, check_big(server, vsrc))
    v.update(size=vsize, goodput=vsize * 8 / m.wall / 10e6, shaper=ns.unshape())
    server.empty()
    return v


def outage_runs(env, work, ns, server, src, size, outage) -> dict:
    """cellular-good link; down `outage` s from 3 s into the upload; time to first new byte."""
    rows = {}
    prof = PROFILES["cellular-good"]
    for kind in CLIENTS:
        ns.shape(**prof)
        log(f"outage {outage} s: {kind}")
        if kind == "ferry":
            cfg = c.ferry_config(work / f"outage-{time.monotonic_ns()}.toml", server.endpoint)
            cmd = [env["ferry"], "upload", "--config", cfg, src / "random.bin"]
        else:
            cmd = c.client_cmd(kind, server.endpoint, src, work, env, 1000)
        start = time.monotonic()
        proc = c.spawn(cmd, ns.name, work / f"outage-{kind}.log")
        time.sleep(3)
        ns.down(True)
        time.sleep(outage)
        at_back = server.stored_bytes()
        ns.down(False)
        back = time.monotonic()
        first = None
        while not c.exited(proc) and time.monotonic() - back < 600:
            if server.stored_bytes() > at_back:
                first = time.monotonic() - back
                break
            time.sleep(0.05)
        if first is None and server.stored_bytes() > at_back:
            first = time.monotonic() - back
        code, cpu, rss = c.reap(proc, max(1, 900 - (time.monotonic() - start)))
        wall = time.monotonic() - start
        why = check_big(server, src)
        rows[kind] = {"ok": code == 0 and not why, "first_byte_s": first, "wall": wall,
                      "stored_at_link_back": at_back,
                      "note": ("" if code == 0 else f"exit {code}: " + c.tail(work / f"outage-{kind}.log")) + (f"; {why}" if why else "")}
        server.empty()
        ns.unshape()
    return {"outage_s": outage, "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ferry", required=True)
    ap.add_argument("--tuspy-python", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="big,small,cuts,shaped")
    ap.add_argument("--work", default="")
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--shaped-parts", default=",".join(sorted(PARTS)),
                    help="validate,cellular-good,cellular-bad,outage")
    args = ap.parse_args()
    if args.tiny:
        SCALE.update(TINY)
    env = {"ferry": args.ferry, "tuspy_python": args.tuspy_python}
    global CLIENTS
    if not args.tuspy_python:
        CLIENTS = [k for k in CLIENTS if k != "tuspy"]
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    PREV.update(results)
    PARTS.intersection_update(args.shaped_parts.split(","))
    results["quick"] = args.quick
    results["tiny"] = args.tiny
    base = Path(args.work).resolve() if args.work else Path(tempfile.gettempdir())
    funcs = {"big": section_big, "small": section_small, "cuts": section_cuts,
             "shaped": section_shaped}
    for sec in args.sections.split(","):
        if sec not in funcs:
            continue
        work = Path(tempfile.mkdtemp(prefix=f"ferry-bench-{sec}-", dir=base))
        try:
            results[sec] = funcs[sec](env, work, args.quick)
            results[sec]["finished"] = time.strftime("%Y-%m-%d %H:%M %Z")
            results[sec]["sizes"] = "tiny" if args.tiny else "quick" if args.quick else "full"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out_path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
