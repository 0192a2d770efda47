"""The systems under test, each a subprocess on a free 127.0.0.1 port, and their fake SES."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from bench import procs
from bench.postfix import PrivatePostfix
from testkit.postfix import wait_for_greeting

SUPPRESSED = 10_000  # rows pre-filled in each relay's suppression table
MAX_CONNECTIONS = 100  # smtp.max_connections of every bench relay: the relay's default
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def relay_env(source: Path | None = None, **extra: str) -> dict[str, str]:
    env = procs.python_env(source, **AWS_ENV, **extra)
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        env.pop(key, None)
    return env


class FakeSes:
    def __init__(self, workdir: Path, latency: float, args: list[str] | None = None) -> None:
        """`args`: more `python -m testkit.fake_ses` options, e.g. --max-rate 100 --rate-counts
        recipients, or --accepted-log PATH (one JSON line per accepted SendEmail: what SES received)."""
        self.latency = latency
        self.args = list(args or [])
        self.port = procs.free_port()
        self.log = workdir / f"fake-ses-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.counts: dict | None = None

    def start(self) -> None:
        self.proc = procs.spawn_python(
            [
                "-m",
                "testkit.fake_ses",
                "--port",
                str(self.port),
                "--latency",
                str(self.latency),
                *self.args,
            ],
            log=self.log,
            stdout=subprocess.PIPE,
        )
        procs.wait_port(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is None:
            return
        procs.stop(self.proc)
        out = self.proc.stdout.read().decode() if self.proc.stdout else ""
        for line in out.splitlines():
            try:
                self.counts = json.loads(line)
            except ValueError:
                pass


def prefill_suppression(path: Path, count: int = SUPPRESSED) -> None:
    """Fill the relay's sqlite store with `count` suppressed addresses (none of them the bench recipient)."""
    import asyncio

    from relay.suppression.base import Reason, SuppressionEntry
    from relay.suppression.sqlite import SqliteStore

    reasons = [Reason.BOUNCE, Reason.COMPLAINT, Reason.MANUAL]

    async def fill() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            await store.put_many(
                SuppressionEntry(f"user{i:05d}@suppressed{i % 97}.example", reasons[i % 3], source="import")
                for i in range(count)
            )
        finally:
            await store.close()

    asyncio.run(fill())


class System:
    name: str
    kind: str
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pid(self) -> int | None:
        return None

    def cpu(self) -> float | None:
        return None

    def accepted(self) -> int | None:
        return None  # 2xx DATA replies so far, if the system counts them


