"""The wheel stands on its own: it carries the recipes and the built-in data, and runs from an empty directory.

Builds the wheel with `python -m build` (no isolation: hatchling is in the dev extra), installs it with
pip into a fresh target directory (dependencies come from the test environment) and runs the commands
of the README's wheel check from an empty working directory, with the installed copy first on the path.
scripts/check_wheel.sh does the same in a brand-new virtual environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from aware_cli.data import builtin

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    (found,) = out.glob("aware_cli-*.whl")
    return found


def test_wheel_carries_recipes_data_and_weights(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.relative_to(ROOT / "recipes").as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))
    assert recipes and all(f"aware_cli/recipes/{r}" in names for r in recipes)
    for entry in builtin.listing():
        relative = entry.path.relative_to(ROOT).as_posix()
        assert relative in names, relative
        assert entry.source_md.relative_to(ROOT).as_posix() in names
    from aware_cli.verifiers.heads import SHIPPED

    assert all(path.relative_to(ROOT).as_posix() in names for path in SHIPPED.values())
    assert not any("tests/" in n or n.startswith("scripts/") for n in names)


def test_installed_wheel_runs_from_an_empty_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target",
                    str(site), str(wheel)], check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}

    def aware(*args: str, timeout: int = 600) -> str:
        result = subprocess.run([sys.executable, "-m", "aware_cli", *args], cwd=empty, env=env, text=True,
                                capture_output=True, timeout=timeout)
        assert result.returncode == 0, f"aware {' '.join(args)}: {result.stderr[-2000:]}"
        return result.stdout

    where = subprocess.run([sys.executable, "-c", "import aware_cli; print(aware_cli.__file__)"], cwd=empty, env=env,
                           text=True, capture_output=True, check=True).stdout
    assert where.startswith(str(site)), where  # the installed wheel, not the checkout
    listing = aware("recipes", "ls")
    assert "alpaca_harmful_mix" in listing and "builtin:alpaca-demo" in listing
    aware("train", "recipe=smoke", "output_dir=smoke")
    assert json.loads((empty / "smoke" / "status.json").read_text())["state"] == "completed"
    aware("train", "recipe=alpaca", "trainer=demo", "trainer.max_steps=2", "trainer.save_every=0", "output_dir=alpaca")
    assert (empty / "alpaca" / "final" / "adapter_model.safetensors").is_file()
    aware("eval", "advbench", "limit=4", "generation.max_new_tokens=16", "output_dir=eval")
    metrics = json.loads((empty / "eval" / "eval" / "advbench" / "metrics.json").read_text())
    assert metrics["n"] == 4
    assert sorted(p.name for p in empty.iterdir()) == ["alpaca", "eval", "smoke"]  # nothing else written here
