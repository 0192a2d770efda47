"""Paired A/B runs of relay variants under the same load, interleaved, in one run.

    python -m bench.compare --variant base=/work/main --variant exp=/tmp/relay-exp \\
        [--variant 'exp-nosig=/tmp/relay-exp:EXP_FAST_SIGV4=0'] [--variant uv=/work/main:uvloop] \\
        [--variant sp=/tmp/relay-exp:mode=spool] [--variant postfix] [--variant bare] \\
        [--sessions 10] [--repeats 3] [--seconds 4] [--keepalive]

A variant is NAME=SOURCE_DIR[:KEY=VALUE,...][:uvloop][:mode=spool|fallback], `postfix` (the
bench's private Postfix, accepting into its own queue) or `bare` (bare aiosmtpd, answering 250 at once). The first variant is the reference: prints
msgs/s and CPU µs/msg (min/median/max) per variant and its per-repeat paired ratio to the reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.run import log, measure, stats
from bench.systems import BareSystem, PostfixSystem, RelaySystem, System


def parse_variant(text: str, workdir: Path) -> System:
    if text == "postfix":
        return PostfixSystem("postfix", workdir)
    if text == "bare":
        return BareSystem("bare-aiosmtpd", workdir)
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    source = Path(parts[0]).resolve()
    env: dict[str, str] = {}
    uvloop = False
    mode = "direct"
    for extra in parts[1:]:
        if extra == "uvloop":
            uvloop = True
        elif extra.startswith("mode="):
            mode = extra.removeprefix("mode=")
        elif extra:
            for pair in extra.split(","):
                k, _, v = pair.partition("=")
                env[k] = v
    return RelaySystem(name, workdir, latency=0.0, uvloop=uvloop, source=source, env=env, mode=mode)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--keepalive", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ses-relay-compare-"))
    workdir.chmod(0o755)  # a Postfix variant's daemons run as user postfix and must reach their queue
    systems = [parse_variant(v, workdir) for v in args.variant]
    points: dict[str, list[dict]] = {s.name: [] for s in systems}
    try:
        for s in systems:
            s.start()
        rate = {}
        for s in systems:
            rate[s.name] = measure(s, args.sessions, max(40, 3 * args.sessions), args.keepalive)["msgs_per_s"]
        count = int(statistics.median(rate.values()) * args.seconds)  # same N for every variant
        for rep in range(args.repeats):
            order = systems if rep % 2 == 0 else systems[::-1]  # alternate order against drift
            for s in order:
                p = measure(s, args.sessions, count, args.keepalive)
                points[s.name].append(p)
                log(
                    f"rep {rep + 1} {s.name}: {p['msgs_per_s']} msgs/s {p.get('cpu_us_per_msg')} µs/msg rc={p['rc']}"
                )
    finally:
        for s in systems:
            s.stop()
    ref = systems[0].name
    print(
        f"\nc{args.sessions}{' keepalive' if args.keepalive else ''}, {count} msgs/point, {args.repeats} repeats"
    )
    print(
        "| variant | msgs/s min / median / max | CPU µs/msg median | throughput ÷ ref (paired) | CPU ÷ ref (paired) |"
    )
    print("|---|---|---|---|---|")
    for s in systems:
        ps = points[s.name]
        t = stats([p["msgs_per_s"] for p in ps])
        c = stats([p.get("cpu_us_per_msg") for p in ps])
        rt = stats([a["msgs_per_s"] / b["msgs_per_s"] for a, b in zip(ps, points[ref], strict=False)])
        rc = stats([a["cpu_us_per_msg"] / b["cpu_us_per_msg"] for a, b in zip(ps, points[ref], strict=False)])
        print(
            f"| {s.name} | {t['min']:.0f} / {t['median']:.0f} / {t['max']:.0f} | {c['median']:.0f} "
            f"| {rt['median']:.2f} ({rt['min']:.2f}–{rt['max']:.2f}) | {rc['median']:.2f} ({rc['min']:.2f}–{rc['max']:.2f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
