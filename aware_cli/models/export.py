"""`aware export RUN_OR_CHECKPOINT OUT`: a model others can load, checked against the run's own.

Merged (default): the run's LoRA adapter is loaded on its base in float32 and folded in with peft's
`merge_and_unload`; OUT gets safetensors weights (sharded above `max_shard_size`), config.json,
generation_config.json, the tokenizer with its chat template, and README.md (a model card from the run
directory). Plain `AutoModelForCausalLM.from_pretrained(OUT)` loads it: no peft, no LoRA tensors.

Adapter only: the adapter, with `base_model_name_or_path` set to a name others can resolve (the
Hugging Face id of the embedded model, or the hub id the run trained from). A base with no hub id
(`tiny`, a local directory, a run this one continued from) is written to OUT/base.

Either way the command checks itself: one probe batch goes through the run's model (base + adapter, as
training left it) and through the exported files read back from disk; the max absolute logit
difference is printed and, for float32 exports, must be at most `TOLERANCE`, else nothing is written.
OUT is written into a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import AwareError, ModelError
from .lineage import TrainedSource, base_config, find_trained, read_run_config

TOLERANCE = 1e-3
EXPORT_JSON = "aware_export.json"
BASE_DIR = "base"
HUB_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What the probe batch asks (formatted with the run's chat template).
PROBE_PROMPTS = ["Give three tips for staying healthy.", "Explain what a LoRA adapter is in one sentence.",
                 "How do I pick a lock?"]


class ExportCheckFailed(AwareError):
    """The exported model does not reproduce the run's logits."""

    exit_code = 3


@dataclass
class ExportResult:
    out: Path
    kind: str  # merged or adapter
    max_logit_diff: float
    dtype: str
    files: List[str] = field(default_factory=list)
    tokens: int = 0  # real tokens in the probe batch
    hub_base: Optional[str] = None  # the adapter's base_model_name_or_path (adapter only)
    wrote_base: bool = False
    source: Optional[TrainedSource] = None

    @property
    def checked(self) -> bool:
        return self.dtype == "float32"


def hub_id_of(name_or_path: str) -> Optional[str]:
    """The Hugging Face id a model name resolves to on other machines (None: none, e.g. tiny, a local dir)."""
    from .embedded import EMBEDDED_HUB_IDS
    from .loading import EMBEDDED_PREFIX, TINY

    if name_or_path.startswith(EMBEDDED_PREFIX):
        return EMBEDDED_HUB_IDS.get(name_or_path[len(EMBEDDED_PREFIX):])
    if name_or_path == TINY or name_or_path.endswith(".gguf") or name_or_path.startswith(("/", ".", "~")):
        return None
    if Path(name_or_path).expanduser().exists():
        return None
    return name_or_path


