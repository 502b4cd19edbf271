"""One uninterrupted 1-process run per objective, shared by the 1-vs-2-process test (test_distributed.py) and the
SIGKILL-and-resume test (test_resume.py)."""

from pathlib import Path

import pytest

from _runs import objective_args, run_aware


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """objective → the directory of its uninterrupted 1-process run with `objective_args` (made once)."""
    made = {}

    def get(objective: str) -> Path:
        if objective not in made:
            out = tmp_path_factory.mktemp(f"reference-{objective}") / "run"
            run_aware(out, *objective_args(objective))
            made[objective] = out
        return made[objective]

    return get
