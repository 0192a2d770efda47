"""Run the relay (`python -m relay ...`) and let the benchmark read its spool's group-commit counters.

The relay exports no metric for the group-commit batch size; its `SqliteSpool` counts `commits` (group
commits done) and `committed` (messages in them). This wrapper notes each spool the relay opens and,
from a daemon thread, writes those two numbers to STATS_FILE (JSON, replaced atomically) whenever they
change, at most every POLL seconds. Nothing in the relay's behaviour changes: reading two ints a few
times a second is the whole cost.

    python -m bench.spool_probe STATS_FILE serve --config CONFIG
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

POLL = 0.25  # seconds between looks at the counters


def write_stats(path: Path, spools: list) -> dict:
    stats = {
        "commits": sum(s.commits for s in spools),
        "committed": sum(s.committed for s in spools),
        "spools": len(spools),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)
    return stats


def watch(path: Path, spools: list) -> None:
    last = None
    while True:
        current = (len(spools), sum(s.commits for s in spools))
        if current != last:
            write_stats(path, spools)
            last = current
        time.sleep(POLL)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, relay_args = Path(argv[0]), argv[1:]
    from relay.cli import main as relay_main
    from relay.spool import store

    spools: list = []
    opened = store.SqliteSpool.open

    async def open_and_note(self) -> None:
        await opened(self)
        spools.append(self)

    store.SqliteSpool.open = open_and_note  # type: ignore[method-assign]
    write_stats(path, spools)
    threading.Thread(target=watch, args=(path, spools), name="spool-probe", daemon=True).start()
    return relay_main(relay_args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
