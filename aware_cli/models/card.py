"""The model card (README.md) `aware export` writes: where the weights came from and how they did.

Everything comes from the run directory: config.yaml (base model, recipe, data, objective, trainer),
split.json (rows held out / trained on), eval/<suite>/metrics.json (`aware eval` results),
metrics.jsonl (the last in-training evaluation) and checkpoints/best/best.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import __version__
from ..files import jsonl_lines
from .lineage import TrainedSource, lineage, read_run_config

HEADLINE_ORDER = ["advbench", "harmful", "hexphi", "xstest", "truthfulqa", "slaq", "task"]


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def suite_results(run_dir: Path) -> List[Dict[str, Any]]:
    """The `aware eval` results stored under the run: one metrics.json per suite."""
    results = []
    for path in sorted((run_dir / "eval").glob("*/metrics.json")):
        metrics = _read_json(path)
        if isinstance(metrics, dict):
            results.append({**metrics, "suite": metrics.get("suite", path.parent.name)})
    order = {name: i for i, name in enumerate(HEADLINE_ORDER)}
    return sorted(results, key=lambda m: (order.get(m["suite"], len(order)), m["suite"]))


def last_evaluation(run_dir: Path, up_to_step: Optional[int] = None) -> Dict[str, Any]:
    """The last metrics.jsonl line with evaluation values (at or before `up_to_step`), eval keys only."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    found: Dict[str, Any] = {}
    for line in jsonl_lines(path.read_text()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if up_to_step is not None and record.get("step", 0) > up_to_step:
            break
        values = {k: v for k, v in record.items() if k.startswith("eval") and isinstance(v, (int, float))}
        if values:
            found = {"step": record.get("step"), **values}
    return found


def _data_licence(path: str) -> Optional[str]:
    from ..data import builtin

    if not builtin.is_builtin(path):
        return None
    try:
        return builtin.get(path.split(":", 1)[1]).licence
    except Exception:  # an unknown builtin name: the card just omits the licence
        return None


def _checkpoint_step(source: TrainedSource) -> Optional[int]:
    name = source.weights.name
    if name.startswith("step-") and name[5:].isdigit():
        return int(name[5:])
    if name == "best":
        best = _read_json(source.weights / "best.json") or {}
        return best.get("step")
    return None


def build_card(source: TrainedSource, *, kind: str, hub_base: Optional[str], check: Dict[str, Any],
               base_note: Optional[str] = None) -> str:
    """README.md text. `kind`: merged (full weights) or adapter. `check`: the export's self-check."""
    config = read_run_config(source.run_dir) if source.run_dir else {}
    model = config.get("model") or {}
    data = config.get("data") or {}
    objective = config.get("objective") or {}
    trainer = config.get("trainer") or {}
    gate = config.get("gate") or {}
    chain = lineage(str(source.weights))
    root = chain[-1].base.name_or_path if chain else model.get("name_or_path", "")
    tags = ["aware", "alignment", "safety", "text-generation"] + (["peft", "lora"] if kind == "adapter" else [])
    front = ["---", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
             "pipeline_tag: text-generation"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front += ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    name = source.run_dir.name if source.run_dir else source.weights.name
    lines = front + [f"# {name}", ""]
    what = ("merged full weights (the LoRA adapter folded into its base with peft's `merge_and_unload`; plain "
            "`transformers` loads them, no peft needed)" if kind == "merged" else "a PEFT LoRA adapter")
    lines += [f"Fine-tuned with aware {__version__} (AWARE: alignment-aware fine-tuning) and exported by "
              f"`aware export` as {what}.", ""]

    lines += ["## Base model", ""]
    lines.append(f"- base: `{root}`" + (f" (Hugging Face: `{hub_base}`)" if hub_base and hub_base != root else ""))
    if root.startswith("embedded:"):
        lines.append("- the embedded model is the Q4_1 GGUF of that hub model, dequantised to float32: training and "
                     "the merged weights start from those dequantised weights, not the hub's original ones")
    if base_note:
        lines.append(f"- {base_note}")
    if len(chain) > 1 or (chain and chain[0].run_dir is not None):
        lines.append("- lineage (newest first): " + " ← ".join(_lineage_label(s) for s in chain) + f" ← `{root}`")
    lines.append("")

    if config:
        lines += ["## Recipe", ""]
        lines.append(f"- recipe `{config.get('recipe', '')}`" + (f": {config['description']}"
                                                                   if config.get("description") else ""))
        step = _checkpoint_step(source)
        steps = trainer.get("max_steps")
        lines.append(f"- exported weights: {'step ' + str(step) if step is not None else 'final'}"
                     f"{f' of {steps}' if steps else ''} optimizer steps"
                     + (" (checkpoints/best: " + _best_line(source) + ")" if source.weights.name == "best" else ""))
        finetune = model.get("finetune", "lora")
        lora = model.get("lora") or {}
        lora_settings = ""
        if finetune == "lora":
            layers = f", layers {lora['first_layer']}+" if lora.get("first_layer") else ""
            lora_settings = (f" (LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, "
                             f"targets {', '.join(lora.get('target_modules') or [])}{layers})")
        lines.append(f"- fine-tuning: {finetune}{lora_settings}")
        lines.append(f"- trainer: batch {trainer.get('batch_size')}, lr {trainer.get('lr')}, seed "
                     f"{trainer.get('seed')}, k={config.get('k')} samples per prompt")
        lines.append("")
        lines += ["## Data", ""]
        licence = _data_licence(str(data.get("path", "")))
        lines.append(f"- task data: `{data.get('path')}`" + (f" (licence: {licence})" if licence else "")
                     + (f", first {data['limit']} rows" if data.get("limit") else ""))
        mix = data.get("mix") or {}
        if mix.get("path"):
            mix_licence = _data_licence(str(mix["path"]))
            lines.append(f"- mixed in: `{mix['path']}` ({_fmt(mix.get('share'))} of the training rows, "
                         f"harmful={mix.get('harmful')}; {_fmt(mix.get('heldout_fraction'))} of it held out)"
                         + (f" (licence: {mix_licence})" if mix_licence else ""))
        split = _read_json(source.run_dir / "split.json") if source.run_dir else None
        if isinstance(split, dict):
            held = len(split.get("task_heldout_ids", []))
            trained_mix = len(split.get("train_ids", []))
            lines.append(f"- split.json: {held} task rows held out for evaluation"
                         + (f"; {trained_mix} mixed-in rows trained on, {len(split.get('heldout_ids', []))} held out"
                            if "train_ids" in split else ""))
        lines.append("")
        lines += ["## Objective", ""]
        lines.append(f"- objective: `{objective.get('name', 'aware')}`; verifier: "
                     f"`{(config.get('verifier') or {}).get('name', '')}`")
        if objective.get("name", "aware") in ("aware", "pg", "grpo"):
            lines.append(f"- gate: {gate.get('mode')} (τ_μ={gate.get('tau_mu')}, τ_σ={gate.get('tau_sigma')}, "
                         f"τ_abstain={gate.get('tau_abstain')}, abstention {'on' if gate.get('abstain') else 'off'}), "
                         f"λ_pg={objective.get('lambda_pg')}")
        lines.append("")

    lines += ["## Evaluation", ""]
    results = suite_results(source.run_dir) if source.run_dir else []
    if results:
        lines += ["Safety and task metrics from `aware eval` on this run (stored under its eval/; every response "
                  "is in eval/<suite>/responses.jsonl):", "",
                  "| suite | metric | value | prompts | judge | weights evaluated |", "|---|---|---|---|---|---|"]
        for m in results:
            headline = m.get("headline")
            lines.append(f"| {m['suite']} | {headline} | {_fmt(m.get(headline))} | {_fmt(m.get('n'))} | "
                         f"{_fmt(m.get('judge'))} | {_evaluated(m.get('model'), source)} |")
    else:
        lines.append("No `aware eval` result is stored with this run (e.g. `aware eval advbench model=<run>`).")
    in_training = last_evaluation(source.run_dir, _checkpoint_step(source)) if source.run_dir else {}
    if in_training:
        lines += ["", f"Last in-training evaluation (step {in_training.pop('step')}, on held-out prompts):", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(in_training.items())]
    lines.append("")

    lines += ["## Export check", ""]
    lines.append(f"One probe batch ({check['tokens']} tokens) through the run's model and through this export "
                 f"({check['dtype']}): max |logit difference| = {check['max_logit_diff']:.3g}.")
    lines.append("")
    lines += ["## Use", "", "```python"]
    if kind == "merged":
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "", 'model = AutoModelForCausalLM.from_pretrained("PATH")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH")']
    else:
        lines += ["from peft import AutoPeftModelForCausalLM",
                  "", 'model = AutoPeftModelForCausalLM.from_pretrained("PATH")  # loads base_model_name_or_path']
    lines += ["```", "", f"PATH is this directory (or its hub repo). Exported from `{source.label}`.", ""]
    return "\n".join(lines)


def _evaluated(model: Any, source: TrainedSource) -> str:
    """Which weights an eval's `model` names: final, checkpoints/step-N, ... (and whether they are these)."""
    if not model or source.run_dir is None:
        return _fmt(model)
    path = Path(str(model)).expanduser()
    try:
        path = path.resolve()
        label = "final" if path == source.run_dir else str(path.relative_to(source.run_dir))
    except (OSError, ValueError):
        return str(model)
    same = path == source.weights or (label == "final" and source.weights.name == "final")
    return f"{label} (these weights)" if same else label


def _lineage_label(source: TrainedSource) -> str:
    return f"`{source.label}`"


def _best_line(source: TrainedSource) -> str:
    best = _read_json(source.weights / "best.json") or {}
    return f"best {best.get('metric')} = {_fmt(best.get('value'))} ({best.get('mode')}) at step {best.get('step')}"