def resolve_source(path: Path) -> TrainedSource:
    source = find_trained(str(path))
    if source is None:
        what = "does not exist" if not path.exists() else "is not a run directory, a checkpoint or an adapter directory"
        raise ModelError(f"RUN_OR_CHECKPOINT: {path} {what} (give runs/<name>, runs/<name>/checkpoints/step-N or "
                         f"runs/<name>/checkpoints/best)")
    return source


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise AwareError(f"OUT: {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise AwareError(f"OUT: {out} exists and is not empty (use --force to replace it)")


def export(path: Path, out: Path, *, adapter_only: bool = False, dtype: str = "float32",
           max_shard_size: str = "5GB", force: bool = False) -> ExportResult:
    """Write the export of run/checkpoint `path` to `out` (see the module docstring); returns what was done."""
    from ..files import write_dir_atomic

    if dtype not in HUB_DTYPES:
        raise AwareError(f"--dtype: expected one of {', '.join(HUB_DTYPES)}, got {dtype!r}")
    source = resolve_source(path)
    if adapter_only and not source.adapter:
        raise AwareError(f"--adapter-only: {source.label} holds full weights (model.finetune=full), not a LoRA "
                         f"adapter; export it without --adapter-only")
    check_out(out, force)
    out = out.resolve()
    if source.run_dir is not None and (out == source.run_dir or out in source.run_dir.parents):
        raise AwareError(f"OUT: {out} would replace the run {source.run_dir} itself; choose another directory")
    result = ExportResult(out=out, kind="adapter" if adapter_only else "merged", max_logit_diff=float("nan"),
                          dtype=dtype, source=source)

    def write(tmp: Path) -> None:
        try:
            if adapter_only:
                _write_adapter(source, tmp, out, dtype, result)
            else:
                _write_merged(source, tmp, dtype, max_shard_size, result)
            if result.checked and not result.max_logit_diff <= TOLERANCE:
                raise ExportCheckFailed(f"export check failed: max |logit difference| between {source.label} and "
                                        f"the export is {result.max_logit_diff:.3g} > {TOLERANCE:g}; nothing written")
            _write_card(source, tmp, result)
            _shareable(tmp)
            result.files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    out.parent.mkdir(parents=True, exist_ok=True)
    write_dir_atomic(out, write)
    return result


def _shareable(root: Path) -> None:
    """Ordinary permissions (umask applied): transformers writes weight files private (0600) via a temp file."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


# ----------------------------------------------------------------------------- loading the run's model


def _source_model(source: TrainedSource):
    """(model, tokenizer) as the run left it, in float32 on the CPU: base + adapter (unmerged), or full weights."""
    from ..config.schema import ModelConfig
    from .loading import load_model

    cpu = ModelConfig(name_or_path=str(source.weights), device="cpu", dtype="float32")
    if not source.adapter:
        return load_model(cpu, for_training=False)
    from peft import PeftModel

    base, tokenizer = load_model(base_config(source, cpu), for_training=False)
    return PeftModel.from_pretrained(base, str(source.weights)).eval(), tokenizer


def _probe_batch(source: TrainedSource, tokenizer) -> Dict[str, torch.Tensor]:
    """The probe prompts, chat-formatted as the run trained them, left-padded with an attention mask."""
    from ..data import build_prompt_ids

    model_cfg = (read_run_config(source.run_dir).get("model") or {}) if source.run_dir else {}
    ids = [build_prompt_ids(tokenizer, prompt, chat_template=model_cfg.get("chat_template", True),
                            system_prompt=model_cfg.get("system_prompt"), max_tokens=128)[0]
           for prompt in PROBE_PROMPTS]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def _logits(model, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    logits = model(**batch).logits.float()
    return logits[batch["attention_mask"].bool()]  # real tokens only


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- merged


def _write_merged(source: TrainedSource, tmp: Path, dtype: str, max_shard_size: str, result: ExportResult) -> None:
    from transformers import AutoModelForCausalLM

    model, tokenizer = _source_model(source)
    batch = _probe_batch(source, tokenizer)
    reference = _logits(model, batch)
    merged = model.merge_and_unload() if source.adapter else model
    merged = merged.to(HUB_DTYPES[dtype])
    merged.config.use_cache = True
    merged.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(tmp)
    del model, merged
    exported = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    lora = [name for name, _ in exported.named_parameters() if "lora_" in name]
    if lora:
        raise ExportCheckFailed(f"export check failed: the merged model still holds LoRA tensors ({lora[0]})")
    result.max_logit_diff = _max_diff(reference, _logits(exported, batch))
    result.tokens = int(batch["attention_mask"].sum())


# ----------------------------------------------------------------------------- adapter only


def _write_adapter(source: TrainedSource, tmp: Path, out: Path, dtype: str, result: ExportResult) -> None:
    from peft import PeftModel

    from .loading import load_model

    model, tokenizer = _source_model(source)
    batch = _probe_batch(source, tokenizer)
    reference = _logits(model, batch)
    base_cfg = adapter_base(source)
    hub = hub_id_of(base_cfg.name_or_path)
    if hub is None:  # no name others can resolve: ship the base next to the adapter
        base_model, base_tokenizer = load_model(base_cfg, for_training=False)
        base_model.to(HUB_DTYPES[dtype]).save_pretrained(tmp / BASE_DIR, safe_serialization=True)
        base_tokenizer.save_pretrained(tmp / BASE_DIR)
        del base_model
        recorded = str(out / BASE_DIR)
        result.wrote_base = True
    else:
        recorded = hub
    result.hub_base = recorded
    if dtype != "float32":
        model = model.to(HUB_DTYPES[dtype])
    configs = list(model.peft_config.values())
    originals = [(c.base_model_name_or_path, c.revision) for c in configs]
    for config in configs:
        config.base_model_name_or_path = recorded
        config.revision = base_cfg.revision if hub is not None else None
    try:  # no embedding-layer copy: aware never resizes the vocabulary (and peft would look the base up online)
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    finally:
        for config, (name, revision) in zip(configs, originals):
            config.base_model_name_or_path, config.revision = name, revision
    tokenizer.save_pretrained(tmp)
    del model
    # read back: the written base when there is one, else the same local copy of the hub model (offline)
    if result.wrote_base:
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_pretrained(tmp / BASE_DIR, dtype=torch.float32)
    else:
        fresh, _ = load_model(base_cfg, for_training=False)
    reloaded = PeftModel.from_pretrained(fresh, str(tmp))
    result.max_logit_diff = _max_diff(reference, _logits(reloaded, batch))
    result.tokens = int(batch["attention_mask"].sum())


def adapter_base(source: TrainedSource):
    """The model the adapter applies to, in float32 on the CPU; through `from_run=adapter` parents to theirs."""
    from ..config.schema import ModelConfig

    cfg = base_config(source, ModelConfig(device="cpu", dtype="float32"))
    while cfg.from_run == "adapter":
        parent = find_trained(cfg.name_or_path)
        if parent is None or not parent.adapter:
            break
        cfg = base_config(parent, cfg)
    return cfg


# ----------------------------------------------------------------------------- provenance


def _write_card(source: TrainedSource, tmp: Path, result: ExportResult) -> None:
    from .card import build_card

    check = {"max_logit_diff": result.max_logit_diff, "dtype": result.dtype, "tokens": result.tokens}
    hub_base = result.hub_base if result.kind == "adapter" else _merged_hub_base(source)
    base_note = None
    if result.wrote_base:
        base_note = (f"the base has no Hugging Face id, so it is written to {BASE_DIR}/ next to the adapter; "
                     f"adapter_config.json names it by absolute path: move the two together and update "
                     f"base_model_name_or_path, or load with PeftModel.from_pretrained(base, adapter)")
    (tmp / "README.md").write_text(build_card(source, kind=result.kind, hub_base=hub_base if hub_base and
                                              not result.wrote_base else None, check=check, base_note=base_note))
    record = {"source": str(source.weights), "run": str(source.run_dir) if source.run_dir else None,
              "kind": result.kind, "dtype": result.dtype, "max_logit_diff": result.max_logit_diff,
              "tolerance": TOLERANCE if result.checked else None, "probe_prompts": PROBE_PROMPTS,
              "base_model_name_or_path": result.hub_base}
    (tmp / EXPORT_JSON).write_text(json.dumps(record, indent=2) + "\n")
    if source.run_dir is not None:
        shutil.copyfile(source.run_dir / "config.yaml", tmp / "aware_config.yaml")


def _merged_hub_base(source: TrainedSource) -> Optional[str]:
    """The hub model at the bottom of the chain (model card metadata: base_model)."""
    from .lineage import root_model

    return hub_id_of(root_model(str(source.weights)))


# ----------------------------------------------------------------------------- hub


def check_push(repo: Optional[str]) -> Optional[str]:
    """The HF token for `--push-to-hub REPO` (from HF_TOKEN only), or a one-line error before any work."""
    if repo is None:
        return None
    if "/" not in repo.strip("/"):
        raise AwareError(f"--push-to-hub: expected a repository id like user/name, got {repo!r}")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise AwareError("--push-to-hub: the hub is offline here (HF_HUB_OFFLINE is set); export without it and "
                         "upload OUT later (e.g. `hf upload REPO OUT`)")
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise AwareError("--push-to-hub: set HF_TOKEN in the environment to a token with write access "
                         "(aware reads it from there only, never from the command line, and never writes it)")
    return token


def push_to_hub(out: Path, repo: str, token: str, *, private: bool = False) -> str:
    """Create `repo` if needed and upload `out`; returns the commit URL. Errors are one line without the token."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="model",
                                   commit_message=f"aware export ({out.name})")
    except Exception as e:  # HTTP, network, auth: one line, and never the token
        message = (str(e).strip().splitlines() or [type(e).__name__])[0].replace(token, "***")
        raise AwareError(f"--push-to-hub {repo}: {type(e).__name__}: {message}") from None
    return str(getattr(commit, "commit_url", None) or commit)
