"""A userspace link emulator on NFQUEUE, for scripts/bench's shaped-link profiles.

Key idea: this kernel has no sch_netem, so the link is made in userspace (see
shared/reference/netem.md). Inside a network namespace, iptables sends every packet of the
server's port to NFQUEUE (queue UP for client->server, queue DOWN for server->client); this
program holds each one and gives its ACCEPT verdict at the moment the emulated link would
deliver it. Per direction: random loss at arrival, 100 % loss while the link is down, tail drop
when more than `--queue` packets wait for the serializer, then serialization at `--rate` after
the packets before it, then a fixed one-way `--delay` (RTT = 2 x delay). Verdicts may be given
out of order; the kernel releases each packet by its id.

Standard library only: nfnetlink's queue protocol spoken over an AF_NETLINK socket.

Usage (as root, inside the namespace):
  python3 shaper.py --rate-bit 10000000 --delay-ms 30 --loss 0.001 [--queue 100]
                    [--down-every 60 --down-for 10 --down-at 20] [--up-queue 0 --down-queue 1]
SIGUSR1 takes the link down, SIGUSR2 brings it back (for the outage profile). Prints
`READY` once bound, and on exit (SIGTERM) one JSON line of counters to stdout.
"""

import argparse
import heapq
import json
import random
import signal
import socket
import struct
import sys
import time
from collections import deque

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NF_DROP = 0
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NLMSG_HDR = struct.Struct("=IHHII")
NFGEN_HDR = struct.Struct("!BBH")
NLA_HDR = struct.Struct("=HH")
# Only the IP header is copied: its total-length field is the packet's size on the link.
COPY_RANGE = 64


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = NLA_HDR.pack(NLA_HDR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nfq_msg(msg: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    """An nfnetlink queue message (family AF_UNSPEC, version 0) for `queue`."""
    body = NFGEN_HDR.pack(socket.AF_UNSPEC, 0, queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def parse_attrs(buf: bytes, pos: int, end: int) -> dict:
    """Netlink attributes in buf[pos:end] as {type: payload}."""
    out = {}
    while pos + NLA_HDR.size <= end:
        length, kind = NLA_HDR.unpack_from(buf, pos)
        if length < NLA_HDR.size:
            break
        out[kind & 0x7FFF] = buf[pos + NLA_HDR.size : pos + length]
        pos += (length + 3) & ~3
    return out


class Direction:
    """One direction of the link: a serializer at `rate` followed by a fixed delay."""

    def __init__(self, rate_bit: float, delay: float, loss: float, queue: int):
        self.rate_bit = rate_bit
        self.delay = delay
        self.loss = loss
        self.queue = queue
        self.free_at = 0.0
        self.serializing = deque()  # end times of the packets still waiting or on the wire
        self.counts = {"accepted": 0, "lost": 0, "tail_dropped": 0, "down_dropped": 0, "bytes": 0}

    def arrive(self, now: float, size: int, down: bool, rng: random.Random):
        """When to release a packet of `size` bytes arriving at `now`, or None to drop it."""
        while self.serializing and self.serializing[0] <= now:
            self.serializing.popleft()
        if down:
            self.counts["down_dropped"] += 1
            return None
        if self.loss > 0 and rng.random() < self.loss:
            self.counts["lost"] += 1
            return None
        if len(self.serializing) >= self.queue:
            self.counts["tail_dropped"] += 1
            return None
        start = max(now, self.free_at)
        self.free_at = start + size * 8.0 / self.rate_bit
        self.serializing.append(self.free_at)
        self.counts["accepted"] += 1
        self.counts["bytes"] += size
        return self.free_at + self.delay


class Shaper:
    """The NFQUEUE socket, both directions, the link state and the verdict schedule."""

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        make = lambda: Direction(args.rate_bit, args.delay_ms / 1000.0, args.loss, args.queue)
        self.dirs = {args.up_queue: make(), args.down_queue: make()}
        self.forced_down = False
        self.start = time.monotonic()
        self.pending = []  # heap of (release time, seq, queue, packet id)
        self.seq = 0
        self.stop = False
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        try:  # SO_RCVBUFFORCE (33): root may exceed rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)
        except OSError:
            pass
        try:  # NETLINK_NO_ENOBUFS (SOL_NETLINK 270, option 5)
            self.sock.setsockopt(270, 5, 1)
        except OSError:
            pass
        self.sock.bind((0, 0))
        for q in self.dirs:
            self.config(q, nla(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
            self.config(q, nla(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET)))
            self.config(q, nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 8192)))

    def config(self, queue: int, attrs: bytes):
        """Sends a config message and fails loudly if the kernel refuses it."""
        self.sock.send(nfq_msg(NFQNL_MSG_CONFIG, queue, attrs))

    def link_down(self, now: float) -> bool:
        """Down when forced (SIGUSR1..SIGUSR2) or in a periodic outage: `down_for` s from
        `down_at` s after the start, then again every `down_every` s."""
        if self.forced_down:
            return True
        every, length = self.args.down_every, self.args.down_for
        if every > 0 and length > 0:
            return 0 <= (now - self.start - self.args.down_at) % every < length
        return False

    def verdict(self, queue: int, packet_id: int, accept: bool):
        hdr = struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet_id)
        self.sock.send(nfq_msg(NFQNL_MSG_VERDICT, queue, nla(NFQA_VERDICT_HDR, hdr)))

    def handle(self, buf: bytes):
        pos = 0
        now = time.monotonic()
        while pos + NLMSG_HDR.size <= len(buf):
            length, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(buf, pos)
            if length < NLMSG_HDR.size:
                break
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", buf, pos + NLMSG_HDR.size)
                if err != 0:
                    raise OSError(-err, "nfnetlink refused a message")
            elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                _fam, _ver, queue = NFGEN_HDR.unpack_from(buf, pos + NLMSG_HDR.size)
                attrs = parse_attrs(buf, pos + NLMSG_HDR.size + NFGEN_HDR.size, pos + length)
                (packet_id,) = struct.unpack_from("!I", attrs[NFQA_PACKET_HDR])
                payload = attrs.get(NFQA_PAYLOAD, b"")
                size = struct.unpack_from("!H", payload, 2)[0] if len(payload) >= 4 else 1500
                direction = self.dirs.get(queue)
                at = None
                if direction is not None:
                    at = direction.arrive(now, size, self.link_down(now), self.rng)
                if at is None:
                    self.verdict(queue, packet_id, False)
                else:
                    self.seq += 1
                    heapq.heappush(self.pending, (at, self.seq, queue, packet_id))
            pos += (length + 3) & ~3

    def release_due(self):
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            _at, _seq, queue, packet_id = heapq.heappop(self.pending)
            self.verdict(queue, packet_id, True)

    def run(self):
        print("READY", flush=True)
        while not self.stop:
            self.release_due()
            timeout = 0.05
            if self.pending:
                timeout = max(0.0, min(timeout, self.pending[0][0] - time.monotonic()))
            self.sock.settimeout(timeout if timeout > 0 else 0.0)
            try:
                buf = self.sock.recv(1 << 20)
            except (BlockingIOError, socket.timeout, InterruptedError):
                continue
            self.handle(buf)
        # Let everything still held through, so that no connection is left hanging.
        while self.pending:
            _at, _seq, queue, packet_id = heapq.heappop(self.pending)
            self.verdict(queue, packet_id, True)
        for q in self.dirs:
            self.config(q, nla(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)))
        counts = {("up" if q == self.args.up_queue else "down"): d.counts for q, d in self.dirs.items()}
        print(json.dumps(counts), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate-bit", type=float, required=True, help="link rate, bit/s")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay (RTT / 2)")
    ap.add_argument("--loss", type=float, default=0.0, help="random loss per packet, 0..1")
    ap.add_argument("--queue", type=int, default=100, help="packets waiting, tail drop beyond")
    ap.add_argument("--down-every", type=float, default=0.0, help="outage period, s")
    ap.add_argument("--down-at", type=float, default=20.0, help="first outage's start, s")
    ap.add_argument("--down-for", type=float, default=0.0, help="outage length per period, s")
    ap.add_argument("--up-queue", type=int, default=0)
    ap.add_argument("--down-queue", type=int, default=1)
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    shaper = Shaper(args)

    def on_signal(signum, _frame):
        if signum == signal.SIGUSR1:
            shaper.forced_down = True
        elif signum == signal.SIGUSR2:
            shaper.forced_down = False
        else:
            shaper.stop = True

    for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    shaper.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
