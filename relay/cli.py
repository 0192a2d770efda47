"""`ses-relay` command line: serve, check-config, send-test, suppression."""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import logging
import os
import smtplib
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from relay import __version__
from relay.config import Config, ConfigError, honour_aws_region, load_config, parse_host_port
from relay.logs import configure_logging
from relay.suppression.base import Reason, StoreError, SuppressionEntry

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERNAL = 0, 1, 2, 3


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"ses-relay: error: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace, overrides: dict | None = None) -> Config:
    return load_config(args.config, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {"ses": {"dry_run": True}} if args.dry_run else None
    config = _load(args, overrides)
    configure_logging(config.logging.level, config.logging.format)
    try:
        from relay import runner
        from relay.app import Relay, StartupError

        try:
            factory = runner.loop_factory(config.event_loop)
        except ImportError:
            return _fail("event_loop: uvloop, but uvloop is not installed (pip install 'ses-relay[uvloop]')")
        runner.run(Relay(config).run(reload_config=lambda: _load(args, overrides)), factory)
    except StartupError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - one line for the operator, the traceback at debug level
        logging.getLogger("relay").debug("unexpected error", exc_info=exc)
        return _fail(
            f"unexpected {exc.__class__.__name__}: {exc} (logging.level: debug shows the traceback)",
            EXIT_INTERNAL,
        )
    runner.exit_if_threads_block(EXIT_OK)
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    source = args.config or "built-in defaults (no /etc/ses-relay/config.yaml)"
    mode = "dry-run" if config.ses.dry_run else config.delivery.mode
    print(f"config OK: {source}")
    print(f"  smtp {', '.join(config.smtp.listen)}  http {config.http.listen}  mode {mode}")
    where = (
        config.suppression.dynamodb.table
        if config.suppression.backend == "dynamodb"
        else config.suppression_path
    )
    print(f"  suppression {config.suppression.backend} {where}")
    print(
        f"  ses region {config.ses.region or '(boto3 chain)'} endpoint {config.ses.endpoint_url or '(AWS)'}"
    )
    return EXIT_OK


def cmd_send_test(args: argparse.Namespace) -> int:
    host, port = parse_host_port(args.smtp)
    message = EmailMessage()
    message["From"] = args.sender
    message["To"] = ", ".join(args.to)
    message["Subject"] = args.subject
    message["Message-ID"] = make_msgid(domain=args.sender.rpartition("@")[2] or None)
    message.set_content(
        f"Test message from ses-relay {__version__} at {time.strftime('%Y-%m-%d %H:%M:%S %z')}.\n"
    )
    try:
        with smtplib.SMTP(host, port, local_hostname="localhost", timeout=args.timeout) as client:
            client.ehlo()
            code, reply = client.mail(args.sender)
            if code != 250:
                print(f"MAIL FROM: {code} {reply.decode(errors='replace')}")
                return EXIT_FAILURE
            accepted = 0
            for recipient in args.to:
                code, reply = client.rcpt(recipient)
                print(f"RCPT TO:<{recipient}>: {code} {reply.decode(errors='replace')}")
                accepted += code == 250
            if not accepted:
                client.rset()
                return EXIT_FAILURE
            code, reply = client.data(message.as_bytes(policy=email.policy.SMTP))  # CRLF line ends
            print(f"DATA: {code} {reply.decode(errors='replace')}")
            return EXIT_OK if code == 250 else EXIT_FAILURE
    except (TimeoutError, OSError, smtplib.SMTPException) as exc:
        return _fail(f"cannot talk SMTP to {args.smtp}: {exc}")


async def _with_store(config: Config, action):
    from relay.app import open_store

    if config.suppression.backend == "memory":
        raise StoreError("suppression.backend is 'memory': there is no shared store for the CLI to edit")
    store = await open_store(config)
    try:
        return await action(store)
    finally:
        await store.close()


def cmd_suppression(args: argparse.Namespace) -> int:
    from relay.app import StartupError

    config = _load(args)
    if args.suppression_command == "create-table":
        return _create_table(config)
    if getattr(args, "to_ses", False) and args.reason == Reason.MANUAL.value:
        return _fail("--to-ses needs --reason BOUNCE or COMPLAINT (SES has no MANUAL reason)")

    async def add(store):
        if args.to_ses:
            from relay.suppression.ses_sync import push_to_ses, sesv2_client_factory

            await push_to_ses(
                sesv2_client_factory(config.ses.region, config.ses.endpoint_url), args.address, args.reason
            )
            print(f"added {args.address} to the SES account-level suppression list")
        await store.put(
            SuppressionEntry(args.address, Reason(args.reason), source="manual", detail=args.detail)
        )
        print(f"suppressed {args.address} ({args.reason})")
        return EXIT_OK

    async def remove(store):
        if await store.delete(args.address):
            print(f"removed {args.address}")
            return EXIT_OK
        print(f"{args.address} is not on the suppression list")
        return EXIT_FAILURE

    async def check(store):
        entry = await store.get(args.address)
        if entry is None:
            print(f"{args.address}: not suppressed")
            return EXIT_FAILURE
        print(
            f"{entry.address}: {entry.reason.value} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry.created_at))} UTC (source {entry.source})"
        )
        return EXIT_OK

    async def listing(store):
        count = 0
        async for entry in store.iter_entries():
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.created_at))
            print(f"{entry.address}\t{entry.reason.value}\t{stamp}\t{entry.source}")
            count += 1
        print(f"{count} suppressed", file=sys.stderr)
        return EXIT_OK

    def progress(verb: str):
        return lambda n: print(f"{n} {verb}", file=sys.stderr, flush=True)

    async def import_(store):
        from relay.suppression.transfer import guess_format, import_entries

        fmt = args.format or guess_format(args.file)
        source = sys.stdin.buffer if args.file == "-" else Path(args.file)
        result = await import_entries(
            store, source, fmt=fmt, source=args.source, batch=args.batch, progress=progress("imported")
        )
        for error in result.errors:
            print(error, file=sys.stderr)
        if result.skipped > len(result.errors):
            print(f"... and {result.skipped - len(result.errors)} more bad rows", file=sys.stderr)
        print(f"imported {result.imported}, skipped {result.skipped}")
        return EXIT_FAILURE if result.skipped else EXIT_OK

    async def export(store):
        from relay.files import atomic_writer
        from relay.suppression.transfer import export_entries, guess_format

        fmt = args.format or guess_format(args.output or "-")
        if args.output in (None, "-"):
            count = await export_entries(store, sys.stdout, fmt=fmt, full=args.full)
        else:
            # Opened only now that the store is open, and into a temporary file renamed over the
            # target at the end: a failed export leaves the previous one (the last backup) intact.
            with atomic_writer(args.output, text=True, encoding="utf-8", newline="") as out:
                count = await export_entries(store, out, fmt=fmt, full=args.full)
        print(f"exported {count}", file=sys.stderr)
        return EXIT_OK

    async def sync(store):
        from relay.suppression.ses_sync import sesv2_client_factory, sync_from_ses

        result = await sync_from_ses(
            store,
            sesv2_client_factory(config.ses.region, config.ses.endpoint_url),
            state_path=state_path,
            rate=args.rate,
            progress=progress("synced"),
        )
        resumed = " (resumed from the saved position)" if result.resumed else ""
        print(f"synced {result.imported} entries from SES in {result.pages} pages{resumed}")
        return EXIT_OK

    command = args.suppression_command
    if command == "push-to-ses":
        from relay.suppression.ses_sync import SyncError, push_to_ses, sesv2_client_factory

        try:
            asyncio.run(
                push_to_ses(
                    sesv2_client_factory(config.ses.region, config.ses.endpoint_url),
                    args.address,
                    args.reason,
                )
            )
        except SyncError as exc:
            return _fail(str(exc))
        print(f"added {args.address} ({args.reason}) to the SES account-level suppression list")
        return EXIT_OK

    from relay.suppression.ses_sync import SyncError

    state_path = (
        args.state if command == "sync" and args.state else config.resolved_state_dir / "ses-sync.state"
    )
    if command == "sync" and args.restart:
        state_path.unlink(missing_ok=True)
    action = {
        "add": add,
        "remove": remove,
        "check": check,
        "list": listing,
        "import": import_,
        "export": export,
        "sync": sync,
    }[command]
    try:
        return asyncio.run(_with_store(config, action))
    except (StoreError, StartupError) as exc:
        return _fail(str(exc))
    except SyncError as exc:
        resume = (
            f" (run `ses-relay suppression sync` again to continue from {state_path})"
            if state_path.exists()
            else ""
        )
        return _fail(f"{exc}{resume}")
    except OSError as exc:
        return _fail(f"{getattr(exc, 'filename', None) or ''}: {exc.strerror or exc}".lstrip(": "))


