"""trainer.report_to: TensorBoard, W&B (offline) and MLflow (file store) get metrics, the ALIGN-PLOT and the config."""

import json
import math
import struct
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.errors import ConfigError
from aware_cli.extras import MissingExtra
from aware_cli.pipeline.tracking import flatten, open_trackers, scalars

SECRETS = {"HF_TOKEN": "hf_sekrit_tracking_1", "AWARE_JUDGE_API_KEY": "sekrit_judge_2", "WANDB_API_KEY": "sekrit_3"}


def aware(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_with(out: Path, trackers: str, monkeypatch, *extra):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = aware("train", "recipe=smoke", f"output_dir={out}", f"trainer.report_to=[{trackers}]", *extra)
    assert result.exit_code == 0, result.output
    return out


def no_secret_written(run: Path) -> bool:
    return not any(secret.encode() in p.read_bytes() for p in run.rglob("*") if p.is_file()
                   for secret in SECRETS.values())


def test_scalars_keep_finite_numbers_and_flatten_makes_dotted_params():
    assert scalars({"step": 3, "loss": 1.5, "mu_mean": None, "x": float("nan"), "n": 2, "flag": True, "s": "a"}) == \
        {"loss": 1.5, "n": 2.0, "flag": 1.0}
    assert flatten({"model": {"lora": {"r": 8, "targets": ["q", "v"]}, "tokenizer": None}, "k": 2}) == \
        {"model.lora.r": "8", "model.lora.targets": '["q", "v"]', "model.tokenizer": "null", "k": "2"}


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": "unit", "k": 2, "verifier": {"kwargs": {"api_key": "***"}}}))
    return run


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 6), (200, 10, 10)).save(path)
    return path


def test_tensorboard_gets_scalars_the_image_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run_dir(tmp_path)
    with open_trackers(["tensorboard"], run, project="aware") as trackers:
        trackers.log_metrics({"step": 1, "loss": 2.0, "eval_score": None})
        trackers.log_metrics({"step": 2, "loss": 1.0, "eval/advbench/asr": 0.5})
        trackers.log_image("align_plot", _png(tmp_path / "a.png"), 2)
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.0), (2, 1.0)]
    assert [e.step for e in events.Scalars("eval/advbench/asr")] == [2]
    image = events.Images("align_plot")[0]
    assert (image.step, image.width, image.height) == (2, 8, 6)
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "recipe: unit" in config_text and "api_key: '***'" in config_text


def test_mlflow_tracking_uri_from_the_environment_is_used(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="needs the tracking extra: pip install 'aware-cli[tracking]'")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = _run_dir(tmp_path)
    with open_trackers(["mlflow"], run, project="unit-project") as trackers:
        trackers.log_metrics({"step": 1, "loss": 0.5})
    assert not (run / "mlruns").exists()
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("unit-project")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.data.metrics["loss"] == 0.5 and found.info.status == "FINISHED"
    assert found.data.params["verifier.kwargs.api_key"] == "***"


def test_a_failed_run_is_marked_failed(tmp_path):
    pytest.importorskip("mlflow", reason="needs the tracking extra: pip install 'aware-cli[tracking]'")
    from mlflow.tracking import MlflowClient

    run = _run_dir(tmp_path)
    with pytest.raises(RuntimeError):
        with open_trackers(["mlflow"], run, project="aware") as trackers:
            trackers.log_metrics({"step": 1, "loss": 0.5})
            raise RuntimeError("boom")
    ids = json.loads((run / "trackers.json").read_text())
    assert MlflowClient(tracking_uri=ids["mlflow_tracking_uri"]).get_run(ids["mlflow"]).info.status == "FAILED"


# ----------------------------------------------------------------------------- W&B offline, from the CLI


