"""The measured processes: the tus server, the four clients, the cutting proxy, the link.

Key idea: every client runs as one child process (curl: a shell loop of two curl processes per
file) and is measured from outside alike: wall time from spawn to exit (for `ferry run`: to the
spool being empty), CPU = user + system from wait4()'s rusage of that child (which includes its own reaped
children), and peak RSS = the largest VmHWM of the child and its descendants, polled from /proc
every 10 ms (ru_maxrss would not do: a child forked from this Python process inherits its
high-water mark across exec). Nothing is timed inside a client.
"""

import json
import os
import resource
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests/peers"
HARNESS = ROOT / "benches/harness"
PROXY_VARS = ["ALL_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "http_proxy", "https_proxy"]
NS_PORT = 1080


def clean_env() -> dict:
    env = dict(os.environ)
    for v in PROXY_VARS:
        env.pop(v, None)
    return env


def ns_prefix(ns):
    return ["ip", "netns", "exec", ns] if ns else []


@dataclass
class Measure:
    """One client run."""

    wall: float
    cpu: float
    rss_kib: int
    ok: bool
    note: str = ""
    extra: dict = field(default_factory=dict)


def spawn(cmd, ns=None, log=None, **kw):
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        ns_prefix(ns) + [str(c) for c in cmd],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=clean_env(), **kw
    )
    proc.rss_poller = RssPoller(proc.pid)
    return proc


def tree(pid: int):
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class RssPoller:
    """The largest VmHWM seen in a process tree, polled every 10 ms on a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.done.is_set():
            for p in tree(self.pid):
                self.peak = max(self.peak, vm_hwm_kib(p))
            time.sleep(0.01)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exited(proc) -> bool:
    """The child has exited (a zombie not yet reaped), without reaping it (reap() does)."""
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def reap(proc, timeout=None):
    """wait4() the child: (exit code, CPU s, peak RSS KiB); kills it after `timeout` s."""
    poller = getattr(proc, "rss_poller", None)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
        if pid == proc.pid:
            break
        if deadline and time.monotonic() > deadline:
            proc.kill()
            deadline = None
            continue
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = poller.stop() if poller else 0
    return proc.returncode, ru.ru_utime + ru.ru_stime, rss


class TusServer:
    """@tus/server + FileStore (tests/peers/tus-node-server.mjs), optionally in a namespace."""

    def __init__(self, data_dir: Path, ns=None):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        port = NS_PORT if ns else 0
        cmd = ns_prefix(ns) + ["node", str(PEERS / "tus-node-server.mjs"), "--dir", str(data_dir),
                               "--port", str(port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=clean_env(), cwd=PEERS)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"@tus/server did not start: {line!r}")
        self.endpoint = line.split(" ", 1)[1]
        self.port = int(self.endpoint.split(":")[2].split("/")[0])

    def stored(self):
        """(name, size) of every upload's data file."""
        return [(p.name, p.stat().st_size) for p in self.data_dir.iterdir()
                if not p.name.endswith(".json")]

    def stored_bytes(self) -> int:
        return sum(s for _, s in self.stored())

    def empty(self):
        for p in self.data_dir.iterdir():
            p.unlink()

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ferry_config(path: Path, endpoint: str, extra: str = "") -> Path:
    state = path.with_suffix(".state")
    path.write_text(f'state_dir = "{state}"\n[server]\nendpoint = "{endpoint}"\n{extra}')
    return path


def client_cmd(kind: str, endpoint: str, src: Path, work: Path, env: dict, retries: int):
    """The command uploading every file of `src` (a directory) with client `kind`."""
    if kind == "curl":
        return ["bash", HARNESS / "curl-upload.sh", endpoint, src]
    if kind == "tus-js-client":
        cmd = ["node", ROOT / "benches/tus-js-upload.mjs", "--endpoint", endpoint, "--dir", src,
               "--modules", PEERS / "node_modules"]
        return cmd + (["--retries", str(retries)] if retries else [])
    if kind == "tuspy":
        return [env["tuspy_python"], HARNESS / "tuspy_upload.py", "--endpoint", endpoint,
                "--dir", src, "--retries", str(retries)]
    raise ValueError(kind)


def run_client(kind, endpoint, src: Path, work: Path, env: dict, ns=None, retries=0,
               ferry_extra="", timeout=None) -> Measure:
    """Uploads the files of `src` with `kind`; ferry (`ferry upload`) takes them one by one."""
    log = work / f"{kind}.log"
    if kind == "ferry":
        files = sorted(p for p in src.iterdir() if p.is_file())
        cfg = ferry_config(work / f"ferry-{time.monotonic_ns()}.toml", endpoint, ferry_extra)
        cmd = [env["ferry"], "upload", "--config", cfg] + files
    else:
        cmd = client_cmd(kind, endpoint, src, work, env, retries)
    start = time.monotonic()
    proc = spawn(cmd, ns, log)
    code, cpu, rss = reap(proc, timeout)
    wall = time.monotonic() - start
    note = "" if code == 0 else f"exit {code}: " + tail(log)
    return Measure(wall, cpu, rss, code == 0, note)


