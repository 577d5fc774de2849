"""scripts/bench's writing part: results JSON (bench.py) -> BENCHMARKS.md and an SVG of ratios.

Key idea: the ratios are the result and lead every table; the seconds, CPU seconds and MiB they
come from follow in small print. The SVG is hand-written: one group of horizontal bars per
scenario, one bar per client, a line at 1 (the baseline), no plotting library.

Usage: python3 report.py --results results.json --meta meta.json --out BENCHMARKS.md
                         --svg docs/benchmarks.svg [--idle FILE] [--tls FILE]
"""

import argparse
import json
import statistics
from pathlib import Path

MIB = 1 << 20
CLIENT_ORDER = ["ferry", "ferry c=4", "curl", "tus-js-client", "tuspy"]
COLOURS = {"ferry": "#1b6ac9", "ferry c=4": "#6fa8f0", "curl": "#777777",
           "tus-js-client": "#e0a000", "tuspy": "#3a9a5a"}


DEFAULT_SIZES = "full"  # for results written before bench.py recorded each section's sizes


def when(s) -> str:
    """The line under a section's title: its sizes and when it finished."""
    sizes = {"quick": "`--quick` sizes", "full": "full sizes", "tiny": "`--tiny` sizes"}.get(
        s.get("sizes", DEFAULT_SIZES), "")
    return f"<sub>{sizes}, run finished {s.get('finished', '?')}</sub>\n"


def med(rows, key):
    vals = [r[key] for r in rows if r.get("ok")]
    return statistics.median(vals) if vals else None


def fmt(x, spec=".2f", none="–"):
    return none if x is None else format(x, spec)


def ordered(d):
    return [k for k in CLIENT_ORDER if k in d]


def big_section(b, bars):
    n = len(next(iter(b["rows"].values())))
    curl = {k: med(b["rows"]["curl"], k) for k in ("wall", "cpu")}
    out = [f"## {b['size'] // MIB} MiB into @tus/server on loopback\n", when(b),
           f"Each client uploads one file of random bytes, {b['runs']} alternating rounds; "
           "medians. Ratios over curl (one POST, one PATCH of the whole file by `curl -T`). "
           "CPU = user + system of the client's process tree; peak RSS = the largest VmHWM in "
           "it. Issue 16's targets for ferry: wall ≤ 0.9× curl, CPU ≤ 1.5× curl, RSS ≤ 8 MiB.\n",
           "| client | wall × curl | CPU × curl | peak RSS MiB | <sub>wall s</sub> | <sub>CPU s</sub> | runs ok |",
           "|---|---|---|---|---|---|---|"]
    for k in ordered(b["rows"]):
        rows = b["rows"][k]
        w, cpu = med(rows, "wall"), med(rows, "cpu")
        rss = max((r["rss_kib"] for r in rows if r.get("ok")), default=None)
        wr = w / curl["wall"] if w and curl["wall"] else None
        cr = cpu / curl["cpu"] if cpu and curl["cpu"] else None
        ok = sum(1 for r in rows if r.get("ok"))
        out.append(f"| {k} | **{fmt(wr)}** | **{fmt(cr)}** | {fmt(rss and rss / 1024, '.1f')} | "
                   f"<sub>{fmt(w)}</sub> | <sub>{fmt(cpu)}</sub> | {ok}/{n} |")
        bars.append((f"{b['size'] // MIB} MiB on loopback: wall time × curl (lower is better)", k, wr))
    notes = [f"{k}: {r['note']}" for k in b["rows"] for r in b["rows"][k] if r.get("note")]
    return out + [""] + [f"- {x}" for x in notes[:6]] + [""]


def small_section(s, bars, title, base="tus-js-client", count_key="count"):
    count = s[count_key]
    rows = s["rows"] if "rows" in s else s["small"]
    rate = {k: count / r["wall"] for k, r in rows.items() if r.get("ok")}
    b = rate.get(base)
    out = [f"| client | files/s × {base} | files/s | <sub>wall s</sub> | <sub>CPU s</sub> | peak RSS MiB |",
           "|---|---|---|---|---|---|"]
    for k in ordered(rows):
        r = rows[k]
        ratio = rate[k] / b if k in rate and b else None
        out.append(f"| {k} | **{fmt(ratio)}** | {fmt(rate.get(k), '.1f')} | <sub>{fmt(r.get('wall'), '.1f')}</sub> | "
                   f"<sub>{fmt(r.get('cpu'))}</sub> | {fmt(r.get('rss_kib') and r['rss_kib'] / 1024, '.1f')} |")
        bars.append((title, k, ratio))
    notes = [f"{k}: {r['note']}" for k, r in rows.items() if r.get("note")]
    return out + [""] + [f"- {x}" for x in notes] + [""]