def wandb_records(run: Path):
    """Records of the offline run file (<run>/wandb/offline-run-*/run-*.wandb): LevelDB-log framing of protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, pending = path.read_bytes(), 7, 32768, b""  # 7: the ':W&B' header
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_logs_metrics_image_and_redacted_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="needs the tracking extra: pip install 'aware-cli[tracking]'")
    run = train_with(tmp_path / "run", "wandb", monkeypatch)
    assert not (run / "tb").exists()  # only what report_to names
    history, config = {}, None
    for record in wandb_records(run):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            history[items["_step"]] = items
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
    logged = read_jsonl(run / "metrics.jsonl")
    assert sorted(history) == [1, 2, 3]
    for m in logged:
        row = history[m["step"]]
        for key, value in m.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                assert row[key] == pytest.approx(float(value)), key
    for step in (2, 3):  # eval.every=2 and the last step
        assert "eval_loss_sft" in history[step] and history[step]["align_plot/_type"] == "image-file"
    assert "align_plot/_type" not in history[1]
    expected = yaml.safe_load((run / "config.yaml").read_text())
    assert {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()
            if not k.startswith("_")} == expected
    assert no_secret_written(run)


# ----------------------------------------------------------------------------- MLflow file store, from the CLI


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    pytest.importorskip("mlflow", reason="needs the tracking extra: pip install 'aware-cli[tracking]'")
    with pytest.MonkeyPatch.context() as monkeypatch:
        return train_with(tmp_path_factory.mktemp("mlflow") / "run", "tensorboard,mlflow", monkeypatch,
                          "trainer.save_every=1", "trainer.keep_last=0")


def _client_and_run(run: Path):
    from mlflow.tracking import MlflowClient

    ids = json.loads((run / "trackers.json").read_text())
    assert ids["mlflow_tracking_uri"] == (run / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=ids["mlflow_tracking_uri"])
    return client, client.get_run(ids["mlflow"])


def test_mlflow_file_store_run_logs_metrics_image_and_config(mlflow_run):
    import os

    client, found = _client_and_run(mlflow_run)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    logged = read_jsonl(mlflow_run / "metrics.jsonl")
    history = client.get_metric_history(found.info.run_id, "loss")
    assert sorted((h.step, h.value) for h in history) == [(m["step"], pytest.approx(m["loss"])) for m in logged]
    assert sorted(h.step for h in client.get_metric_history(found.info.run_id, "eval_loss_sft")) == [2, 3]
    assert found.data.params["k"] == "2" and found.data.params["model.name_or_path"] == "tiny"
    artifacts = Path(client.download_artifacts(found.info.run_id, ""))
    assert yaml.safe_load((artifacts / "config.yaml").read_text()) == yaml.safe_load(
        (mlflow_run / "config.yaml").read_text())
    assert sorted(os.listdir(artifacts / "align_plot")) == ["step-2.png", "step-3.png"]
    assert (mlflow_run / "tb").is_dir() and (mlflow_run / "align_plot.png").is_file()
    assert no_secret_written(mlflow_run)


def test_resume_continues_the_same_mlflow_run(mlflow_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(mlflow_run, run)
    shutil.rmtree(run / "checkpoints" / "step-3")
    shutil.rmtree(run / "final")
    # the copied store holds the original's run id: point the copy's trackers.json at the copy's store
    ids = json.loads((run / "trackers.json").read_text())
    ids["mlflow_tracking_uri"] = (run / "mlruns").resolve().as_uri()
    (run / "trackers.json").write_text(json.dumps(ids))
    train_with(run, "tensorboard,mlflow", monkeypatch, "resume=auto", "trainer.save_every=1", "trainer.keep_last=0")
    client, found = _client_and_run(run)
    assert found.info.run_id == ids["mlflow"] and found.info.status == "FINISHED"
    assert max(h.step for h in client.get_metric_history(found.info.run_id, "loss")) == 3


# ----------------------------------------------------------------------------- errors


def test_unknown_tracker_is_a_config_error():
    from aware_cli.config import compose

    with pytest.raises(ConfigError, match=r"trainer.report_to\[1\]: expected one of tensorboard, wandb, mlflow, got "
                                          r"'wandbb' \(did you mean wandb\?\)"):
        compose("smoke", ["trainer.report_to=[tensorboard,wandbb]"])


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_missing_extra_names_it(name, module, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"pip install 'aware-cli\[tracking\]'"):
        open_trackers([name], _run_dir(tmp_path), project="aware")


def test_a_tracker_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="needs the tracking extra: pip install 'aware-cli[tracking]'")
    from aware_cli.errors import AwareError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    with pytest.raises(AwareError, match=r"^trainer.report_to: mlflow could not start: "):
        open_trackers(["tensorboard", "mlflow"], _run_dir(tmp_path), project="aware")