def cmd_hash_password(args: argparse.Namespace) -> int:
    """A bcrypt hash for smtp.auth.users_file. The password comes from a prompt (typed twice) or the
    first line of stdin, never from argv, where `ps` and the shell history would show it."""
    import getpass

    from relay.smtp.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            return _fail("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        return _fail("empty password")
    hashed = hash_password(password.encode("utf-8"), rounds=args.rounds)
    print(f"{args.user}:{hashed}" if args.user else hashed)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from relay.doctor import doctor

    return doctor(args.config, args.sender or [], as_json=args.json)


def cmd_queue(args: argparse.Namespace) -> int:
    from relay.spool import admin

    return admin.run(args, _load(args).spool_path)


def cmd_trace(args: argparse.Namespace) -> int:
    from relay.trace.cli import run

    config = _load(args)
    return run(args, enabled=config.trace.enabled, path=config.trace_path,
               state_dir=config.resolved_state_dir, hashed=config.trace.hash_recipients)


def _create_table(config: Config) -> int:
    from relay.app import build_store
    from relay.suppression.dynamodb import DynamoDbStore

    if config.suppression.backend != "dynamodb":
        return _fail("suppression create-table: suppression.backend is not 'dynamodb'")
    store = build_store(config)
    assert isinstance(store, DynamoDbStore)
    try:
        created = asyncio.run(store.create_table())
    except StoreError as exc:
        return _fail(str(exc))
    print(
        f"created DynamoDB table {store.table}" if created else f"DynamoDB table {store.table} already exists"
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ses-relay", description="Local SMTP relay for Amazon SES")
    parser.add_argument("--version", action="version", version=f"ses-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--config",
            type=Path,
            default=None,
            help="YAML config (default /etc/ses-relay/config.yaml if present, else built-in defaults)",
        )
        return sub

    serve = with_config(commands.add_parser("serve", help="run the relay"))
    serve.add_argument(
        "--dry-run",
        action="store_true",
        help="do everything but call SES; save accepted mail as .eml under <state>/dry-run/",
    )
    serve.set_defaults(func=cmd_serve)

    check = with_config(
        commands.add_parser("check-config", help="validate the config and exit (2 if invalid)")
    )
    check.set_defaults(func=cmd_check_config)

    test = commands.add_parser("send-test", help="send a small test message through a running relay")
    test.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
    test.add_argument("--to", required=True, action="append", metavar="ADDRESS", help="repeatable")
    test.add_argument("--smtp", default="127.0.0.1:2525", metavar="HOST:PORT")
    test.add_argument("--subject", default="ses-relay test message")
    test.add_argument("--timeout", type=float, default=60.0)
    test.set_defaults(func=cmd_send_test)

    doc = with_config(
        commands.add_parser("doctor", help="check the SES account, identities and feedback wiring")
    )
    doc.add_argument(
        "--sender", action="append", metavar="ADDRESS", help="a From: address to check in SES (repeatable)"
    )
    doc.add_argument("--json", action="store_true", help="print the checks as JSON")
    doc.set_defaults(func=cmd_doctor)

    hpw = commands.add_parser(
        "hash-password", help="print a bcrypt hash for smtp.auth.users_file (password from stdin or a prompt)"
    )
    hpw.add_argument("user", nargs="?", help="print a whole users-file line, USER:HASH")
    hpw.add_argument("--rounds", type=int, default=12, choices=range(4, 18), metavar="4-17",
                     help="bcrypt cost (default 12)")
    hpw.set_defaults(func=cmd_hash_password)

    suppression = commands.add_parser("suppression", help="inspect or edit the local suppression list")
    actions = suppression.add_subparsers(dest="suppression_command", required=True, metavar="ACTION")
    add = with_config(actions.add_parser("add", help="suppress an address"))
    add.add_argument("address")
    add.add_argument("--reason", choices=[r.value for r in Reason], default=Reason.MANUAL.value)
    add.add_argument("--detail", default=None, help="free text kept with the entry")
    add.add_argument(
        "--to-ses",
        action="store_true",
        help="also add it to the SES account-level suppression list (reason BOUNCE or COMPLAINT)",
    )
    for name, text in (
        ("remove", "stop suppressing an address"),
        ("check", "is this address suppressed? (exit 0 if so)"),
    ):
        with_config(actions.add_parser(name, help=text)).add_argument("address")
    with_config(actions.add_parser("list", help="print every entry (tab-separated)"))
    imp = with_config(actions.add_parser("import", help="import a CSV (SES bulk format) or JSON-lines file"))
    imp.add_argument("file", help="path, or - for stdin")
    imp.add_argument(
        "--format",
        choices=["csv", "jsonl"],
        default=None,
        help="default: jsonl for *.jsonl/*.ndjson/*.json, else csv",
    )
    imp.add_argument(
        "--source", default="import", help="source recorded for rows without one (default import)"
    )
    imp.add_argument("--batch", type=int, default=50_000, help="rows per transaction (default 50000)")
    exp = with_config(
        actions.add_parser("export", help="write every entry as CSV (SES bulk format) or JSON lines")
    )
    exp.add_argument("output", nargs="?", default=None, help="path (default stdout)")
    exp.add_argument(
        "--format",
        choices=["csv", "jsonl"],
        default=None,
        help="default: jsonl for *.jsonl/*.ndjson/*.json, else csv",
    )
    exp.add_argument(
        "--full",
        action="store_true",
        help="CSV: add source,created_at,feedback_id,detail (no longer SES's import format)",
    )
    sync = with_config(
        actions.add_parser(
            "sync",
            help="copy the SES account-level suppression list into the local list (resumable)",
        )
    )
    sync.add_argument(
        "--rate", type=float, default=1.0, help="SES requests per second (default 1, SES's limit)"
    )
    sync.add_argument(
        "--state", type=Path, default=None, help="resume file (default <state_dir>/ses-sync.state)"
    )
    sync.add_argument(
        "--restart", action="store_true", help="ignore a saved position and start from the beginning"
    )
    push = with_config(
        actions.add_parser("push-to-ses", help="add an address to the SES account-level suppression list")
    )
    push.add_argument("address")
    push.add_argument("--reason", choices=["BOUNCE", "COMPLAINT"], required=True)
    with_config(actions.add_parser("create-table", help="create the DynamoDB suppression table if missing"))
    suppression.set_defaults(func=cmd_suppression)

    from relay.spool.admin import add_arguments as add_queue_arguments

    queue = commands.add_parser("queue", help="inspect and repair the delivery spool (postqueue, postsuper)")
    add_queue_arguments(queue, with_config)
    queue.set_defaults(func=cmd_queue)

    from relay.trace.cli import add_arguments as add_trace_arguments

    trace = commands.add_parser(
        "trace", help="what happened to a message: its timeline, from SMTP to SES's verdict"
    )
    add_trace_arguments(trace, with_config)
    trace.set_defaults(func=cmd_trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    honour_aws_region(os.environ)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
