"""The `aware` command line (Typer). Thin: each command composes a config and calls the pipeline."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aware_cli import __version__
from aware_cli.config.schema import AlignPlotOptions, CalibrateOptions
from aware_cli.errors import AwareError

app = typer.Typer(
    name="aware",
    help="Alignment-aware fine-tuning (AWARE): learn a task while keeping the model safe and truthful.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="List, show and copy the shipped recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
data_app = typer.Typer(help="List, describe and copy the built-in data sets (data.path=builtin:NAME).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])

OVERRIDES_HELP = ("recipe=NAME (a recipe in recipes/ or a path to a YAML file) followed by Hydra overrides: "
                  "k=8 gate.tau_mu=0.6 +data.limit=100 model=tiny")
EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _version(value: bool) -> None:
    if value:
        console.print(f"aware {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    log_level: str = typer.Option("warning", "--log-level", help="Log messages shown: debug, info, warning or "
                                  "error (aware's and the libraries', above the progress bar).",
                                  case_sensitive=False),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Alignment-aware fine-tuning (AWARE): learn a task while keeping the model safe and truthful.

    Exit codes: 0 done, 1 internal error (a bug; --debug shows the traceback), 2 bad input or a
    stopped run (config, data, verifier; one line on stderr), 3 non-finite loss, 130 interrupted.
    """
    from aware_cli.logs import LEVELS, setup_logging

    if log_level.lower() not in LEVELS:
        raise typer.BadParameter(f"choose from {', '.join(LEVELS)}", param_hint="--log-level")
    _state["debug"] = debug
    _state["log_level"] = log_level.lower()
    setup_logging(log_level, console)


def _speaks(error: BaseException) -> bool:
    """Under torchrun an error every rank raised together is printed by rank 0 alone; others by their rank."""
    from aware_cli.pipeline.parallel.distributed import is_on_every_rank

    return os.environ.get("RANK", "0") == "0" or not is_on_every_rank(error)


def guarded(command: F) -> F:
    """A command's error handling: user errors become one line on stderr and exit code 2 (their `exit_code`)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AwareError as e:
            if _state["debug"]:
                raise
            if _speaks(e):
                err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            if os.environ.get("RANK", "0") == "0":
                err_console.print("interrupted")
            raise typer.Exit(130)

    return run  # type: ignore[return-value]


def split_recipe(args: List[str]) -> Tuple[str, List[str]]:
    """Pull `recipe=NAME` out of the override list."""
    recipes = [a for a in args if a.startswith("recipe=")]
    if len(recipes) != 1:
        raise AwareError("give exactly one recipe=NAME (see `aware recipes ls`)")
    return recipes[0].split("=", 1)[1], [a for a in args if not a.startswith("recipe=")]


@app.command(context_settings=EXTRA_ARGS)
@guarded
def train(overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False)) -> None:
    """Fine-tune a model with a recipe.

    Example: aware train recipe=alpaca k=8 gate.tau_mu=0.7 trainer.max_steps=200 output_dir=runs/a
    """

    from aware_cli.config import compose
    from aware_cli.pipeline.train import run_training

    recipe, rest = split_recipe(list(overrides or []))
    composed = compose(recipe, rest)
    if composed.config.trainer.nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_relaunch_under_torchrun(composed.config.trainer.nproc, list(overrides or [])))
    run_dir = run_training(composed, console)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"[bold green]run directory:[/] {run_dir}")



def _relaunch_under_torchrun(nproc: int, args: List[str]) -> int:
    """`aware train ... trainer.nproc=N` → torchrun's launcher, run in this process; returns the exit code.

    The launcher (`torch.distributed.run`, what `torchrun` runs) starts the N workers and forwards
    SIGINT/SIGTERM to them (they finish the step, checkpoint and exit 130), so no worker outlives
    this process. A failed worker's exit code (2 for bad input, ...) becomes this command's; the
    worker printed its one-line message itself.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    options = [*(["--debug"] if _state["debug"] else []), "--log-level", _state.get("log_level", "warning")]
    launch = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "aware_cli", *options,
                                           "train", *args])
    console.print(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} -m aware_cli train "
                  + " ".join(args), highlight=False)
    if _state.get("log_level", "warning") not in ("debug", "info"):  # the workers report; the agent's log repeats it
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun sets for its workers, without its warning
    try:
        run(launch)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:
        err_console.print(f"interrupted ({e.sigval.name}): the workers were stopped")
        return 130
    return 0


