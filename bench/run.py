"""One command for the whole benchmark:

    python -m bench.run [--quick] [--out docs/benchmarks.md]

Starts, as separate processes on free 127.0.0.1 ports: a fake SES per relay (tests/fakes/fake_ses.py),
the relay (`python -m relay serve`) at fake-SES latency 0 ms and 30 ms, a bare aiosmtpd server and a
private Postfix instance that queues and never delivers. Postfix's smtp-source loads them (one
connection per message, as most applications send), interleaved so that every repeat of every point
is measured minutes apart at most, and ratios are taken between systems of the same run.

Writes bench/results/<timestamp>.json (raw) and the markdown report (default docs/benchmarks.md) with
the throughput plot docs/benchmarks-throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.systems import BareSystem, PostfixSystem, RelaySystem, System

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
RESULTS = procs.REPO / "bench" / "results"
SIZE = 2048  # body bytes per message (smtp-source -l); headers add ~150 bytes
SIZE_40MB = 40_000_000
CONCURRENCY = (1, 10, 50)

TARGETS = {
    "ratio_c10_vs_bare": (">=", 0.70, "relay c10 (fake SES 0 ms) ÷ bare aiosmtpd c10, msgs/s"),
    "ratio_c50_30ms_vs_0ms": (">=", 0.85, "relay c50: fake SES 30 ms ÷ 0 ms, msgs/s"),
    "cpu_us_per_msg": ("<=", 700.0, "relay CPU (user+sys) per message at c10, fake SES 0 ms, µs"),
    "peak_rss_c50_mb": ("<=", 60.0, "relay peak RSS (VmHWM) after the c1/c10/c50 runs, MB"),
    "rss_40mb_multiple": ("<=", 2.5, "one 40 MB message: relay peak RSS over idle ÷ message size"),
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ load runs


def smtp_source(port: int, sessions: int, count: int, size: int = SIZE, keepalive: bool = False) -> dict:
    args = [
        SMTP_SOURCE,
        "-m",
        str(count),
        "-s",
        str(sessions),
        "-l",
        str(size),
        "-f",
        "from@example.com",
        "-t",
        "to@example.org",
        "-M",
        "client.bench.local",
    ]
    if keepalive:
        args.insert(1, "-d")
    started = time.perf_counter()
    proc = subprocess.run([*args, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rc": proc.returncode, "stderr": proc.stderr.strip()[-500:]}


def measure(system: System, sessions: int, count: int, keepalive: bool = False) -> dict:
    cpu0, acc0 = system.cpu(), system.accepted()
    run = smtp_source(system.port, sessions, count, keepalive=keepalive)
    cpu1, acc1 = system.cpu(), system.accepted()
    point = {
        "system": system.name,
        "concurrency": sessions,
        "keepalive": keepalive,
        "messages": count,
        "seconds": round(run["seconds"], 4),
        "msgs_per_s": round(count / run["seconds"], 2),
        "rc": run["rc"],
    }
    if run["rc"] != 0:
        point["error"] = run["stderr"]
    if cpu0 is not None and cpu1 is not None:
        point["cpu_s"] = round(cpu1 - cpu0, 4)
        point["cpu_us_per_msg"] = round((cpu1 - cpu0) / count * 1e6, 1)
    if acc0 is not None and acc1 is not None:
        point["accepted_2xx"] = acc1 - acc0
    return point


def stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"min": None, "median": None, "max": None, "n": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


# ------------------------------------------------------------------------------------ 40 MB message


def big_message(workdir: Path, repeats: int) -> list[dict]:
    out = []
    for i in range(repeats):
        relay = RelaySystem(f"relay-40mb-{i}", workdir, latency=0.0)
        relay.start()
        try:
            warm = subprocess.run(
                [sys.executable, "-m", "bench.load", "--port", str(relay.port), "--count", "3"],
                cwd=procs.REPO,
                env=procs.python_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            time.sleep(0.5)
            idle_kb, hwm_before = relay.rss_kb(), relay.hwm_kb()
            res = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.load",
                    "--port",
                    str(relay.port),
                    "--count",
                    "1",
                    "--size",
                    str(SIZE_40MB),
                ],
                cwd=procs.REPO,
                env=procs.python_env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            result = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}
            hwm_kb = relay.hwm_kb()
            msg_bytes = SIZE_40MB
            over = (hwm_kb - idle_kb) * 1024
            out.append(
                {
                    "idle_rss_mb": round(idle_kb / 1024, 1),
                    "hwm_before_mb": round(hwm_before / 1024, 1),
                    "peak_rss_mb": round(hwm_kb / 1024, 1),
                    "over_idle_mb": round(over / 2**20, 1),
                    "multiple": round(over / msg_bytes, 2),
                    "seconds": round(result.get("seconds", 0), 2),
                    "replies": result.get("replies"),
                    "warmup_replies": json.loads(warm.stdout.strip().splitlines()[-1]).get("replies")
                    if warm.returncode == 0
                    else None,
                }
            )
            log(f"40 MB message #{i + 1}: {out[-1]}")
        finally:
            relay.stop()
    return out


# ------------------------------------------------------------------------------------ the run


def run(quick: bool) -> dict:
    repeats = 3
    seconds_per_point = 1.0 if quick else 4.0
    workdir = Path(tempfile.mkdtemp(prefix="ses-relay-bench-"))
    workdir.chmod(0o755)  # Postfix's daemons run as user postfix and must reach their queue below it
    log(f"workdir {workdir}")

    relay0 = RelaySystem("relay-0ms", workdir, latency=0.0)
    relay30 = RelaySystem("relay-30ms", workdir, latency=0.030)
    bare = BareSystem("bare-aiosmtpd", workdir)
    postfix = PostfixSystem("postfix", workdir)
    main_systems: list[System] = [relay0, relay30, bare, postfix]
    # extra points (default mode only): what per-transaction info logging and uvloop cost or save,
    # and connection reuse (smtp-source -d: all messages of a session over one connection)
    extras: list[tuple[System, int, bool]] = []
    extra_systems: list[System] = []
    if not quick:
        relay_info = RelaySystem("relay-0ms-info-log", workdir, latency=0.0, log_level="info")
        relay_uv = RelaySystem("relay-0ms-uvloop", workdir, latency=0.0, uvloop=True)
        bare_uv = BareSystem("bare-aiosmtpd-uvloop", workdir, uvloop=True)
        relay_nocache = RelaySystem("relay-0ms-nocache", workdir, latency=0.0, suppression_cache=False)
        extra_systems = [relay_info, relay_uv, bare_uv, relay_nocache]
        extras = [
            (relay_info, 10, False),
            (relay_nocache, 10, False),
            (relay_uv, 10, False),
            (relay_uv, 50, False),
            (bare_uv, 10, False),
            (relay0, 10, True),
            (bare, 10, True),
        ]

    started = time.time()
    points: list[dict] = []
    postfix_error = None
    try:
        for system in main_systems + extra_systems:
            log(f"starting {system.name} on port {system.port}")
            try:
                system.start()
            except Exception as exc:  # noqa: BLE001 - postfix may be unavailable; recorded, not fatal
                if system is postfix:
                    postfix_error = f"{type(exc).__name__}: {exc}"
                    log(f"postfix baseline unavailable: {postfix_error}")
                    main_systems.remove(postfix)
                else:
                    raise
        # rate estimate per (system, c, keepalive) from a short warm-up, to size each point to ~N seconds
        plan = [(s, c, False) for c in CONCURRENCY for s in main_systems] + extras
        rate: dict[tuple[str, int, bool], float] = {}
        for system, c, keep in plan:
            warm = measure(system, c, max(20, 2 * c), keep)
            rate[(system.name, c, keep)] = warm["msgs_per_s"]
            log(f"warm-up {system.name} c{c}{' keepalive' if keep else ''}: {warm['msgs_per_s']} msgs/s")
        for rep in range(repeats):
            for system, c, keep in plan:
                count = int(min(20000, max(3 * c, 20, rate[(system.name, c, keep)] * seconds_per_point)))
                point = measure(system, c, count, keep)
                point["repeat"] = rep
                points.append(point)
                log(
                    f"rep {rep + 1} {system.name} c{c}{' keepalive' if keep else ''}: "
                    f"{point['msgs_per_s']} msgs/s, {point.get('cpu_us_per_msg', '-')} µs CPU/msg"
                    + (f" ERROR rc={point['rc']} {point.get('error')}" if point["rc"] else "")
                )
        rss = {}
        for relay in [relay0, relay30] + [s for s in extra_systems if isinstance(s, RelaySystem)]:
            rss[relay.name] = {
                "peak_rss_mb": round(relay.hwm_kb() / 1024, 1),
                "rss_now_mb": round(relay.rss_kb() / 1024, 1),
            }
        load_seconds = time.time() - started
    finally:
        for system in main_systems + extra_systems:
            try:
                system.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"stopping {system.name}: {exc}")
    fake_counts = {s.name: s.fake.counts for s in main_systems + extra_systems if isinstance(s, RelaySystem)}
    big = big_message(workdir, 1 if quick else 3)
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "mode": "quick" if quick else "default",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "load_duration_s": round(load_seconds, 1),
        "machine": machine_info(),
        "message_size": SIZE,
        "seconds_per_point": seconds_per_point,
        "repeats": repeats,
        "points": points,
        "rss": rss,
        "big_message": big,
        "fake_ses_counts": fake_counts,
        "postfix_error": postfix_error,
        "postfix_queued": getattr(postfix, "queued", None),
    }


def machine_info() -> dict:
    import aiohttp
    import aiosmtpd

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    postconf = subprocess.run(["postconf", "-d", "mail_version"], capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiosmtpd": aiosmtpd.__version__,
        "aiohttp": aiohttp.__version__,
        "postfix": postconf.stdout.strip().split("=")[-1].strip(),
    }


# ------------------------------------------------------------------------------------ analysis


def summarise(data: dict) -> dict:
    points = data["points"]
    groups: dict[tuple[str, int, bool], list[dict]] = {}
    for p in points:
        groups.setdefault((p["system"], p["concurrency"], p["keepalive"]), []).append(p)
    table = {}
    for (name, c, keep), ps in groups.items():
        table[f"{name}|{c}|{int(keep)}"] = {
            "system": name,
            "concurrency": c,
            "keepalive": keep,
            "msgs_per_s": stats([p["msgs_per_s"] for p in ps]),
            "cpu_us_per_msg": stats([p.get("cpu_us_per_msg") for p in ps]),
            "errors": sum(1 for p in ps if p["rc"] != 0),
            "accepted_ok": all(p.get("accepted_2xx", p["messages"]) == p["messages"] for p in ps),
        }

    def per_rep(name: str, c: int, keep: bool = False) -> dict[int, float]:
        return {p["repeat"]: p["msgs_per_s"] for p in groups.get((name, c, keep), [])}

    def paired(a: tuple, b: tuple) -> dict:
        ra, rb = per_rep(*a), per_rep(*b)
        return stats([ra[r] / rb[r] for r in ra if r in rb and rb[r]])

    ratios = {
        "ratio_c10_vs_bare": paired(("relay-0ms", 10), ("bare-aiosmtpd", 10)),
        "ratio_c50_30ms_vs_0ms": paired(("relay-30ms", 50), ("relay-0ms", 50)),
    }
    extra_ratios = {}
    for c in CONCURRENCY:
        extra_ratios[f"relay-0ms ÷ bare-aiosmtpd, c{c}"] = paired(("relay-0ms", c), ("bare-aiosmtpd", c))
        extra_ratios[f"relay-0ms ÷ postfix, c{c}"] = paired(("relay-0ms", c), ("postfix", c))
        extra_ratios[f"relay-30ms ÷ relay-0ms, c{c}"] = paired(("relay-30ms", c), ("relay-0ms", c))
    extra_ratios["relay-0ms info log ÷ warning log, c10"] = paired(
        ("relay-0ms-info-log", 10), ("relay-0ms", 10)
    )
    extra_ratios["relay-0ms no lookup cache ÷ cache, c10"] = paired(
        ("relay-0ms-nocache", 10), ("relay-0ms", 10)
    )
    extra_ratios["relay-0ms no lookup cache ÷ bare aiosmtpd, c10"] = paired(
        ("relay-0ms-nocache", 10), ("bare-aiosmtpd", 10)
    )
    extra_ratios["relay-0ms uvloop ÷ asyncio, c10"] = paired(("relay-0ms-uvloop", 10), ("relay-0ms", 10))
    extra_ratios["relay-0ms uvloop ÷ asyncio, c50"] = paired(("relay-0ms-uvloop", 50), ("relay-0ms", 50))
    extra_ratios["bare aiosmtpd uvloop ÷ asyncio, c10"] = paired(
        ("bare-aiosmtpd-uvloop", 10), ("bare-aiosmtpd", 10)
    )
    extra_ratios["relay-0ms keepalive ÷ bare keepalive, c10"] = paired(
        ("relay-0ms", 10, True), ("bare-aiosmtpd", 10, True)
    )
    extra_ratios["relay-0ms keepalive ÷ connection per message, c10"] = paired(
        ("relay-0ms", 10, True), ("relay-0ms", 10)
    )
    extra_ratios = {k: v for k, v in extra_ratios.items() if v["n"]}

    cpu = table.get("relay-0ms|10|0", {}).get("cpu_us_per_msg", stats([]))
    peak = stats([data["rss"][n]["peak_rss_mb"] for n in ("relay-0ms", "relay-30ms") if n in data["rss"]])
    big = stats([b["multiple"] for b in data["big_message"] if b.get("replies", {}).get("2xx") == 1])
    measured = {**ratios, "cpu_us_per_msg": cpu, "peak_rss_c50_mb": peak, "rss_40mb_multiple": big}
    verdicts = {}
    for key, (op, target, text) in TARGETS.items():
        s = measured[key]
        # ratios and throughput: judged on the median; CPU and memory: on the median, worst also shown
        value = s["median"]
        if value is None:
            verdicts[key] = {"target": target, "op": op, "text": text, "stats": s, "verdict": "not measured"}
            continue
        ok = value >= target if op == ">=" else value <= target
        if ok:
            margin = ""
        elif op == ">=":
            margin = f"{(1 - value / target) * 100:.0f}% below target"
        else:
            margin = f"{(value / target - 1) * 100:.0f}% over target"
        verdicts[key] = {
            "target": target,
            "op": op,
            "text": text,
            "stats": s,
            "verdict": "pass" if ok else "miss",
            "margin": margin,
        }
    return {"table": table, "ratios": ratios, "extra_ratios": extra_ratios, "verdicts": verdicts}


# ------------------------------------------------------------------------------------ report


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def plot(data: dict, summary: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    styles = {"relay-0ms": "o-", "relay-30ms": "s-", "bare-aiosmtpd": "^--", "postfix": "d--"}
    for name, style in styles.items():
        rows = [summary["table"].get(f"{name}|{c}|0") for c in CONCURRENCY]
        if not all(rows):
            continue
        med = [r["msgs_per_s"]["median"] for r in rows]
        low = [m - r["msgs_per_s"]["min"] for m, r in zip(med, rows, strict=False)]
        high = [r["msgs_per_s"]["max"] - m for m, r in zip(med, rows, strict=False)]
        label = {
            "relay-0ms": "relay (fake SES 0 ms)",
            "relay-30ms": "relay (fake SES 30 ms)",
            "bare-aiosmtpd": "bare aiosmtpd (250 at once)",
            "postfix": "Postfix (queue only)",
        }[name]
        ax.errorbar(CONCURRENCY, med, yerr=[low, high], fmt=style, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    ax.set_xlabel("concurrent SMTP sessions (smtp-source -s, one connection per message)")
    ax.set_ylabel("messages/s (median, min–max bars)")
    ax.set_title(f"Throughput, 2 KB messages, {data['machine']['nproc']} cores, same run")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def report(data: dict, summary: dict, out: Path, json_path: Path, command: str) -> str:
    m = data["machine"]
    png = out.with_name(out.stem + "-throughput.png")
    has_plot = plot(data, summary, png)
    L: list[str] = []
    L += ["# Benchmarks", ""]
    L += ["Generated by the benchmark harness (`bench/`); do not edit by hand: rerun it.", ""]
    L += ["```", command, "```", ""]
    L += [
        f"Run {data['started']}, mode **{data['mode']}**, {data['duration_s']} s in all. "
        f"Raw results: `{json_path.relative_to(procs.REPO)}`.",
        "",
    ]
    L += [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {m['platform']}; "
        f"aiosmtpd {m['aiosmtpd']}, aiohttp {m['aiohttp']}, Postfix {m['postfix']}.",
        "",
    ]
    L += ["## Method", ""]
    L += [
        "* Every process is separate: load generator (Postfix `smtp-source`, C), one fake SES per relay "
        "(`python -m tests.fakes.fake_ses`, aiohttp), and each system under test, all on 127.0.0.1. "
        "On a 2-core machine the load generator and the fake SES share the core the system under test "
        "does not use, so absolute numbers are low; compare the **same-run ratios**, which pair "
        "repeat *r* of one system with repeat *r* of the other (points are interleaved: every repeat "
        "runs each system/concurrency once, in turn). Run-to-run noise on this machine is about ±20%.",
        "* Systems: **relay** (`python -m relay serve`, logging `warning`, SQLite suppression store "
        "pre-filled with 10,000 addresses, `ses.max_send_rate: null`, fake SES answering after 0 ms or "
        "30 ms); **bare aiosmtpd** (`bench/bare_aiosmtpd.py`: same aiosmtpd, same `SMTP()` arguments "
        "and loop setup, `handle_DATA` answers `250 OK` at once: the ceiling for anything built on "
        "aiosmtpd); **Postfix** (a private instance, `postfix -c`, that writes every message to its own "
        "queue and never delivers it: `defer_transports = smtp`, relayhost a closed port).",
        f"* Load: `smtp-source -s C -m N -l {SIZE} -f from@example.com -t to@example.org` "
        "(HELO, one message per connection, as applications that send one mail at a time do; "
        "`smtp-source` writes From:/To:/Date:/Message-Id: headers, so the relay accepts it). N is sized "
        f"from a warm-up run so that each point lasts about {data['seconds_per_point']} s; "
        f"{data['repeats']} repeats per point.",
        "* CPU per message: user+sys of the system's process(es) from `/proc/PID/stat` across the point "
        "÷ messages (Postfix: master + children, reaped children included). Peak RSS: `VmHWM` of the "
        "relay process after all its runs (c50 is its heaviest load). 40 MB message: a fresh relay, "
        "3 small warm-up messages, then `VmRSS` (idle), then one 40,000,000-byte message with "
        "`bench/load.py`; peak over idle = `VmHWM` − idle `VmRSS`.",
        '* Every relay point is checked against the relay\'s own `ses_relay_smtp_transactions_total{result="2xx"}`; '
        "`smtp-source` stops at the first non-2xx reply, so an error shows as a failed point.",
        "",
    ]
    if data.get("postfix_error"):
        L += [f"**Postfix baseline left out**: it did not start: `{data['postfix_error']}`.", ""]

    L += ["## Targets (issue 5)", ""]
    L += [
        "| measure | target | min | median | max | median ÷ target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, v in summary["verdicts"].items():
        s = v["stats"]
        digits = 0 if key == "cpu_us_per_msg" else 2
        ratio = fmt(s["median"] / v["target"], 2) if s["median"] is not None else "–"
        verdict = v["verdict"] + (f" ({v['margin']})" if v.get("margin") else "")
        L.append(
            f"| {v['text']} | {v['op']} {v['target']} | {fmt(s['min'], digits)} | {fmt(s['median'], digits)} "
            f"| {fmt(s['max'], digits)} | {ratio} | **{verdict}** |"
        )
    L += [
        "",
        "Ratios are per-repeat pairs (relay repeat *r* ÷ baseline repeat *r*); min/median/max over "
        "the repeats. Peak RSS: min/median/max over the two relays (fake SES 0 ms and 30 ms).",
        "",
    ]

    L += ["## Throughput (msgs/s) and CPU per message", ""]
    if has_plot:
        L += [f"![throughput vs concurrency]({png.name})", ""]
    L += [
        "| system | sessions | connection | msgs/s min | median | max | CPU µs/msg (median) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = [
        "relay-0ms",
        "relay-30ms",
        "bare-aiosmtpd",
        "postfix",
        "relay-0ms-info-log",
        "relay-0ms-nocache",
        "relay-0ms-uvloop",
        "bare-aiosmtpd-uvloop",
    ]
    rows = sorted(
        summary["table"].values(),
        key=lambda r: (
            r["keepalive"],
            order.index(r["system"]) if r["system"] in order else 99,
            r["concurrency"],
        ),
    )
    for r in rows:
        t, cpu = r["msgs_per_s"], r["cpu_us_per_msg"]
        errs = r["errors"] + (0 if r["accepted_ok"] else 1)
        L.append(
            f"| {r['system']} | {r['concurrency']} | {'kept (-d)' if r['keepalive'] else 'one per message'} "
            f"| {fmt(t['min'])} | {fmt(t['median'])} | {fmt(t['max'])} | {fmt(cpu['median'], 0)} | {errs} |"
        )
    L += [
        "",
        "CPU µs/msg for the relay counts the relay process only (its SQLite worker thread included), "
        "not the fake SES; for Postfix it counts all its daemons (smtpd, cleanup, qmgr, ...).",
        "",
    ]

    L += ["## Same-run ratios", "", "| ratio | min | median | max |", "|---|---|---|---|"]
    for k, s in {
        **{TARGETS[k][2]: v for k, v in summary["ratios"].items()},
        **summary["extra_ratios"],
    }.items():
        L.append(f"| {k} | {fmt(s['min'], 2)} | {fmt(s['median'], 2)} | {fmt(s['max'], 2)} |")
    L += [""]

    L += ["## Memory", "", "| relay | peak RSS (VmHWM) MB | RSS at end MB |", "|---|---|---|"]
    for name, r in data["rss"].items():
        L.append(f"| {name} | {r['peak_rss_mb']} | {r['rss_now_mb']} |")
    L += [
        "",
        "One 40 MB message (40,000,000 bytes of body), fresh relay each time:",
        "",
        "| # | idle RSS MB | peak RSS MB | peak over idle MB | ÷ message size | seconds | replies |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, b in enumerate(data["big_message"], 1):
        L.append(
            f"| {i} | {b['idle_rss_mb']} | {b['peak_rss_mb']} | {b['over_idle_mb']} | {b['multiple']} "
            f"| {b['seconds']} | {b['replies']} |"
        )
    L += [""]
    if data.get("fake_ses_counts"):
        L += [
            "Fake SES request counts (each relay's own fake, warm-ups included): "
            + ", ".join(f"{k} {v}" for k, v in data["fake_ses_counts"].items())
            + ".",
            "",
        ]
    notes = procs.REPO / "bench" / "profile_notes.md"
    if notes.exists():
        L += [notes.read_text().rstrip(), ""]
    text = "\n".join(L) + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short points, no extra variants (≤ 2 minutes)")
    parser.add_argument("--out", type=Path, default=procs.REPO / "docs" / "benchmarks.md")
    parser.add_argument("--from-json", type=Path, help="only rebuild the report from a saved results file")
    args = parser.parse_args(argv)
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    if args.out != procs.REPO / "docs" / "benchmarks.md":
        command += f" --out {args.out}"
    if not shutil.which(SMTP_SOURCE) and not Path(SMTP_SOURCE).exists():
        print("smtp-source not found: install postfix (it ships /usr/sbin/smtp-source)", file=sys.stderr)
        return 2
    if args.from_json:
        json_path = args.from_json.resolve()
        data = json.loads(json_path.read_text())
    else:
        data = run(args.quick)
        RESULTS.mkdir(parents=True, exist_ok=True)
        json_path = RESULTS / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
        json_path.write_text(json.dumps(data, indent=1))
    summary = summarise(data)
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    report(data, summary, out, json_path, command)
    for key, v in summary["verdicts"].items():
        log(
            f"{key}: median {v['stats']['median']} target {v['op']} {v['target']}: {v['verdict']} {v.get('margin', '')}"
        )
    log(f"wrote {json_path} and {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
