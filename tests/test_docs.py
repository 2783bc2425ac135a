"""The documentation's shape: a README a newcomer reads in minutes, Markdown whose prose lines fit a screen,
and links that lead somewhere."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT

MARKDOWN = sorted(
    ROOT / name
    for name in subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True).stdout.split()
) or sorted(ROOT.glob("**/*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _prose(path):
    """(line number, line) of the lines outside code blocks and tables."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and not line.lstrip().startswith("|"):
            yield number, line


def test_the_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_prose_line_is_over_200_characters_and_every_local_link_exists(path):
    long = [f"{path.name}:{number} ({len(line)} characters)" for number, line in _prose(path) if len(line) > 200]
    assert not long, long
    missing = [
        target
        for _, line in _prose(path)
        for target in LINK.findall(line)
        if "://" not in target and not (path.parent / target).exists()
    ]
    assert not missing, f"{path.name}: links to missing files {missing}"