def small_rounds(s):
    """Per-round ratios of ferry over tus-js-client and the server's CPU per file in each run."""
    rows = s["rows"]
    f, j = rows.get("ferry") or {}, rows.get("tus-js-client") or {}
    if not f.get("walls") or not j.get("walls"):
        return []
    ratios = [jw / fw for fw, jw in zip(f["walls"], j["walls"]) if fw and jw]
    per_file = lambda r: " ".join(f"{x * 1000 / s['count']:.1f}" for x in r.get("server_cpus", []))
    return [f"Per round, ferry's files/s over tus-js-client's: {' '.join(f'{x:.2f}' for x in ratios)} "
            f"(median {statistics.median(ratios):.2f}). @tus/server's CPU per file in each run, ms: "
            f"under ferry {per_file(f)}; under tus-js-client {per_file(j)}. On a shared machine it "
            "swings between two levels for the same work, whichever client runs: compare runs at the "
            "same level.\n"]


def cuts_section(s, bars):
    out = [f"## Bytes re-sent under cuts\n", when(s),
           f"One {s['size'] // MIB} MiB file through a proxy that resets the connection each time "
           f"another 1/{round(20 * s['size'] / 1024 / MIB) + 1} of the file's size went upstream "
           "(20 cuts per GiB); clients retry 100 ms apart and resume from the server's offset. "
           "Bytes sent = everything the client sent through the proxy (HTTP heads included) "
           "over the file's size; 1.000 would be no byte sent twice. The reset discards what the server had "
           "not read yet (as tests/support/flaky_proxy.rs does), so bytes in the socket buffers are sent again. "
           "Each further byte sent counts towards the next cut, as in `cargo bench --bench upload`.\n",
           "| client | bytes sent / file size | cuts | <sub>wall s</sub> | stored intact |",
           "|---|---|---|---|---|"]
    for k in ordered(s["rows"]):
        r = s["rows"][k]
        e = r.get("extra") or {}
        bars.append(("bytes sent / file size under 20 cuts per GiB (lower is better)", k,
                     e.get("resent_ratio") if r.get("ok") else None))
        out.append(f"| {k} | **{fmt(e.get('resent_ratio'), '.3f')}** | {e.get('cuts', '–')} | "
                   f"<sub>{fmt(r.get('wall'), '.1f')}</sub> | {'yes' if r.get('ok') else 'no: ' + r.get('note', '')} |")
    return out + [""]


def link_ceiling(p, link):
    """What the link itself allows for 100 KiB files: the best single-file goodput of this run
    times the rate, over the file's bits; as files/s and × tus-js-client's."""
    goodputs = [r["goodput"] for r in p["big"].values() if r.get("ok") and r.get("goodput")]
    js = p["small"].get("tus-js-client") or {}
    # With outages the big file's goodput counts time the short small-file runs may not meet.
    if link.get("down_every") or not goodputs or not js.get("ok") or not js.get("wall"):
        return []
    ceiling = max(goodputs) * link["rate_bit"] / (100 * 1024 * 8)
    js_rate = p["small_count"] / js["wall"]
    return [f"The link's ceiling for these files, at the best goodput above with no time lost "
            f"between requests: {ceiling:.1f} files/s = **{ceiling / js_rate:.2f}×** tus-js-client "
            "(no client can go beyond it).\n"]


