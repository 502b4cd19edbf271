"""trainer.precision: mixed keeps float32 master weights under bfloat16 autocast; bf16 stores bfloat16 weights."""

import json

import pytest
import torch
from rich.console import Console

from aware_cli.config import compose
from aware_cli.errors import ConfigError
from aware_cli.models import loading, sampling_dtype, training_precision, weights_dtype
from aware_cli.pipeline.train import run_training
from aware_cli.pipeline.update import compute_precision

CPU = torch.device("cpu")


def test_auto_is_mixed_on_cuda_and_fp32_elsewhere():
    assert training_precision("auto", torch.device("cuda")) == "mixed"
    assert training_precision("auto", CPU) == "fp32"
    assert weights_dtype("mixed", "auto", CPU) == torch.float32
    assert weights_dtype("bf16", "auto", CPU) == torch.bfloat16
    assert weights_dtype("fp32", "bfloat16", CPU) == torch.bfloat16  # an explicit model.dtype wins (checked at compose)


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_sampling_dtype_auto_is_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, fast_bf16):
    monkeypatch.setattr(loading, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert sampling_dtype("auto", CPU) == ("bfloat16" if fast_bf16 else "model")
    assert sampling_dtype("bfloat16", CPU) == "bfloat16" and sampling_dtype("model", CPU) == "model"  # as asked
    cuda = torch.device("cuda")
    assert sampling_dtype("auto", cuda, "fp32") == "model"
    assert sampling_dtype("auto", cuda, "mixed") == sampling_dtype("model", cuda, "mixed") == "bfloat16"
    assert sampling_dtype("auto", CPU, "mixed", sharded=True) == "model"  # fsdp2 samples as it is


def test_sampling_weights_resolve_auto_for_the_models_device(monkeypatch):
    from aware_cli.pipeline.rollout.engine import sampling_weights

    layer = torch.nn.Linear(4, 4)
    for fast, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(loading, "cpu_has_fast_bf16", lambda fast=fast: fast)
        with sampling_weights(layer, "auto"):
            assert layer.weight.dtype == dtype
        assert layer.weight.dtype == torch.float32


def test_model_dtype_contradicting_the_precision_is_refused():
    with pytest.raises(ConfigError, match="trainer.precision=mixed"):
        compose("smoke", ["trainer.precision=mixed", "model.dtype=bfloat16"])


def test_mixed_autocast_runs_matmuls_in_bfloat16_with_float32_weights():
    layer = torch.nn.Linear(4, 4)
    with compute_precision("mixed", CPU):
        out = layer(torch.ones(2, 4))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    with compute_precision("fp32", CPU):
        assert layer(torch.ones(2, 4)).dtype == torch.float32


@pytest.fixture(scope="module")
def losses(tmp_path_factory):
    out = {}
    from safetensors.torch import load_file

    out = {}
    for precision in ("fp32", "mixed", "bf16"):  # full fine-tuning: every weight is trained and saved
        run = tmp_path_factory.mktemp(precision) / "run"
        run_training(compose("smoke", [f"trainer.precision={precision}", "trainer.max_steps=2", "eval.every=0",
                                       "model.finetune=full", f"output_dir={run}"]), Console(quiet=True))
        out[precision] = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        out[precision + "_dtypes"] = {t.dtype for f in (run / "final").glob("*.safetensors")
                                      for t in load_file(str(f)).values()}
    return out


def test_mixed_trains_float32_weights_close_to_fp32(losses):
    assert losses["mixed_dtypes"] == {torch.float32}
    assert losses["mixed"][0] == pytest.approx(losses["fp32"][0], rel=2e-2)  # bf16 rounding of the forward
    assert losses["mixed"][0] != losses["fp32"][0]  # ... which did run in bfloat16


def test_bf16_stores_bfloat16_weights(losses):
    assert losses["bf16_dtypes"] == {torch.bfloat16}
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=5e-2)
