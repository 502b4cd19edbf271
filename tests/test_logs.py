"""One log handler (rich, on the CLI's console) for aware, the libraries and Python warnings; --log-level."""

import logging

import pytest
from rich.logging import RichHandler
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.logs import HANDLER_NAME, setup_logging

runner = CliRunner()
TRAIN = ["train", "recipe=smoke", "trainer.max_steps=1", "eval.every=0", "verifier=python",
         "verifier.target=tests/fixtures/verifiers.py:noisy_library"]


def ours():
    return [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]


def test_warnings_and_library_logs_go_through_one_rich_handler(tmp_path, in_project_root):
    result = runner.invoke(app, [*TRAIN, f"output_dir={tmp_path / 'run'}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(ours()) == 1 and isinstance(ours()[0], RichHandler)
    assert result.output.count("aware-test: a library's log warning") == 1
    assert "UserWarning:" in result.output and "aware-test: a library's UserWarning" in result.output  # → rich
    assert "aware-test: a library's info line" not in result.output  # default level: warning
    library = logging.getLogger("transformers")  # its own stderr handler is gone (pytest may add its capture ones)
    assert library.propagate and not [h for h in library.handlers if type(h) is logging.StreamHandler]


def test_log_level_filters_and_is_checked(tmp_path, in_project_root):
    quiet = runner.invoke(app, ["--log-level", "error", *TRAIN, f"output_dir={tmp_path / 'quiet'}"],
                          catch_exceptions=False)
    assert quiet.exit_code == 0 and "aware-test" not in quiet.output
    verbose = runner.invoke(app, ["--log-level", "INFO", *TRAIN, f"output_dir={tmp_path / 'verbose'}"],
                            catch_exceptions=False)
    assert verbose.exit_code == 0 and "aware-test: a library's info line" in verbose.output
    bad = runner.invoke(app, ["--log-level", "loud", "validate", "recipe=smoke"])
    assert bad.exit_code == 2 and "--log-level" in bad.output
    setup_logging("warning")  # leave the default for the other tests


def test_only_rank_zero_logs_below_error(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    setup_logging("debug")
    assert logging.getLogger().level == logging.ERROR
    monkeypatch.setenv("RANK", "0")
    setup_logging("debug")
    assert logging.getLogger().level == logging.DEBUG and len(ours()) == 1
    setup_logging("warning")
    with pytest.raises(ValueError):
        setup_logging("loud")


def test_clip_puts_text_on_one_line_within_the_width():
    from aware_cli.logs import clip

    assert clip("a  b\n c") == "a b c"
    assert clip("x" * 10, 10) == "x" * 10
    assert clip("x" * 11, 10) == "x" * 9 + "…" and len(clip("y " * 100, 70)) == 70
