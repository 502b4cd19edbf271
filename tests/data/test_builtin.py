"""Built-in data sets: every one is shipped with its SOURCE.md, resolves from any directory, and is listed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.config.schema import DataConfig
from aware_cli.data import builtin, load_examples
from aware_cli.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("entry", builtin.listing(), ids=lambda e: e.name)
def test_every_builtin_file_ships_with_its_source(entry):
    assert entry.path.is_file() and entry.path.stat().st_size > 1000
    text = entry.source_md.read_text()
    assert "icen" in text or "MIT" in text  # licence or licensing terms are stated


def test_builtin_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = load_examples(DataConfig(path="builtin:advbench", format="csv", prompt_field="goal", input_field=None,
                                    response_field="target", eval_size=0))
    assert len(rows) == 520
    assert builtin.resolve("relative.json", tmp_path) == tmp_path / "relative.json"


def test_unknown_builtin_name_is_one_line_with_a_suggestion():
    with pytest.raises(DataError, match=r"unknown built-in data set 'advbnch' \(did you mean advbench\?\)"):
        builtin.get("builtin:advbnch")


def test_recipes_and_suites_use_only_builtin_or_user_paths():
    outside = "/".join(("..", "shared"))  # the development machines' data folder, which users do not have
    for path in (ROOT / "recipes").rglob("*.yaml"):
        assert outside not in path.read_text(), path
    assert compose("alpaca_harmful_mix").config.data.mix.path == "builtin:advbench"


def test_data_ls_and_show():
    runner = CliRunner()
    listing = runner.invoke(app, ["data", "ls"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and all(e.name in listing.output for e in builtin.listing())
    shown = runner.invoke(app, ["data", "show", "xstest"])
    assert shown.exit_code == 0 and "CC BY 4.0" in shown.output
    bad = runner.invoke(app, ["data", "show", "nope"])
    assert bad.exit_code == 2


def test_safety_prompts_are_built_from_their_sources():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_safety_prompts.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in builtin.get("safety-prompts").path.read_text().splitlines()]
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in groups.values())  # a subject never straddles train and heldout
    written = [r for r in rows if r["source"] == "written"]
    for label in ("benign", "harmful"):
        forms = {r["form"] for r in written if r["label"] == label}
        assert len(forms) == 8  # every phrasing on both sides: form alone cannot tell them apart
