"""Every relative link in the README and docs/ resolves, and every asyncsgd command line they show parses.

Links: ``[text](target)`` and ``![alt](target)`` that are not URLs must name a
file or folder of the repository, and a ``#fragment`` a heading of the target
page (GitHub's anchors). Commands: every line of a code block, and every
inline code span, that runs ``asyncsgd-run`` (also as ``-m asyncsgd.cli``
under mpiexec, torchrun or srun), ``asyncsgd-report``, ``asyncsgd-bench`` or
``scripts/bench-overlap`` goes through that command's own parser, and
asyncsgd-run's overrides are composed into typed configs
(:func:`asyncsgd.validate.compose_jobs`, with the value checks but without the
checks of this machine; of a sweep, enough jobs that every value it sweeps is
composed once). Placeholders (``...``, ``<same overrides>``) are left out;
usage synopses (``DIR...``, ``[--out OUT]``) and ```text`` blocks (diagrams)
are not command lines.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from asyncsgd import bench, validate
from asyncsgd.cli import _hydra_args, _resume_shorthand, report_parser
from asyncsgd.validate import compose_jobs

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "results" / "reference").glob("*/README.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
COMMAND = re.compile(r"(?:^|[\s/])(asyncsgd-run|asyncsgd-report|asyncsgd-bench|bench-overlap|-m asyncsgd\.cli)(?=\s|$)")
PLACEHOLDER = re.compile(r"(?<!\S)(<[^<>]*>|\.\.\.)(?!\S)")


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def anchors(page: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict = {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def links() -> Iterator[Tuple[str, str]]:
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                yield _name(page), target


def command_lines() -> Iterator[Tuple[str, str, List[str]]]:
    """(page, the line as shown, command and arguments) for every asyncsgd command line shown."""
    for page in PAGES:
        text = page.read_text()
        shown = []
        for block in FENCE.findall(text):  # code blocks, with continuation lines joined
            if not block.startswith("```text"):
                shown += block.replace("\\\n", " ").splitlines()[1:-1]
        rest = FENCE.sub("", text)
        shown += [line for line in rest.splitlines() if line.startswith("    ")]  # indented code blocks
        shown += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", rest)]
        for line in shown:
            match = COMMAND.search(line)
            if not match:
                continue
            args = shlex.split(PLACEHOLDER.sub("", line[match.end():]), comments=True)
            if any(a.endswith("...") or a.startswith("[-") for a in args):
                continue  # a usage synopsis, not a command line
            command = "asyncsgd-run" if "asyncsgd.cli" in match.group(1) else match.group(1)
            if args or command == "asyncsgd-run":  # a bare asyncsgd-report is a mention, not a command
                yield _name(page), line.strip(), [command, *args]


ALL_LINKS = sorted(set(links()))
ALL_COMMANDS = list({tuple(argv): (page, line, argv) for page, line, argv in command_lines()}.values())


def covering(jobs: List[List[str]]) -> List[List[str]]:
    """Jobs of a sweep, in order, until every override any job has appears in one picked."""
    picked, seen = [], set()
    for job in jobs:
        if not set(job) <= seen:
            picked.append(job)
            seen |= set(job)
    return picked


def test_the_pages_are_read():
    assert {"README.md", "docs/architecture.md", "docs/performance.md", "docs/strategies.md"} <= {_name(p) for p in PAGES}
    assert len(ALL_LINKS) > 40 and len(ALL_COMMANDS) > 40  # the extraction itself works
    assert {c[2][0] for c in ALL_COMMANDS} >= {"asyncsgd-run", "asyncsgd-report", "bench-overlap"}


@pytest.mark.parametrize("page,target", ALL_LINKS)
def test_relative_link_resolves(page, target):
    path, _, fragment = target.partition("#")
    resolved = (REPO / page).parent / path if path else REPO / page
    assert resolved.exists(), f"{page}: link to {target}: no such file"
    if fragment:
        assert fragment in set(anchors(resolved)), f"{page}: link to {target}: no such heading in {_name(resolved)}"


def test_every_command_line_shown_parses(monkeypatch):
    expand = validate.expand_sweep
    monkeypatch.setattr(validate, "expand_sweep", lambda overrides, params=None: covering(expand(overrides, params)))
    bad = []
    for page, line, (command, *args) in ALL_COMMANDS:
        try:
            if command == "asyncsgd-run":
                parsed = _hydra_args(_resume_shorthand(args))
                if not (parsed.help or parsed.hydra_help or parsed.cfg or parsed.info):
                    compose_jobs(parsed.overrides, parsed.multirun)
            elif command == "asyncsgd-report":
                report_parser().parse_args(args)
            else:  # scripts/bench-overlap passes its arguments to asyncsgd-bench
                bench.parse_args(args)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - every failure is reported with its line
            bad.append(f"{page}: {line}\n    {type(exc).__name__}: {exc}")
    assert not bad, "command lines in the docs that do not parse:\n" + "\n".join(bad)


def test_a_broken_link_and_a_bad_command_are_caught(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](#top) [gone](missing.md) [no heading](#nowhere)\n\n"
                    "```bash\nasyncsgd-run strategy=delayed strategy.k=-1\n```\n")
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    monkeypatch.setitem(globals(), "PAGES", [page])
    assert sorted(links()) == [("page.md", "#nowhere"), ("page.md", "#top"), ("page.md", "missing.md")]
    assert set(anchors(page)) == {"top"}
    ((_, line, argv),) = command_lines()
    assert argv == ["asyncsgd-run", "strategy=delayed", "strategy.k=-1"]
    with pytest.raises(Exception, match=r"strategy.k=-1 must be an integer >= 0"):
        compose_jobs(argv[1:], multirun=False)