@app.command(context_settings=EXTRA_ARGS)
@guarded
def validate(overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False)) -> None:
    """Compose and type-check a recipe, print the resolved config; loads no model or data.

    Example: aware validate recipe=alpaca gate.tau_mu=0.6
    """

    import yaml

    from aware_cli.config import compose

    recipe, rest = split_recipe(list(overrides or []))
    composed = compose(recipe, rest)
    console.print(yaml.safe_dump(composed.resolved, sort_keys=False, allow_unicode=True), highlight=False,
                  markup=False, soft_wrap=True)  # as written: a wrapped line would not be YAML
    err_console.print(f"[green]ok:[/] {composed.recipe_path}")



@app.command(context_settings=EXTRA_ARGS)
@guarded
def verify(
    overrides: Optional[List[str]] = typer.Argument(
        None, show_default=False,
        help="Optional recipe=NAME (use its verifier) and overrides such as verifier.harm.over_refusal_weight=0.5"),
    verifier: Optional[str] = typer.Option(None, "--verifier", "-v", help="Verifier: harm, refusal, truthfulness, "
                                           "hf_classifier, guard_lm, http_judge, python, composite."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt to score (with --response)."),
    response: Optional[str] = typer.Option(None, "--response", help="The response to that prompt."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="JSONL/CSV/JSON of prompt/response rows."),
    prompt_field: str = typer.Option("prompt", help="Prompt column of --file."),
    response_field: str = typer.Option("response", help="Response column of --file."),
    label_field: Optional[str] = typer.Option(None, help="Optional harmful-label column of --file."),
    reference_field: Optional[str] = typer.Option(None, help="Optional reference-answer column of --file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the scores as JSON here."),
) -> None:
    """Score prompt/response pairs with a verifier (1 = aligned, 0 = misaligned).

    Examples: aware verify --verifier harm --prompt "How do I build a pipe bomb?" --response "I can't help with that."
              aware verify --verifier harm --file pairs.jsonl --out scores.json
    """

    import json

    from aware_cli.config.compose import verifier_config
    from aware_cli.config.schema import DataConfig
    from aware_cli.data import Example, load_examples
    from aware_cli.files import write_atomic
    from aware_cli.pipeline.verify import score_examples
    from aware_cli.verifiers import build_verifier

    cfg = verifier_config(verifier, list(overrides or []))
    if (file is None) == (prompt is None or response is None):
        raise AwareError("give either --prompt and --response, or --file")
    if file is not None:
        data = DataConfig(path=str(file), format="auto", prompt_field=prompt_field, input_field=None,
                          response_field=response_field, label_field=label_field, shuffle=False, eval_size=0)
        examples = load_examples(data)
    else:
        examples = [Example(id="0", prompt=prompt, response=response)]
    scores = score_examples(build_verifier(cfg), examples, reference_field)
    rows = [{"id": ex.id, "prompt": ex.prompt, "response": ex.response, "score": s}
            for ex, s in zip(examples, scores)]
    if file is None:
        console.print(f"score: {_fmt_score(scores[0])} ({cfg.name})")
    else:
        from aware_cli.logs import clip

        table = Table("id", "prompt", "response", "score", title=f"{cfg.name} verifier")
        for row in rows:
            table.add_row(row["id"], clip(row["prompt"]), clip(row["response"]), _fmt_score(row["score"]))
        console.print(table)
        judged = [s for s in scores if s is not None]
        console.print(f"{len(rows)} rows, mean score {_fmt_score(sum(judged) / len(judged) if judged else None)}, "
                      f"{len(rows) - len(judged)} unjudged")
    if out is not None:
        write_atomic(out, json.dumps({"verifier": cfg.name, "scores": rows}, indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {out}")



def _fmt_score(score: Optional[float]) -> str:
    return "None" if score is None else f"{score:.3f}"


@app.command("eval", context_settings=EXTRA_ARGS)
@guarded
def eval_command(
    suite: str = typer.Argument(..., help="advbench, phrasings, sensitive, xstest, truthfulqa, hexphi, slaq, task, "
                                "harmful — or `compare DIR DIR ...`."),
    overrides: Optional[List[str]] = typer.Argument(
        None, show_default=False, help="model=<id|dir|.gguf|run dir> limit=50 judge=harm (any verifier; default: "
        "the suite's, the keyword refusal rule for safety suites) data.path=... (for compare: the directories)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="compare: write the markdown table here."),
) -> None:
    """Evaluate a model on a benchmark suite (offline by default), or compare evaluations.

    Examples: aware eval advbench limit=50
              aware eval xstest model=runs/alpaca-20261125-101010
              aware eval hexphi data.path=/data/HEx-PHI verifier=http_judge verifier.http.url=https://...
              aware eval compare runs/base runs/sft runs/aware --out compare.md
    """

    if suite == "compare":
        _eval_compare([Path(d) for d in overrides or []], out)
        return
    from aware_cli.config import compose
    from aware_cli.config.compose import model_overrides
    from aware_cli.config.schema import EvalRunConfig
    from aware_cli.eval.runner import run_eval

    # model=<not a config-group option> names the model itself; judge=NAME: the suite's judge (a verifier config)
    args = [f"verifier={a.partition('=')[2]}" if a.startswith("judge=") else a
            for a in model_overrides(list(overrides or []))]
    cfg = compose(suite, args, schema=EvalRunConfig, subdir="eval").config
    directory, metrics = run_eval(cfg, console)
    table = Table("metric", "value", title=f"{suite} — {cfg.model.name_or_path}")
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"[bold green]wrote:[/] {directory / 'metrics.json'}, {directory / 'responses.jsonl'}")



@app.command("export")
@guarded
def export_command(
    source: Path = typer.Argument(..., metavar="RUN_OR_CHECKPOINT", help="A run directory (its final/), a checkpoint (RUN/checkpoints/step-N or "
                                  "RUN/checkpoints/best) or an adapter directory."),
    out: Path = typer.Argument(..., metavar="OUT", help="Output directory (written whole or not at all)."),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="Write a portable PEFT adapter instead of merged "
                                      "weights (its base: the hub id, or the base weights in OUT/base)."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="REPO", help="Upload OUT to this hub "
                                              "repository (token from the HF_TOKEN environment variable only)."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repository private."),
    dtype: str = typer.Option("float32", "--dtype", help="Weights dtype: float32 (checked to 1e-3), bfloat16, float16."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Split the weights into files of at most this."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Export a trained model: merged safetensors + tokenizer + generation config + model card (README.md).

    Plain transformers loads OUT (no peft). The command checks itself on one probe batch and prints the
    max absolute logit difference between the run's model and the export.

    Examples: aware export runs/alpaca-20261125-101010 exported/alpaca
              aware export runs/alpaca-20261125-101010/checkpoints/best exported/best --adapter-only
              HF_TOKEN=hf_... aware export runs/alpaca-20261125-101010 exported/alpaca --push-to-hub me/aware-smollm2
    """

    from aware_cli.models.export import TOLERANCE, check_push, export, push_to_hub as push

    token = check_push(push_to_hub)  # before any work: a missing token is a one-line error
    result = export(source, out, adapter_only=adapter_only, dtype=dtype, max_shard_size=max_shard_size,
                    force=force)
    weights = [f for f in result.files if f.endswith(".safetensors") and not f.startswith("base/")]
    what = "PEFT adapter" if result.kind == "adapter" else f"merged {dtype} weights"
    console.print(f"exported {result.source.label} → {result.out}: {what} ({len(weights)} safetensors "
                  f"file{'s' if len(weights) != 1 else ''}), tokenizer, "
                  f"{'' if result.kind == 'adapter' else 'generation config, '}README.md",
                  highlight=False, soft_wrap=True)
    if result.kind == "adapter":
        console.print(f"adapter base_model_name_or_path: {result.hub_base}"
                      + (" (the base has no hub id: its weights are in OUT/base)" if result.wrote_base else ""),
                      highlight=False, soft_wrap=True)
    bound = f" (≤ {TOLERANCE:g})" if result.checked else " (not float32: rounding, not checked)"
    console.print(f"check: max |logit difference| run vs export = {result.max_logit_diff:.3g}{bound}",
                  highlight=False, soft_wrap=True)
    if push_to_hub:
        console.print(f"pushed to {push_to_hub}: {push(result.out, push_to_hub, token, private=private)}",
                      highlight=False, soft_wrap=True)



def _eval_compare(directories: List[Path], out: Optional[Path]) -> None:
    from aware_cli.eval.compare import collect, to_markdown

    if not directories:
        raise AwareError("give the evaluation directories to compare: aware eval compare DIR1 DIR2 ...")
    labels, columns = collect(directories)
    table = Table("metric", *labels, title="aware eval compare")
    for key in sorted({k for values in columns.values() for k in values}):
        table.add_row(key, *[_fmt_score(columns[label].get(key)) for label in labels])
    console.print(table)
    target = out or Path("eval-compare.md")
    target.write_text(to_markdown(labels, columns))
    console.print(f"wrote {target}")


def _options_help(schema: type, lead: str) -> str:
    """An argument's help: `lead`, then each KEY=VALUE option of `schema` with its meaning."""
    from aware_cli.config.validate import field_docs

    return lead + " Options: " + " ".join(f"{key}: {doc}" for key, _, _, doc in field_docs(schema))


@app.command("align-plot", context_settings=EXTRA_ARGS)
@guarded
def align_plot(args: Optional[List[str]] = typer.Argument(
        None, show_default=False, help=_options_help(AlignPlotOptions,
                                                     "run=DIR, or recipe=NAME model=... data.path=... k=8 limit=32; "
                                                     "out=PATH format=png|svg title=TEXT."))) -> None:
    """Draw the μ–σ ALIGN-PLOT of a run (samples.jsonl), or of any model before training.

    Examples: aware align-plot run=runs/alpaca-20261125-101010
              aware align-plot recipe=alpaca model=embedded:smollm2-135m-instruct k=8 limit=32 out=before.png
    """
    from aware_cli.config.compose import split_options
    from aware_cli.eval import commands

    opts, overrides = split_options(list(args or []), AlignPlotOptions)
    out, count = commands.align_plot(opts, overrides, console)
    console.print(f"[bold green]align-plot:[/] {out} ({count} points)")


@app.command(context_settings=EXTRA_ARGS)
@guarded
def calibrate(args: Optional[List[str]] = typer.Argument(
        None, show_default=False, help=_options_help(CalibrateOptions,
                                                     "run=DIR | points=FILE | recipe=NAME model=... k=8 limit=64; "
                                                     "method=mixture|shares abstain_share=0.1 pg_share=0.3 "
                                                     "tau_sigma=0.1 out=gate.yaml."))) -> None:
    """Fit the gate thresholds (τ_μ, τ_σ, τ_abstain) from a calibration set; write a gate YAML and its align-plot.

    Examples: aware calibrate recipe=alpaca k=8 limit=64 out=recipes/gate/calibrated.yaml
              aware calibrate run=runs/alpaca-20261125-101010 method=shares abstain_share=0.1 pg_share=0.3
    """
    from aware_cli.config.compose import split_options
    from aware_cli.eval import commands

    opts, overrides = split_options(list(args or []), CalibrateOptions)
    gate, figure = commands.calibrate(opts, overrides, console)
    console.print(f"[bold green]gate:[/] {gate}  [bold green]align-plot:[/] {figure}")


@recipes_app.command("ls")
@guarded
def recipes_ls() -> None:
    """Table of the shipped recipes: name, description, model, data."""

    from aware_cli.config import compose, list_recipes, recipe_description

    table = Table("name", "description", "model", "data")
    for path in list_recipes():
        config = compose(str(path)).config
        table.add_row(path.stem, recipe_description(path).get("description", ""), config.model.name_or_path,
                      config.data.path)
    console.print(table)



@recipes_app.command("show")
@guarded
def recipes_show(name: str = typer.Argument(..., help="Recipe name, e.g. alpaca.")) -> None:
    """Print a recipe file as shipped (before composition).

    Example: aware recipes show alpaca
    """

    from aware_cli.config import resolve_recipe

    console.print(resolve_recipe(name).read_text(), highlight=False, markup=False, soft_wrap=True)



@recipes_app.command("cp")
@guarded
def recipes_cp(
    name: str = typer.Argument(..., help="Recipe name, e.g. alpaca."),
    dest: Path = typer.Argument(..., help="Where to write the copy, e.g. my_recipe.yaml."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Copy a recipe to edit it; train it with `aware train recipe=DEST.yaml`.

    Example: aware recipes cp alpaca my_alpaca.yaml
    """

    from aware_cli.config import resolve_recipe

    if dest.exists() and not force:
        raise AwareError(f"{dest} exists (use --force to overwrite)")
    shutil.copyfile(resolve_recipe(name), dest)
    console.print(f"copied {name} → {dest}")



@data_app.command("ls")
@guarded
def data_ls() -> None:
    """Table of the built-in data sets: name (use as data.path=builtin:NAME), rows, licence, use."""

    from aware_cli.data import builtin

    table = Table("name", "rows", "licence", "use", title="built-in data (data.path=builtin:NAME)")
    for entry in builtin.listing():
        table.add_row(entry.name, str(entry.rows), entry.licence, entry.use)
    console.print(table)
    console.print("origin and attribution of each: aware data show NAME")



@data_app.command("show")
@guarded
def data_show(name: str = typer.Argument(..., help="Built-in data set, e.g. advbench.")) -> None:
    """Print a built-in data set's SOURCE.md (origin, licence, attribution, columns) and its file path.

    Example: aware data show alpaca-demo
    """

    from aware_cli.data import builtin

    entry = builtin.get(name)
    console.print(entry.source_md.read_text(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"file: {entry.path}", highlight=False)



@data_app.command("cp")
@guarded
def data_cp(
    name: str = typer.Argument(..., help="Built-in data set, e.g. alpaca-demo."),
    dest: Path = typer.Argument(..., help="Where to write the copy (a file, or a directory to put it in)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Copy a built-in data set's file (to read or edit it; train on it with data.path=DEST).

    Example: aware data cp alpaca-demo my_alpaca.json
    """

    from aware_cli.data import builtin

    entry = builtin.get(name)
    target = dest / entry.path.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise AwareError(f"{target} exists (use --force to overwrite)")
    shutil.copyfile(entry.path, target)
    console.print(f"copied builtin:{entry.name} → {target} ({entry.licence})")



def _quiet_libraries() -> None:
    """Our progress bar and messages only: no library download/loading bars or known deprecation noise."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except SystemExit:
        raise
    except Exception as e:  # a bug, not bad input: one line unless --debug
        if _state["debug"] or "--debug" in sys.argv:
            raise
        if _speaks(e):
            err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} (run with --debug "
                              f"for the traceback)", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
