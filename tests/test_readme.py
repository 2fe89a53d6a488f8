"""The README's module map names every module of the apps, and nothing that is not there."""

import re
import subprocess

from tests.conftest import ROOT

MAP_START = "<!-- module map:"


def _mapped() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index(MAP_START) :].split("\n\n", 1)[0]
    return {
        path
        for row in table.splitlines()
        if row.startswith("| `")
        for path in re.findall(r"`([^`]+\.py)`", row.split("|")[1])
    }


def _modules() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "adsync", "alerts", "connections", "syncing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        f
        for f in files
        if f.endswith(".py") and "/migrations/" not in f and not (f.endswith("__init__.py") and "/providers/" not in f)
    }


def test_readme_module_map_matches_the_tree():
    assert sorted(_mapped() - _modules()) == []  # in the map, not in the tree
    assert sorted(_modules() - _mapped()) == []  # in the tree, not in the map