def shaped_section(s, bars):
    out = ["## Shaped links\n", when(s),
           "A network namespace whose loopback is shaped by `benches/harness/shaper.py`: NFQUEUE "
           "on the server's port, each packet released when the emulated link would deliver it "
           "(per direction: random loss, tail drop beyond 100 packets, serialization at the rate, "
           "then half the RTT). Server and clients in the namespace on 127.0.0.1. The emulator "
           "restarts for each client's run, so each meets the same outage times and loss sequence.\n"]
    v = s.get("validation")
    if v:
        out.append(f"Check of the emulator: curl, one {v['size'] // MIB} MiB file on cellular-good, reached "
                   f"**{fmt(v['goodput'] if v.get('ok') else None)}** of the link rate "
                   f"(<sub>{fmt(v['wall'], '.1f')} s</sub>; under netem elsewhere: 0.93).\n")
    for name, p in s["profiles"].items():
        link = p["link"]
        desc = (f"{link['rtt_ms']} ms RTT, {link['rate_bit'] / 1e6:g} Mbit/s, {link['loss'] * 100:g} % loss"
                + (f", {link['down_for']} s down every {link['down_every']} s from 20 s in" if link.get("down_every") else ""))
        out += [f"### {name} ({desc})\n",
                f"One {s['file_size'] // MIB} MiB file: goodput = file bits / wall time / link rate.\n",
                "| client | goodput / link rate | <sub>wall s</sub> | <sub>CPU s</sub> | ok |", "|---|---|---|---|---|"]
        for k in ordered(p["big"]):
            r = p["big"][k]
            g = r.get("goodput") if r.get("ok") else None
            out.append(f"| {k} | **{fmt(g)}** | <sub>{fmt(r.get('wall'), '.1f')}</sub> | <sub>{fmt(r.get('cpu'))}</sub> | "
                       f"{'yes' if r.get('ok') else 'no: ' + r.get('note', '')[:200]} |")
            bars.append((f"{name}: {s['file_size'] // MIB} MiB goodput / link rate (higher is better)", k, g))
        out += ["", f"{p['small_count']} files of 100 KiB (ferry: `ferry run`, default `concurrency = 1`, and `concurrency = 4`):\n"]
        out += small_section({"count": p["small_count"], "rows": p["small"]}, bars,
                             f"{name}: small files/s × tus-js-client (higher is better)")
        out += link_ceiling(p, link)
        sh = p.get("shaper") or {}
        if sh:
            out.append("<sub>shaper counters: " + "; ".join(
                f"{d}: {v['accepted']} packets passed, {v['lost']} lost, {v['tail_dropped']} tail-dropped, "
                f"{v['down_dropped']} dropped while down" for d, v in sh.items()) + "</sub>\n")
    o = s.get("outage") or {}
    if o:
        out += [f"### Outage of {o['outage_s']} s\n",
                f"cellular-good link; each client uploads the {s['file_size'] // MIB} MiB file, the link goes down "
                f"3 s in for {o['outage_s']} s (100 % loss). Figure: time from the link coming back to "
                "the server's stored bytes growing again (polled every 50 ms).\n",
                "| client | link back → first new byte, s | completed | <sub>wall s</sub> |", "|---|---|---|---|"]
        for k in ordered(o["rows"]):
            r = o["rows"][k]
            out.append(f"| {k} | **{fmt(r.get('first_byte_s'), '.1f', '– (no byte after the link came back)')}** | "
                       f"{'yes' if r.get('ok') else 'no: ' + r.get('note', '')[:200]} | <sub>{fmt(r.get('wall'), '.0f')}</sub> |")
        out.append("")
    return out


def svg(bars, path: Path):
    """Horizontal bars, grouped by scenario; a dashed line at 1.0 in each group."""
    groups = {}
    for scen, client, val in bars:
        groups.setdefault(scen, []).append((client, val))
    vmax = max([v for g in groups.values() for _, v in g if v] + [1.0]) * 1.1
    left, width, bar_h, gap = 250, 420, 16, 28
    y = 40
    parts = []
    for scen, items in groups.items():
        parts.append(f'<text x="10" y="{y - 6}" font-weight="bold">{esc(scen)}</text>')
        top = y
        for client, val in items:
            parts.append(f'<text x="{left - 8}" y="{y + 12}" text-anchor="end">{esc(client)}</text>')
            if val is None:
                parts.append(f'<text x="{left + 4}" y="{y + 12}" fill="#a00">not measured / failed</text>')
            else:
                w = width * val / vmax
                parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                             f'fill="{COLOURS.get(client, "#999")}"/>')
                parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}">{val:.2f}</text>')
            y += bar_h
        one = left + width / vmax
        parts.append(f'<line x1="{one:.1f}" y1="{top - 2}" x2="{one:.1f}" y2="{y}" stroke="#000" '
                     'stroke-dasharray="3,3"/>')
        y += gap
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{y}" '
            'font-family="sans-serif" font-size="12">\n'
            '<rect width="100%" height="100%" fill="#fff"/>\n'
            '<text x="10" y="18" font-size="14">ferry benchmarks: ratios from one run '
            '(dashed line = 1; see BENCHMARKS.md)</text>\n')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n".join(parts) + "\n</svg>\n")


