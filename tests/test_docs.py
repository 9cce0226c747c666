"""The documentation a researcher reads: links resolve, no words from our own process, quoted numbers reproduce.

(a) Every relative link in README.md and docs/*.md points at a file of the checkout.
(b) README.md, docs/*.md and the --help of every ``python -m simulations`` subcommand are free of
    our process words and of machine paths.
(c) The quick numbers of docs/reproduce.md (its "Quick numbers" block: command, JSON quantity,
    quoted value) are rerun with the command the page names and compared with the page.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
from helpers import REPO, run_command

from simulations.__main__ import main as cli_main
from simulations.registry import EXPERIMENTS

PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: Words that belong to how this library was built, not to what a researcher needs.
PROCESS_WORDS = re.compile(r"\bmain job\b|\bcontract\b|\bissues? #?\d+|\bsession\b|SPEC\.md|\.\./shared\b", re.I)
#: Absolute paths of some machine (a user's paths start at their checkout, ~ or a folder they pick).
MACHINE_PATH = re.compile(r"(?<![\w~.])/(?:work|home|root|Users|mnt|opt|tmp|private|var)/")
QUICK_BLOCK = re.compile(r"```text quick-numbers\n(.*?)```", re.S)
# Quoted values are rounded to the digits shown; one unit in the last digit allows for platform
# rounding of a value that sits near a rounding boundary (the runs are seeded and deterministic).
LAST_DIGIT_UNITS = 1.0
# A quick command trains one small network: seconds of CPU, minutes of wall time on a loaded machine.
COMMAND_TIMEOUT_S = 600


def _links(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:|#", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page):
    missing = [target for target in _links(page) if not (page.parent / target.split("#")[0]).exists()]
    assert missing == []


def _help_texts():
    texts = {}
    for name in [*EXPERIMENTS, "sweep", None]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            cli_main([name, "--help"] if name else ["--help"])
        texts[f"python -m simulations {name or ''} --help".replace("  ", " ")] = out.getvalue()
    return texts


def _offending_lines(text):
    return [line.strip() for line in text.splitlines() if PROCESS_WORDS.search(line) or MACHINE_PATH.search(line)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_pages_speak_to_a_researcher(page):
    assert _offending_lines(page.read_text()) == []


def test_help_texts_speak_to_a_researcher():
    texts = _help_texts()
    assert len(texts) >= 3
    offending = {name: _offending_lines(text) for name, text in texts.items()}
    assert {name: lines for name, lines in offending.items() if lines} == {}


def _quick_numbers():
    """(command, quantity, quoted text) rows of the reproduce page's quick-numbers block."""
    (block,) = QUICK_BLOCK.findall((REPO / "docs" / "reproduce.md").read_text())
    rows = [[cell.strip() for cell in line.split("|")] for line in block.splitlines()
            if line.strip() and not line.startswith("#")]
    assert rows and all(len(row) == 3 for row in rows)
    return rows


def _lookup(record, path):
    for key in path.split("."):
        record = record[int(key)] if key.isdigit() else record[key]
    return record


def _quantity(record, expression):
    """Evaluate `path`, `path - path` or `maxdiff(path, path)` on a JSON record (dotted paths)."""
    match = re.fullmatch(r"maxdiff\(([\w.]+), ([\w.]+)\)", expression)
    if match:
        return float(np.max(np.abs(np.asarray(_lookup(record, match[1])) - np.asarray(_lookup(record, match[2])))))
    terms = [term.strip() for term in expression.split(" - ")]
    assert 1 <= len(terms) <= 2, expression
    return float(_lookup(record, terms[0])) - (float(_lookup(record, terms[1])) if len(terms) == 2 else 0.0)


def _last_digit(quoted):
    mantissa, _, exponent = quoted.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def test_quick_numbers_block_is_well_formed():
    for command, quantity, quoted in _quick_numbers():
        assert command.startswith("python -m simulations ") and command.endswith(" --json"), command
        assert float(quoted) == float(quoted) and quantity
        assert quoted in (REPO / "docs" / "reproduce.md").read_text().split("```text quick-numbers")[0], (
            f"{quoted} is quoted in the block but not on the page")


def test_quick_numbers_reproduce(cli_environment, tmp_path):
    rows = _quick_numbers()
    records = {}
    for index, command in enumerate(dict.fromkeys(command for command, _, _ in rows)):
        args = command.split()[3:] + ["--out", str(tmp_path / str(index))]
        process = run_command(args, cli_environment, timeout=COMMAND_TIMEOUT_S)
        assert process.returncode == 0, process.stderr[-2000:]
        records[command] = json.loads(process.stdout.strip().splitlines()[-1])
    for command, quantity, quoted in rows:
        got = _quantity(records[command], quantity)
        assert abs(got - float(quoted)) <= LAST_DIGIT_UNITS * _last_digit(quoted) + 1e-15, (command, quantity, got)


def test_gallery_shows_every_figure():
    """docs/gallery.md has a section, an image and a command for every figure module."""
    text = (REPO / "docs" / "gallery.md").read_text()
    modules = sorted(path.stem for path in (REPO / "figures").glob("*.py") if not path.stem.startswith("_"))
    for name in modules:
        assert f"## {name}\n" in text, name
        assert f"(../figures/output/{name}.png)" in text, name
        assert f"python -m figures --only {name}" in text, name
