"""Experiment trackers (`trainer.report_to`): TensorBoard, Weights & Biases, MLflow.

Each receives what metrics.jsonl gets (every finite number of every step), the ALIGN-PLOT image at
evaluation steps, and the resolved config: the redacted dict of the run's config.yaml, read back from
that file, so a tracker never sees a value config.yaml does not show. Tokens stay in the environment.

- tensorboard: `<run>/tb` (scalars, the config as text, the image).
- wandb: offline in `<run>/wandb` unless WANDB_MODE is set (`wandb sync <run>/wandb/offline-run-*` uploads it
  later); `pip install 'aware-cli[tracking]'`.
- mlflow: a file store in `<run>/mlruns` unless MLFLOW_TRACKING_URI is set (`mlflow ui --backend-store-uri
  <run>/mlruns`); config as params and as the artifact config.yaml; `pip install 'aware-cli[tracking]'`.

The W&B and MLflow run ids are kept in `<run>/trackers.json`, so `resume=auto` continues the same runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from aware_cli.errors import AwareError
from aware_cli.extras import require

TRACKERS_JSON = "trackers.json"
MLFLOW_PARAM_LIMIT = 500  # characters of one param value MLflow accepts everywhere


def scalars(metrics: Dict[str, Any]) -> Dict[str, float]:
    """The finite numbers of a metrics.jsonl record (flags such as `skipped` as 0/1), without `step`."""
    return {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}


def flatten(config: Any, prefix: str = "") -> Dict[str, str]:
    """{"model.lora.r": "8", ...}: a nested config as dotted keys with string values (lists as JSON)."""
    if isinstance(config, dict):
        out: Dict[str, str] = {}
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = json.dumps(config) if isinstance(config, (list, tuple)) else "null" if config is None else str(config)
    return {prefix.rstrip("."): text}


class Tracker:
    """One backend. `log_metrics` every step, `log_image` at evaluations, `close` once."""

    name = "tracker"

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_image(self, key: str, path: Path, step: int) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:  # completed | failed | interrupted
        pass

    def ids(self) -> Dict[str, str]:
        """What `trackers.json` keeps to continue this tracker's run on resume."""
        return {}


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path, config: Dict[str, Any], start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)
        if start_step == 0:
            text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
            self.writer.add_text("config", "```yaml\n" + text + "```", 0)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            self.writer.add_image(key, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self, status: str) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run_dir: Path, config: Dict[str, Any], *, project: str, run_name: str,
                 run_id: Optional[str]) -> None:
        wandb = require("wandb", "tracking", "trainer.report_to=wandb")
        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE") or "offline"  # no network unless the user asks for one
        settings = wandb.Settings(console="off", silent=True, x_disable_meta=True, x_disable_stats=True,
                                  disable_git=True, save_code=False, x_save_requirements=False)
        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), config=config, mode=mode,
                              id=run_id, resume="allow" if run_id else None, settings=settings, reinit="create_new")

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        self.run.log({key: self.wandb.Image(str(path))}, step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)

    def ids(self) -> Dict[str, str]:
        return {"wandb": self.run.id}


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, run_dir: Path, config: Dict[str, Any], *, project: str, run_name: str,
                 run_id: Optional[str]) -> None:
        require("mlflow", "tracking", "trainer.report_to=mlflow")
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store inside the run; MLflow 3 wants this opt-in for file stores
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is None:
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
            run = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={"aware.run_dir": str(run_dir.resolve()),
                                               "aware.recipe": str(config.get("recipe", ""))})
            self.run_id = run.info.run_id
            self._log_config(config)
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")

    def _log_config(self, config: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, v[:MLFLOW_PARAM_LIMIT]) for k, v in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_dict(self.run_id, config, "config.yaml")

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def log_image(self, key: str, path: Path, step: int) -> None:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # keep every step's image: align_plot/step-N.png
            copy = Path(tmp) / f"step-{step}{path.suffix}"
            shutil.copyfile(path, copy)
            self.client.log_artifact(self.run_id, str(copy), artifact_path=key)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, {"completed": "FINISHED", "interrupted": "KILLED"}.get(status,
                                                                                                      "FAILED"))

    def ids(self) -> Dict[str, str]:
        return {"mlflow": self.run_id, "mlflow_tracking_uri": self.uri}


class Trackers:
    """All of `trainer.report_to`, used as one: a context manager that closes each with the run's outcome."""

    def __init__(self, trackers: List[Tracker]) -> None:
        self.trackers = trackers

    @property
    def names(self) -> List[str]:
        return [t.name for t in self.trackers]

    def log_metrics(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        values = scalars(metrics)
        step = int(metrics["step"]) if step is None else step
        for tracker in self.trackers:
            tracker.log_metrics(values, step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        for tracker in self.trackers:
            tracker.log_image(key, path, step)

    def close(self, status: str) -> None:
        for tracker in self.trackers:
            tracker.close(status)
        self.trackers = []

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            status = "completed"
        elif issubclass(kind, KeyboardInterrupt) or getattr(exc, "exit_code", None) == 130:
            status = "interrupted"
        else:
            status = "failed"
        self.close(status)


def open_trackers(names: List[str], run_dir: Path, *, project: str, start_step: int = 0,
                  resume: bool = False) -> Trackers:
    """Start the trackers named in `trainer.report_to` for the run in `run_dir` (config.yaml written)."""
    from aware_cli.files import write_atomic

    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    saved_path = run_dir / TRACKERS_JSON
    saved: Dict[str, str] = {}
    if resume and saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except ValueError:
            saved = {}
    run_name = run_dir.resolve().name
    trackers: List[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir, config, start_step))
            elif name == "wandb":
                trackers.append(WandbTracker(run_dir, config, project=project, run_name=run_name,
                                             run_id=saved.get("wandb")))
            elif name == "mlflow":
                same_store = saved.get("mlflow_tracking_uri") in (None, _mlflow_uri(run_dir))
                trackers.append(MlflowTracker(run_dir, config, project=project, run_name=run_name,
                                              run_id=saved.get("mlflow") if same_store else None))
    except AwareError:
        Trackers(trackers).close("failed")
        raise
    except Exception as e:  # a tracker that cannot start (no network, bad URI, ...): one line naming it
        Trackers(trackers).close("failed")
        first = (str(e).strip().splitlines() or [""])[0]
        raise AwareError(f"trainer.report_to: {name} could not start: {type(e).__name__}: {first}") from e
    ids = {k: v for t in trackers for k, v in t.ids().items()}
    if ids:
        write_atomic(saved_path, json.dumps(ids, indent=1) + "\n")
    return Trackers(trackers)


def _mlflow_uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