def esc(t: str) -> str:
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--idle", default="")
    ap.add_argument("--tls", default="")
    a = ap.parse_args()
    r = json.loads(Path(a.results).read_text()) if Path(a.results).is_file() else {}
    m = json.loads(Path(a.meta).read_text())
    global DEFAULT_SIZES
    DEFAULT_SIZES = "tiny" if r.get("tiny") else "quick" if r.get("quick") else "full"
    bars = []
    out = ["# Benchmarks\n",
           "<!-- Written by scripts/bench; edit benches/harness/report.py, not this file. -->\n",
           f"![ratios]({Path(a.svg).name if Path(a.svg).parent == Path(a.out).parent else a.svg})\n",
           "Every figure that matters is a ratio against a baseline measured in the same run on the "
           "same server; the seconds are in small print because a shared machine makes them noise. "
           "Rerun with `scripts/bench` (`--quick` for smaller sizes, `--sections` to pick; "
           "`scripts/bench --help`).\n",
           f"- machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}",
           f"- date: {m['date']}; ferry {m['commit']}; last command: `{m['command']}`"
           + (" (**--quick**: smaller sizes)" if r.get("quick") else ""),
           f"- peers: {m['peers']}",
           f"- load: {m.get('load', '')}", ""]
    if r.get("tiny"):
        out.append("**Smoke-test sizes (`--tiny`): these figures mean nothing.**\n")
    if "big" in r:
        out += big_section(r["big"], bars)
    if "small" in r:
        s = r["small"]
        out += [f"## {s['count']:,} files of 100 KiB on loopback\n", when(s),
                "ferry: `ferry run` on a spool holding all of them (durable state as usual, "
                "after_upload = delete, concurrency 1; `ferry c=4`: concurrency 4, once), timed "
                "until the spool is empty; the others: "
                "sequential uploads in one process (curl: a shell loop of one POST and one PATCH per "
                "file). ferry and tus-js-client run in alternating rounds, each run on a fresh "
                "@tus/server; their rows are the median runs; curl and tuspy run once. "
                "Target for ferry: ≥ 2× tus-js-client.\n"]
        out += small_section(s, bars, f"{s['count']:,} small files on loopback: files/s × tus-js-client (higher is better)")
        out += small_rounds(s)
    if "cuts" in r:
        out += cuts_section(r["cuts"], bars)
    if "shaped" in r:
        out += shaped_section(r["shaped"], bars)
        out.append("Issue 16's target on the cellular-good link: ferry's small files ≥ 3× tus-js-client "
                   "(compare the link's ceiling under its table).\n")
    out += ["## TLS on ARM\n"]
    if a.tls and Path(a.tls).is_file():
        out += ["`cargo bench --bench tls_arm` (ARM builds under qemu-user):\n", "```",
                Path(a.tls).read_text().rstrip(), "```", ""]
    else:
        out += ["Not run: it needs the ARM binaries (`scripts/dist armv7-unknown-linux-gnueabihf "
                "arm-unknown-linux-musleabihf`) and qemu-user-static; then `scripts/bench "
                "--sections tls` (or `cargo bench --bench tls_arm`). The last figures are in "
                "CONTRIBUTING.md's Benchmarks section.\n"]
    out += ["## Idle cost\n"]
    if a.idle and Path(a.idle).is_file():
        out += ["From `cargo bench --bench daemon` (its [1] rows; ratio over an idle @tus/server):\n",
                "```", Path(a.idle).read_text().rstrip(), "```", ""]
    else:
        out += ["Not run in this pass: `scripts/bench --sections idle`.\n"]
    Path(a.out).write_text("\n".join(out))
    svg(bars, Path(a.svg))


if __name__ == "__main__":
    main()
