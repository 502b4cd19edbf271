"""Built-in data sets shipped inside the package (`aware_cli/assets/data/`), named `builtin:<name>`.

Any data path of a recipe (`data.path`, `data.mix.path`, `objective.pairs_path`) takes `builtin:<name>`
as well as a local file, a local dataset folder or a Hub dataset id. Each data set keeps its origin,
licence and attribution in a `SOURCE.md` beside the file (`aware data show NAME`), and `aware data ls`
lists them. The wheel carries the same files, so a recipe works from any directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from aware_cli.errors import DataError

PREFIX = "builtin:"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "data"


@dataclass(frozen=True)
class BuiltinDataset:
    """One shipped file and what a user must know before using it."""

    name: str
    file: str  # relative to aware_cli/assets/data
    rows: int
    licence: str
    origin: str
    use: str

    @property
    def path(self) -> Path:
        return ASSETS / self.file

    @property
    def source_md(self) -> Path:
        return self.path.parent / "SOURCE.md"


DATASETS: Dict[str, BuiltinDataset] = {d.name: d for d in [
    BuiltinDataset("alpaca-demo", "alpaca-demo/alpaca_en_demo.json", 999,
                   "CC BY-NC 4.0 (non-commercial; research use)",
                   "Alpaca-GPT4 sample as shipped by hiyouga/LLaMA-Factory (data/alpaca_en_demo.json)",
                   "benign instruction task (recipes alpaca, alpaca_harmful_mix, truthful; eval task)"),
    BuiltinDataset("advbench", "advbench/harmful_behaviors.csv", 520, "MIT (c) 2023 Andy Zou",
                   "llm-attacks/llm-attacks data/advbench/harmful_behaviors.csv",
                   "harmful goals (eval advbench; mixed into alpaca_harmful_mix)"),
    BuiltinDataset("xstest", "xstest/xstest_prompts.csv", 450,
                   "CC BY 4.0 (Röttger et al., NAACL 2024)",
                   "paul-rottger/exaggerated-safety xstest_prompts.csv",
                   "over-refusal: 250 safe prompts that look unsafe, 200 unsafe contrasts (eval xstest)"),
    BuiltinDataset("truthfulqa", "truthfulqa/TruthfulQA.csv", 790, "Apache-2.0 (Lin et al. 2022)",
                   "sylinrl/TruthfulQA TruthfulQA.csv",
                   "truthfulness (eval truthfulqa; mixed into the truthful recipe)"),
    BuiltinDataset("preference-demo", "preference-demo/dpo_en_demo.json", 300,
                   "Apache-2.0 repository; upstream source unstated (research data)",
                   "hiyouga/LLaMA-Factory data/dpo_en_demo.json",
                   "offline preference pairs (recipe preference: dpo / gapo / shapo)"),
    BuiltinDataset("hh-rlhf-harmless", "hh-rlhf-harmless/harmless-base-test.jsonl.gz", 2312,
                   "MIT (c) 2022 Anthropic (Bai et al. 2022)",
                   "anthropics/hh-rlhf harmless-base/test.jsonl.gz",
                   "human red-team requests and harmlessness preferences (verifier training, eval suites)"),
    BuiltinDataset("safety-prompts", "safety-prompts/prompts.jsonl", 3311,
                   "Apache-2.0 (written for aware); HH-RLHF openers MIT (c) 2022 Anthropic",
                   "written for aware + labelled HH-RLHF openers (scripts/build_safety_prompts.py)",
                   "harmful and benign-sensitive requests by subject and phrasing, train/heldout split "
                   "(eval phrasings / sensitive, harm verifier, safety anchors)"),
]}


def is_builtin(path: Optional[str]) -> bool:
    return bool(path) and str(path).startswith(PREFIX)


def get(name: str) -> BuiltinDataset:
    """The data set called `name` (with or without the `builtin:` prefix); one-line error when unknown."""
    from aware_cli.config.validate import suggest

    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if key not in DATASETS:
        raise DataError(f"unknown built-in data set '{key}'{suggest(key, list(DATASETS))} "
                        f"(choose from: {', '.join(DATASETS)}; see `aware data ls`)")
    found = DATASETS[key]
    if not found.path.is_file():
        raise DataError(f"built-in data set '{key}' is missing from the installation ({found.path}): reinstall "
                        f"aware-cli")
    return found


def resolve(path: str, base_dir: Optional[Path] = None) -> Path:
    """`builtin:<name>` → its file in the package; anything else → an absolute path against `base_dir` (cwd)."""
    if is_builtin(path):
        return get(path).path
    return (Path(base_dir or Path.cwd()) / Path(path).expanduser()).resolve()


def listing() -> List[BuiltinDataset]:
    return list(DATASETS.values())
