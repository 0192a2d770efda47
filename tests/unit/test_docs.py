"""The user docs stay true to the code: config keys, reply codes, subcommands and JSON they name.

Checked in README.md, docs/clients.md and docs/troubleshooting.md:
- every config key (`smtp.max_recipients`, `SES_RELAY_SMTP__ALLOWED_NETWORKS`) exists in the model;
- every reply code in the troubleshooting tables is one the relay (or aiosmtpd under it) can give,
  and every reply line the relay itself defines is in those tables;
- every `ses-relay COMMAND [SUBCOMMAND]` exists in the CLI; every ```json block parses;
- every ```yaml block of README's "Security" section (the hardened examples) loads as check-config
  loads a file.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import aiosmtpd.smtp
import pytest
from pydantic import BaseModel

from relay.cli import build_parser
from relay.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "clients.md", ROOT / "docs" / "troubleshooting.md"]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"

SECTIONS = tuple(name for name, field in Config.model_fields.items()
                 if isinstance(field.default, BaseModel))
KEY = re.compile(rf"`((?:{'|'.join(SECTIONS)})(?:\.[a-z_]+)+)`")
ENV_KEY = re.compile(r"\bSES_RELAY_([A-Z][A-Z_]*)")
# "554 5.7.1", "421 4.7.0", or a bare "454" (aiosmtpd's replies without an enhanced code)
REPLY = re.compile(r"^([2-5]\d\d)(?:[ -]([2-5]\.\d{1,3}\.\d{1,3}))?")
COMMAND = re.compile(r"\bses-relay ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")


def doc_texts() -> dict[str, str]:
    return {path.name: path.read_text() for path in DOCS}


def key_exists(path: list[str]) -> bool:
    model: type[BaseModel] = Config
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        default = field.default
        if isinstance(default, BaseModel):
            model = type(default)
        elif i != len(path) - 1:
            return False  # a leaf with something after it
    return True


def test_config_keys_in_the_docs_exist():
    wrong = []
    for name, text in doc_texts().items():
        for key in KEY.findall(text):
            if key.endswith((".com", ".cn")):  # host names such as ses.amazonaws.com
                continue
            if not key_exists(key.split(".")):
                wrong.append(f"{name}: {key}")
        for variable in ENV_KEY.findall(text):
            if variable.endswith("_"):  # the pattern itself: SES_RELAY_<SECTION>__<KEY>
                continue
            if not key_exists([part.lower() for part in variable.split("__")]):
                wrong.append(f"{name}: SES_RELAY_{variable}")
    assert wrong == []


def string_literals(source: str) -> list[str]:
    """Every string constant in the source, and the leading text of each f-string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            found.append(str(node.values[0].value))
    return found


def replies_in(text: str) -> set[tuple[str, str | None]]:
    found = set()
    for literal in string_literals(text):
        match = REPLY.match(literal)
        if match:
            found.add((match[1], match[2]))
    return found


def replies_the_code_gives() -> set[tuple[str, str | None]]:
    found = replies_in(inspect.getsource(aiosmtpd.smtp))
    for path in (ROOT / "relay").rglob("*.py"):
        found |= replies_in(path.read_text())
    return found


def documented_replies() -> set[tuple[str, str | None]]:
    """The reply codes in the first column of each table row of docs/troubleshooting.md."""
    found = set()
    for line in TROUBLESHOOTING.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split(" | ")[0]
        for quoted in re.findall(r"`([^`]+)`", first_cell):
            match = REPLY.match(quoted)
            if match:
                found.add((match[1], match[2]))
    return found


def test_every_reply_code_in_the_troubleshooting_tables_is_one_the_code_gives():
    documented = documented_replies()
    assert len(documented) > 30  # the tables were found
    assert sorted(documented - replies_the_code_gives(), key=str) == []


def relay_reply_constants() -> dict[str, str]:
    """Module-level reply lines the relay defines (NAME = "554 5.7.1 ..."), by name."""
    constants = {}
    for path in (ROOT / "relay").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str) and REPLY.match(node.value.value)):
                constants[f"{path.relative_to(ROOT)}:{node.targets[0].id}"] = node.value.value
    return constants


def used(name: str, sources: str) -> bool:
    return len(re.findall(rf"\b{name}\b", sources)) > 1  # more than its definition


def test_every_reply_the_relay_gives_is_in_the_troubleshooting_tables():
    documented = documented_replies()
    table = " ".join(TROUBLESHOOTING.read_text().split())
    sources = "\n".join(path.read_text() for path in (ROOT / "relay").rglob("*.py"))
    constants = relay_reply_constants()
    assert len(constants) > 30
    missing = []
    for where, reply in constants.items():
        match = REPLY.match(reply)
        assert match is not None
        if (match[1], match[2]) not in documented:
            missing.append(f"{where}: code {reply[:9]!r}")
            continue
        if not used(where.rpartition(":")[2], sources):
            continue  # defined, never sent: its code is enough
        # The longest fixed piece of the line (between placeholders) is quoted in the tables.
        piece = max(re.split(r"\{[^}]*\}", reply), key=len).strip()[:40]
        if piece not in table:
            missing.append(f"{where}: {piece!r}")
    assert missing == []


def commands() -> dict[str, set[str]]:
    subparsers = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    result = {}
    for name, parser in subparsers.choices.items():
        inner = parser._subparsers
        result[name] = set(inner._group_actions[0].choices) if inner is not None else set()
    return result


def code_in(text: str) -> str:
    """The fenced blocks and `inline code` of a Markdown text (prose says "ses-relay checks ...")."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return "\n".join(fenced + re.findall(r"`([^`\n]+)`", rest))


def test_every_subcommand_in_the_docs_exists():
    known = commands()
    wrong = []
    for name, text in doc_texts().items():
        for command, sub in COMMAND.findall(code_in(text)):
            if command not in known:
                wrong.append(f"{name}: ses-relay {command}")
            elif known[command] and sub and sub not in known[command]:
                wrong.append(f"{name}: ses-relay {command} {sub}")
    assert wrong == []


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_json_blocks_parse(path):
    for block in re.findall(r"```json\n(.*?)```", path.read_text(), flags=re.S):
        json.loads(block)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_relative_links_resolve(path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert broken == []


def markdown_section(text: str, heading: str) -> str:
    """The body of a `## heading` section, up to the next heading of the same level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match is not None, f"no '## {heading}' section"
    return match[1]


def test_security_section_yaml_examples_load_and_are_hardened(tmp_path):
    section = markdown_section((ROOT / "README.md").read_text(), "Security")
    blocks = re.findall(r"^```yaml\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) >= 2  # the Docker network and the load balancer examples
    for number, block in enumerate(blocks):
        path = tmp_path / f"security-example-{number}.yaml"
        path.write_text(block)
        config = load_config(path, environ={})  # what `ses-relay check-config --config PATH` runs
        # what makes them hardened: TLS on, and a client outside allowed_networks must authenticate
        assert config.smtp.tls.cert is not None and config.smtp.auth.required, block
