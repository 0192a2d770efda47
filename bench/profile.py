"""Where the relay's CPU goes under load: py-spy samples a relay (fake SES 0 ms) under smtp-source load.

    python -m bench.profile [--sessions 10] [--seconds 20] [--uvloop] [--keepalive] [--mode spool]

Prints the top functions by inclusive and self share of the relay's samples, and the share of a few
buckets (aiosmtpd protocol, handler, SigV4, aiohttp client, logging, metrics, sqlite hop, ...).
Needs py-spy (pip install py-spy) and ptrace permission.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import SMTP_SOURCE
from bench.systems import RelaySystem

BUCKETS = [  # (bucket, regex on "function (file)" frames); first match from the leaf up wins
    ("SigV4 signing (botocore.auth / AWSRequest)", r"botocore/(auth|awsrequest|utils|compat)\.py"),
    (
        "aiohttp client (request/response)",
        r"aiohttp/(client|client_reqrep|connector|http_writer|client_proto|helpers|streams|http_parser|multipart|payload|_websocket|tracing|cookiejar)",
    ),
    ("spool (store, delivery, sqlite)", r"relay/spool/"),
    ("message trace", r"relay/trace/"),
    ("logging", r"logging/|relay/logs\.py"),
    ("metrics (prometheus_client)", r"prometheus_client/"),
    ("sqlite lookup (worker thread + hop)", r"relay/suppression/sqlite\.py|concurrent/futures|threading\.py"),
    ("message.prepare (header scan)", r"relay/message\.py"),
    ("request body (json + base64)", r"json/|base64\.py|build_request_body"),
    ("address checks", r"relay/addresses\.py"),
    ("relay handler / server glue", r"relay/smtp/(handler|server)\.py|relay/ses/client\.py"),
    ("aiosmtpd protocol", r"aiosmtpd/"),
    ("asyncio event loop / transports", r"asyncio/|uvloop"),
]


def aggregate(raw: Path, top: int = 35) -> str:
    inclusive: collections.Counter = collections.Counter()
    selfc: collections.Counter = collections.Counter()
    buckets: collections.Counter = collections.Counter()
    total = 0
    compiled = [(name, re.compile(rx)) for name, rx in BUCKETS]
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        seen = set()
        for f in frames:
            key = re.sub(r":\d+\)", ")", f)  # fold line numbers
            if key not in seen:
                inclusive[key] += n
                seen.add(key)
        selfc[re.sub(r":\d+\)", ")", frames[-1])] += n
        for f in reversed(frames):
            for name, rx in compiled:
                if rx.search(f):
                    buckets[name] += n
                    break
            else:
                continue
            break
        else:
            buckets["other"] += n
    out = [f"samples: {total}", "", "bucket (leaf-most matching frame) | share", "---|---"]
    for name, n in buckets.most_common():
        out.append(f"{name} | {n / total * 100:.1f}%")
    out += ["", "inclusive | function", "---|---"]
    for key, n in inclusive.most_common(top):
        out.append(f"{n / total * 100:5.1f}% | `{key}`")
    out += ["", "self | function", "---|---"]
    for key, n in selfc.most_common(top):
        out.append(f"{n / total * 100:5.1f}% | `{key}`")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--keepalive", action="store_true")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--latency", type=float, default=0.0, help="fake SES answer delay, seconds")
    parser.add_argument("--raw-out", type=Path, default=None)
    parser.add_argument("--mode", choices=("direct", "spool", "fallback"), default="direct",
                        help="delivery.mode of the profiled relay")
    args = parser.parse_args()
    if not shutil.which("py-spy"):
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="ses-relay-profile-"))
    relay = RelaySystem("relay-profile", workdir, latency=args.latency, uvloop=args.uvloop, mode=args.mode)
    relay.start()
    raw = args.raw_out or workdir / "stacks.txt"
    try:
        load = subprocess.Popen(
            [
                SMTP_SOURCE,
                *(["-d"] if args.keepalive else []),
                "-m",
                "1000000",
                "-s",
                str(args.sessions),
                "-l",
                "2048",
                "-f",
                "from@example.com",
                "-t",
                "to@example.org",
                f"127.0.0.1:{relay.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
        acc0, cpu0 = relay.accepted(), relay.cpu()
        t0 = time.perf_counter()
        subprocess.run(
            [
                "py-spy",
                "record",
                "--pid",
                str(relay.pid()),
                "--duration",
                str(args.seconds),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        acc1, cpu1, dt = relay.accepted(), relay.cpu(), time.perf_counter() - t0
        load.terminate()
        load.wait()
        msgs = acc1 - acc0
        print(
            f"{msgs} messages in {dt:.1f} s = {msgs / dt:.0f} msgs/s; relay CPU {cpu1 - cpu0:.2f} s = "
            f"{(cpu1 - cpu0) / msgs * 1e6:.0f} µs/msg (while sampled with --nonblocking)"
        )
        print(aggregate(raw))
    finally:
        relay.stop()
        if args.raw_out is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