def run_ferry_daemon(endpoint, src: Path, work: Path, env: dict, ns=None, concurrency=1,
                     timeout=None) -> Measure:
    """`ferry run` on a spool of hard links to `src`'s files, timed until the spool is empty."""
    spool = work / f"spool-{time.monotonic_ns()}"
    spool.mkdir()
    for p in sorted(src.iterdir()):
        os.link(p, spool / p.name)
    extra = (f'[spool]\ndir = "{spool}"\nafter_upload = "delete"\n'
             f"[daemon]\nconcurrency = {concurrency}\n")
    cfg = ferry_config(work / f"ferryd-{time.monotonic_ns()}.toml", endpoint, extra)
    log = work / "ferry-run.log"
    start = time.monotonic()
    proc = spawn([env["ferry"], "run", "--config", cfg], ns, log)
    ok, note = True, ""
    while any(True for _ in os.scandir(spool)):
        if exited(proc):
            ok, note = False, "ferry run exited: " + tail(log)
            break
        if timeout and time.monotonic() - start > timeout:
            ok, note = False, f"spool not empty after {timeout} s"
            break
        time.sleep(0.02)
    wall = time.monotonic() - start
    if not exited(proc):
        proc.send_signal(signal.SIGTERM)
    code, cpu, rss = reap(proc, 30)
    return Measure(wall, cpu, rss, ok, note)


def tail(path: Path, n=6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


class CutProxy:
    """A TCP forwarder that resets the connection each time `every` more bytes went upstream."""

    def __init__(self, upstream_port: int, every: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.every = every
        self.sent = 0
        self.cuts = 0
        self.next_cut = every
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            pair = (client, server)
            threading.Thread(target=self.pump, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, pair, False), daemon=True).start()

    def pump(self, src, dst, pair, upstream):
        try:
            while True:
                data = src.recv(1 << 18)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if upstream:
                    with self.lock:
                        self.sent += len(data)
                        cut = self.sent >= self.next_cut
                        if cut:
                            self.next_cut += self.every
                            self.cuts += 1
                    if cut:
                        self.cut(pair)
                        return
                dst.sendall(data)
        except OSError:
            for s in pair:
                try:
                    s.close()
                except OSError:
                    pass

    @staticmethod
    def cut(pair):
        """Resets both connections. shutdown() first: a close() alone would wait for the other
        pump's blocked recv() to return before the socket is released (and the server would
        hold the cut request, and its upload's lock, until then)."""
        for s in pair:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for s in pair:
            s.close()

    def close(self):
        self.listener.close()


class Namespace:
    """A network namespace whose loopback is shaped by shaper.py on port NS_PORT."""

    def __init__(self, name: str):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        ex = ["ip", "netns", "exec", name]
        subprocess.run(ex + ["ip", "link", "set", "lo", "mtu", "1500", "up"], check=True)
        subprocess.run(ex + ["ethtool", "-K", "lo", "tso", "off", "gso", "off", "gro", "off"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # INPUT, not OUTPUT: a packet held at OUTPUT still counts against its socket's TCP
        # small-queue budget, which then throttles the sender to a few packets per delay.
        for flag, queue in (("--dport", 0), ("--sport", 1)):
            subprocess.run(ex + ["iptables", "-A", "INPUT", "-i", "lo", "-p", "tcp", flag,
                                 str(NS_PORT), "-j", "NFQUEUE", "--queue-num", str(queue)],
                           check=True)
        self.shaper = None

    def shape(self, rate_bit, rtt_ms, loss=0.0, down_every=0, down_for=0, queue=100):
        self.unshape()
        cmd = ["ip", "netns", "exec", self.name, "python3", str(HARNESS / "shaper.py"),
               "--rate-bit", str(rate_bit), "--delay-ms", str(rtt_ms / 2), "--loss", str(loss),
               "--down-every", str(down_every), "--down-for", str(down_for),
               "--queue", str(queue)]
        # The shaper runs at the priority this harness was started with, less 10 if it can.
        self.shaper = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                       preexec_fn=lambda: _raise_priority(10))
        line = self.shaper.stdout.readline().decode().strip()
        if line != "READY":
            raise RuntimeError(f"shaper did not start: {line!r}")

    def down(self, is_down: bool):
        self.shaper.send_signal(signal.SIGUSR1 if is_down else signal.SIGUSR2)

    def unshape(self) -> dict:
        if not self.shaper:
            return {}
        self.shaper.send_signal(signal.SIGTERM)
        out = self.shaper.stdout.read().decode().strip()
        self.shaper.wait()
        self.shaper = None
        try:
            return json.loads(out.splitlines()[-1])
        except (ValueError, IndexError):
            return {}

    def delete(self):
        self.unshape()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _raise_priority(by: int):
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, os.getpriority(os.PRIO_PROCESS, 0) - by))
    except OSError:
        pass


def rusage_self_children():
    return resource.getrusage(resource.RUSAGE_CHILDREN)