class RelaySystem(System):
    kind = "relay"

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        latency: float,
        log_level: str = "warning",
        uvloop: bool = False,
        source: Path | None = None,
        env: dict[str, str] | None = None,
        suppression_cache: bool = True,
        mode: str = "direct",
        ses: dict | None = None,
        delivery: dict | None = None,
        fake_args: list[str] | None = None,
        trace: bool = True,
    ) -> None:
        """`source`: another checkout of the relay to run (e.g. a patched copy), `env`: extra variables,
        `suppression_cache`: False sets suppression.cache_entries to 0 (every RCPT reads sqlite, as
        every recipient would if each message went to a new address). `mode`: delivery.mode; `ses`,
        `delivery`: more keys for those sections; `fake_args`: options for its fake SES; `trace`:
        trace.enabled (on by default, as in the relay). A relay in
        `spool` or `fallback` mode runs under bench.spool_probe, so `spool_stats()` can read its
        group-commit counters."""
        self.name = name
        self.source = source
        self.extra_env = env or {}
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fake = FakeSes(self.dir, latency, fake_args)
        self.mode = mode
        self.ses_extra = ses or {}
        self.delivery_extra = delivery or {}
        self.stats_path = self.dir / "spool-stats.json"
        self.port = procs.free_port()
        self.http_port = procs.free_port()
        self.log_level = log_level
        self.uvloop = uvloop
        self.suppression_cache = suppression_cache
        self.trace = trace
        self.proc: subprocess.Popen | None = None
        self.stderr_log = self.dir / "relay.log"
        self.config_path = self.dir / "config.yaml"

    def write_config(self) -> Path:
        config = {
            "smtp": {
                "listen": [f"127.0.0.1:{self.port}"],
                "hostname": "relay.bench.local",
                "max_connections": MAX_CONNECTIONS,
            },
            "ses": {
                "region": "us-east-1",
                "endpoint_url": self.fake.url,
                "max_send_rate": None,
                **self.ses_extra,
            },
            # direct unless a row asks for spool or fallback (the relay's default)
            "delivery": {"mode": self.mode, **self.delivery_extra},
            "suppression": {"backend": "sqlite", **({} if self.suppression_cache else {"cache_entries": 0})},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "trace": {"enabled": self.trace},
            "logging": {"level": self.log_level, "format": "json"},
            "state_dir": str(self.dir / "state"),
            # Explicit, so the relay runs on the same loop as its baseline (auto would pick uvloop
            # whenever it is installed).
            "event_loop": "uvloop" if self.uvloop else "asyncio",
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def start(self) -> None:
        self.fake.start()
        config = self.write_config()
        db = self.dir / "state" / "suppression.db"
        if not db.exists():
            prefill_suppression(db)
        entry = ["-m", "relay"]
        if self.mode != "direct":
            entry = ["-m", "bench.spool_probe", str(self.stats_path)]
        self.proc = procs.spawn_python(
            [*entry, "serve", "--config", str(config)],
            env=relay_env(self.source, **self.extra_env),
            cwd=self.source,
            log=self.stderr_log,
        )
        wait_for_greeting(self.port, timeout=30.0, process=self.proc)
        procs.wait_port(self.http_port, proc=self.proc)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cpu(self) -> float | None:
        return procs.cpu_seconds(self.proc.pid) if self.proc else None

    def rss_kb(self) -> int:
        return procs.status_kb(self.proc.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return procs.status_kb(self.proc.pid, "VmHWM")

    def metric(self, name: str, labels: str = "", default: float | None = 0.0) -> float | None:
        """One sample from the relay's /metrics; `default` when the relay does not export it."""
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).read().decode()
        )
        pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", re.M)
        m = pattern.search(text)
        return float(m.group(1)) if m else default

    def accepted(self) -> int | None:
        return int(self.metric("ses_relay_smtp_transactions_total", '{result="2xx"}'))

    def spool_stats(self) -> dict | None:
        """{"commits": group commits, "committed": messages in them} so far (spool/fallback modes)."""
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        procs.stop(self.proc, timeout=40)
        self.fake.stop()


class BareSystem(System):
    kind = "baseline"

    def __init__(self, name: str, workdir: Path, *, uvloop: bool = False) -> None:
        self.name = name
        self.port = procs.free_port()
        self.uvloop = uvloop
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["-m", "bench.bare_aiosmtpd", "--port", str(self.port)] + (["--uvloop"] if self.uvloop else [])
        self.proc = procs.spawn_python(args, log=self.log)
        wait_for_greeting(self.port, timeout=30.0, process=self.proc)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def cpu(self) -> float | None:
        return procs.cpu_seconds(self.proc.pid) if self.proc else None

    def stop(self) -> None:
        procs.stop(self.proc)


class PostfixSystem(System):
    kind = "baseline"

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.port = procs.free_port()
        self.root = workdir / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.pf = PrivatePostfix(self.root, self.port, procs.free_port())

    def start(self) -> None:
        self.pf.start()

    def cpu(self) -> float | None:
        # master + live children + (via cutime/cstime) the children that have exited and been reaped
        master = self.pf.master_pid()
        if master is None:
            return None
        stat = Path(f"/proc/{master}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        reaped = (int(fields[13]) + int(fields[14])) / procs.CLK_TCK
        return procs.tree_cpu_seconds([master, *procs.children_pids(master)]) + reaped

    def accepted(self) -> int | None:
        return None

    def stop(self) -> None:
        self.queued = self.pf.queued()
        self.pf.stop()


def sigterm(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def settle(seconds: float = 0.3) -> None:
    time.sleep(seconds)
