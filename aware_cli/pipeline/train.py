"""The training loop: load everything, run `train_step` max_steps times, log, evaluate, checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aware_cli.config import Composed
from aware_cli.config.schema import AwareConfig
from aware_cli.errors import AwareError, ConfigError
from aware_cli.data import Example, TruncationStats, build_prompt_ids, build_response_ids
from aware_cli.data.anchors import anchor_unit, anchors_for_step, load_anchors, used_anchors
from aware_cli.data.mix import load_training_data
from aware_cli.data.preference import offline_training_data
from aware_cli.models import (base_model_path, count_parameters, load_model, resolve_device, sampling_dtype,
                              save_model, trainable_parameters, training_precision, weights_dtype)
from aware_cli.models.checkpoint import load_trainable_state
from aware_cli.pipeline import rundir
from aware_cli.pipeline.evaluate import evaluate
from aware_cli.pipeline.monitor import ALIGN_PLOT, RunMonitor
from aware_cli.pipeline.parallel import distributed
from aware_cli.pipeline.parallel import fsdp
from aware_cli.pipeline.objectives import get_objective
from aware_cli.pipeline.step import Policy, summarize, train_step
from aware_cli.pipeline.update import build_optimizer, build_scheduler
from aware_cli.verifiers import build_verifier


def batch_for_step(step: int, num_examples: int, batch_size: int, seed: int) -> List[int]:
    """Indices of the step's batch: consecutive slices of per-epoch seeded permutations.

    A pure function of the step, so a resumed run sees exactly the data it would have seen.
    """
    indices = []
    position = step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(position, num_examples)
        order = list(range(num_examples))
        random.Random(seed * 7919 + epoch).shuffle(order)
        take = min(batch_size - len(indices), num_examples - offset)
        indices.extend(order[offset:offset + take])
        position += take
    return indices


def build_policy(cfg: AwareConfig, model, tokenizer, examples: List[Example], device: torch.device, *,
                 ranks: Optional[distributed.Ranks] = None, precision: str = "fp32",
                 anchors_per_step: int = 0) -> Tuple[Policy, TruncationStats]:
    """The `Policy` a step trains (tokenised examples, optimizer, schedule, verifier) around a loaded model
    (already resumed and sharded when it is); with the truncation counts of the examples."""
    prompt_ids, target_ids, truncated = encode_examples(cfg, tokenizer, examples)
    rejected_ids = encode_rejected(cfg, tokenizer, examples, truncated)
    refusal_ids = [build_response_ids(tokenizer, r, max_tokens=cfg.data.max_response_tokens)[0]
                   for r in cfg.gate.refusals]
    params = trainable_parameters(model)
    optimizer = build_optimizer(params, cfg.trainer)
    scheduler = build_scheduler(optimizer, cfg.trainer)
    verifier = build_verifier(cfg.verifier, device)  # on the policy's device unless verifier.device says
    if cfg.gate.refusal_source == "verifier" and verifier.refusal_writer() is None:
        raise ConfigError(f"gate.refusal_source=verifier: verifier '{cfg.verifier.name}' cannot write "
                          f"refusals (harm, guard_lm and http_judge can); use gate.refusal_source=template")
    policy = Policy(cfg=cfg, model=model, tokenizer=tokenizer, verifier=verifier,
                    optimizer=optimizer, scheduler=scheduler, params=params, device=device,
                    prompt_ids=prompt_ids, target_ids=target_ids, refusal_ids=refusal_ids, rejected_ids=rejected_ids,
                    dual=cfg.gate.dual_init if cfg.gate.mode == "lagrangian" else 1.0,
                    ranks=ranks or distributed.Ranks(), precision=precision, anchors_per_step=anchors_per_step)
    return policy, truncated


def encode_examples(cfg: AwareConfig, tokenizer, examples: List[Example]):
    """Chat-formatted prompt ids and EOS-terminated target ids for every example, plus truncation counts."""
    stats = TruncationStats()
    prompts, targets = {}, {}
    for ex in examples:
        prompts[ex.id], cut_p = build_prompt_ids(tokenizer, ex.prompt, chat_template=cfg.model.chat_template,
                                                 system_prompt=cfg.model.system_prompt,
                                                 max_tokens=cfg.data.max_prompt_tokens,
                                                 history=ex.meta.get("history"))
        targets[ex.id], cut_r = build_response_ids(tokenizer, ex.response, max_tokens=cfg.data.max_response_tokens)
        stats.prompts += cut_p
        stats.responses += cut_r
    return prompts, targets, stats


def encode_rejected(cfg: AwareConfig, tokenizer, examples: List[Example], stats: TruncationStats):
    """EOS-terminated ids of the offline pairs' rejected responses (meta["rejected"]), counted in `stats`."""
    rejected = {}
    for ex in examples:
        if "rejected" in ex.meta:
            rejected[ex.id], cut = build_response_ids(tokenizer, ex.meta["rejected"],
                                                      max_tokens=cfg.data.max_response_tokens)
            stats.responses += cut
    return rejected


def check_context(cfg: AwareConfig, model) -> None:
    """Prompt + response lengths must fit the model's context window."""
    context = getattr(model.config, "max_position_embeddings", None)
    longest = cfg.data.max_prompt_tokens + max(cfg.sampling.max_new_tokens, cfg.data.max_response_tokens)
    if context and longest > context:
        raise ConfigError(f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + response length "
                          f"(sampling.max_new_tokens={cfg.sampling.max_new_tokens}, data.max_response_tokens="
                          f"{cfg.data.max_response_tokens}) = {longest} exceeds the model's context of {context} tokens")


def resume_command(cfg: AwareConfig, run_dir: Path) -> str:
    """The command that continues this run from its newest checkpoint (config.yaml is the resolved config).

    Keys that only the command line may turn on (`config.CLI_ONLY_KEYS`) are repeated when set.
    """
    from aware_cli.config.compose import cli_only_settings

    extra = "".join(f" {key}=true" for key in cli_only_settings(cfg))
    return f"aware train recipe={run_dir / 'config.yaml'} output_dir={run_dir} resume=auto{extra}"


def run_training(composed: Composed, console: Optional[Console] = None, *, base_dir: Optional[Path] = None) -> Path:
    """Train the recipe; returns the run directory.

    Rank 0 checks, creates and locks the run directory (a second run on it is refused while this
    one holds the lock); a failure on any rank stops every rank with one message.
    """
    cfg = composed.config
    ranks = distributed.init_ranks()
    console = console or Console()
    if not ranks.is_main:  # one voice: rank 0 prints and writes the run directory
        console = Console(quiet=True)
    run_dir = Path(cfg.output_dir) if cfg.output_dir else rundir.default_output_dir(cfg.recipe)
    run_dir = distributed.broadcast(run_dir, ranks)
    lock, error = None, None
    if ranks.is_main:
        try:
            lock = rundir.open_run_dir(run_dir, composed.resolved, resume=cfg.resume, overwrite=cfg.overwrite)
            rundir.set_status(run_dir, "running")
        except Exception as e:  # noqa: BLE001 - reported on every rank by `agree`
            error = e
            if lock is not None:
                lock.release()
    distributed.agree(error, ranks)
    try:
        _train(cfg, run_dir, console, base_dir, ranks)
    except (KeyboardInterrupt, RunInterrupted):
        if ranks.is_main:
            rundir.set_status(run_dir, "interrupted")
        raise
    except BaseException as e:
        if ranks.is_main:
            saved = [p for p in rundir.list_checkpoints(run_dir) if (p / rundir.COMPLETE).is_file()]
            resume = resume_command(cfg, run_dir) if saved else None
            rundir.set_status(run_dir, "failed", error=_describe(e), checkpoint=str(saved[-1]) if saved else None,
                              resume=resume)
            if resume:
                console.print(escape(f"run failed; its newest checkpoint is {saved[-1]}; after fixing the cause, "
                                     f"resume with: {resume}"), highlight=False, soft_wrap=True)
        raise
    finally:
        if lock is not None:
            lock.release()
    if ranks.is_main:
        rundir.set_status(run_dir, "completed")
    distributed.close(ranks)
    return run_dir


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, AwareError) else f"{type(e).__name__}: {e}"


def _train(cfg: AwareConfig, run_dir: Path, console: Console, base_dir: Optional[Path],
           ranks: distributed.Ranks) -> None:
    main = ranks.is_main
    if ranks.enabled and torch.cuda.is_available():  # one GPU per rank
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=f"cuda:{ranks.local_rank}"))
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    setup_error: Optional[BaseException] = None
    try:  # every rank loads data and model; a failure on any of them stops all with one message
        torch.manual_seed(cfg.trainer.seed)
        offline = cfg.objective.pairs_path
        data = offline_training_data(cfg, base_dir) if offline else load_training_data(cfg.data, base_dir=base_dir)
        train_set, eval_set = data.train, data.held_out
        examples = train_set + eval_set
        if main:
            rundir.write_atomic(run_dir / "split.json", json.dumps(data.split, indent=1) + "\n")
        samples = get_objective(cfg.objective.name).sampled(cfg)
        anchors = load_anchors(cfg.data.anchors, cfg.data, base_dir) if samples else []
        mixed = len(data.split.get("train_ids", []))
        console.print(f"data: {len(train_set)} training / {len(eval_set)} held-out preference pairs from {offline}"
                      if offline else
                      f"data: {len(train_set)} training ({mixed} from {cfg.data.mix.path}) / {len(eval_set)} held-out "
                      f"rows from {cfg.data.path}" if mixed else
                      f"data: {len(train_set)} training / {len(eval_set)} held-out rows from {cfg.data.path}")

        device = resolve_device(cfg.model.device)
        sharded = ranks.enabled and cfg.trainer.parallel == "fsdp2"
        cfg, model, tokenizer, precision = load_for_training(cfg, device, sharded=sharded)
        trainable, total = count_parameters(model)
        console.print(f"model: {cfg.model.name_or_path} on {device} ({trainable:,} trainable of {total:,} "
                      f"parameters, {precision} precision, sampling from "
                      f"{'the weights as trained' if cfg.sampling.dtype == 'model' else cfg.sampling.dtype + ' weights'})")
        check_context(cfg, model)
        if anchors:  # their reference answers: the base model's, before any trained weights are loaded
            anchors = anchor_answers(cfg, model, tokenizer, anchors, run_dir, ranks, console)
            examples = examples + anchors
        ckpt, warnings = rundir.resolve_resume(run_dir, cfg.resume)
        if ckpt is not None:  # into the whole model, before any sharding
            load_trainable_state(model, ckpt)
        if sharded:
            fsdp.check_config(cfg)
            layers = fsdp.shard_model(model, device)
            console.print(f"fsdp2: {layers} decoder layers and the root module sharded over {ranks.world} ranks")
        policy, truncated = build_policy(cfg, model, tokenizer, examples, device, ranks=ranks, precision=precision,
                                         anchors_per_step=cfg.data.anchors.per_step if anchors else 0)
        if truncated.prompts or truncated.responses:
            console.print(f"truncated: {truncated.prompts} prompts > {cfg.data.max_prompt_tokens} tokens, "
                          f"{truncated.responses} responses > {cfg.data.max_response_tokens} tokens")
        params, optimizer, scheduler = policy.params, policy.optimizer, policy.scheduler
        prompt_ids, target_ids = policy.prompt_ids, policy.target_ids

        start = 0
        for warning in warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if ckpt is not None:
            optim = fsdp.UnshardedOptimizer(model, optimizer) if sharded else optimizer
            state = rundir.load_training_state(ckpt, optim, scheduler)
            start, policy.dual = state["step"], state["dual"]
            policy.state = unpack_objective_state(state.get("objective_state"), params)
            console.print(f"resumed from {ckpt} at step {start}")
            if main:  # checkpoints after `start` (and final/) belong to the timeline this resume abandons
                dropped = rundir.drop_later_checkpoints(run_dir, start)
                if (run_dir / "final").is_dir() and start < cfg.trainer.max_steps:
                    shutil.rmtree(run_dir / "final")
                    dropped.append(f"removed {run_dir / 'final'}: it is rewritten when this run completes")
                for message in dropped:
                    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
        policy.updates = start
        if main:
            rundir.remove_temporaries(run_dir)
            rundir.truncate_jsonl(run_dir / "metrics.jsonl", start)
            rundir.truncate_jsonl(run_dir / "samples.jsonl", start)
        monitor = RunMonitor(cfg, run_dir, console, main=main, start=start)
        monitor.prepare_suites(tokenizer, eval_set, prompt_ids, data.split, device)
    except Exception as e:  # noqa: BLE001 - reported on every rank by `agree`
        setup_error = e
    distributed.agree(setup_error, ranks)

    base = base_model_path(cfg.model)

    def save_weights(path: Path, state: Optional[Dict[str, torch.Tensor]] = None) -> None:
        save_model(model, tokenizer, path, base_model_path=base, state_dict=state)

    def checkpoint(done: int, rng: Optional[Dict[str, Any]] = None,
                   objective_state: Optional[Dict[str, Any]] = None) -> Path:
        path = run_dir / "checkpoints" / f"step-{done}"
        # fsdp2: every rank joins in gathering whole weights and optimizer state for rank 0
        weights = fsdp.full_model_state(model) if sharded else None
        optim = fsdp.UnshardedOptimizer(model, optimizer).gather() if sharded else optimizer
        if main:  # every rank holds the same weights: rank 0 writes them
            rundir.save_checkpoint(run_dir, done, lambda p: save_weights(p, weights), optim, scheduler,
                                   {"step": done, "dual": policy.dual}, keep_last=cfg.trainer.keep_last, rng=rng,
                                   objective_state=pack_objective_state(
                                       policy.state if objective_state is None else objective_state))
        distributed.barrier(ranks)
        return path

    def save_best() -> None:
        weights = fsdp.full_model_state(model) if sharded else None
        if main:
            monitor.save_best(lambda p: save_weights(p, weights))
        distributed.barrier(ranks)

    def opened(name: str):
        return open(run_dir / name, "a") if main else contextlib.nullcontext()

    if start == 0 and cfg.eval.before and cfg.eval.suites:
        with fsdp.gathered(model):  # every rank joins the all-gather, rank 0 evaluates
            monitor.before(model)
    model.train()
    nonfinite_in_a_row = 0
    metrics: Dict[str, Any] = {}
    # `sound`: the weights, optimizer and objective state are those after `sound` steps, every one of
    # them logged; a failure then leaves a state worth a checkpoint (see `_save_on_failure`)
    sound, saved = start, start
    rng, state_before = rundir.rng_snapshot(), dict(policy.state)
    try:
        with monitor.trackers() as tb, opened("metrics.jsonl") as metrics_file, opened("samples.jsonl") as samples_file, \
                _progress(console) as progress, StopSignals() as stop:
            task = progress.add_task("train", total=cfg.trainer.max_steps, completed=start, info="")
            for step in range(start, cfg.trainer.max_steps):
                rng, state_before = rundir.rng_snapshot(), dict(policy.state)
                rows = [train_set[i] for i in batch_for_step(step, len(train_set), cfg.trainer.batch_size,
                                                             cfg.trainer.seed)]
                if anchors:
                    rows += [anchors[i] for i in anchors_for_step(step, len(anchors), policy.anchors_per_step,
                                                                  cfg.trainer.seed, anchor_unit(cfg.data.anchors))]
                batch = distributed.shard(rows, ranks)
                records, scalars = train_step(policy, batch, step)
                records = [r for part in distributed.gather(records, ranks) for r in part]
                metrics = summarize(records, distributed.gather(scalars, ranks))
                done = step + 1
                evaluated = (cfg.eval.every and done % cfg.eval.every == 0) or done == cfg.trainer.max_steps
                if evaluated:
                    with fsdp.gathered(model):  # fsdp2: every rank joins the all-gather, rank 0 evaluates
                        if main:
                            metrics.update(evaluate(model, tokenizer, policy.verifier, eval_set, prompt_ids,
                                                    target_ids, cfg.eval, device))
                            metrics.update(monitor.suites(model))
                if main:
                    _log(metrics, records, metrics_file, samples_file, tb)
                if evaluated:
                    monitor.after_evaluation(tb, done)
                    if distributed.broadcast(monitor.improves(metrics), ranks):
                        save_best()
                sound, rng = done, None  # the state after this step is complete and logged
                nonfinite_in_a_row = nonfinite_in_a_row + 1 if metrics["skipped"] else 0
                if metrics["skipped"]:
                    console.print(f"[yellow]warning:[/] step {done}: non-finite loss or gradient, update skipped")
                if nonfinite_in_a_row >= cfg.trainer.max_nonfinite_steps:
                    raise distributed.on_every_rank(NumericalError(
                        f"{nonfinite_in_a_row} steps in a row had a non-finite loss or gradient (up to step {done}); "
                        f"lower trainer.lr or check the data "
                        f"(trainer.max_nonfinite_steps={cfg.trainer.max_nonfinite_steps})"))
                if cfg.trainer.save_every and done % cfg.trainer.save_every == 0 and done < cfg.trainer.max_steps:
                    checkpoint(done)
                    saved = done
                progress.update(task, advance=1, info=_progress_info(metrics))
                if done % cfg.trainer.log_every == 0 and not console.is_terminal:
                    console.print(f"step {done}/{cfg.trainer.max_steps} {_progress_info(metrics)}")
                if distributed.broadcast(stop.signal_name, ranks) and done < cfg.trainer.max_steps:
                    saved_path = checkpoint(done)
                    saved = done
                    raise RunInterrupted(f"stopped by {stop.signal_name} after step {done}; checkpoint {saved_path}; "
                                         f"resume with: {resume_command(cfg, run_dir)}")
    except Exception as e:
        # a failure inside a step before its optimizer update (the verifier, the None share, out of memory,
        # a full disk) leaves the state of `sound` steps: keep it. After the update but before the step was
        # logged it does not (the weights are a step ahead of metrics.jsonl): nothing is saved then.
        consistent = policy.updates == sound and sound > saved
        if consistent and (not ranks.enabled or distributed.is_on_every_rank(e)):
            optimizer.zero_grad(set_to_none=True)
            try:
                path = checkpoint(sound, rng=rng, objective_state=state_before if rng is not None else None)
            except Exception as save_error:  # noqa: BLE001 - e.g. the disk is full: report the original error
                console.print(f"[yellow]warning:[/] could not save step {sound} after the failure: "
                              f"{escape(_describe(save_error))}", highlight=False, soft_wrap=True)
            else:
                console.print(escape(f"saved the last completed step: {path}"), highlight=False, soft_wrap=True)
        raise
    final = checkpoint(cfg.trainer.max_steps)
    weights = fsdp.full_model_state(model) if sharded else None
    if main:
        final_dir = rundir.write_dir_atomic(run_dir / "final", lambda p: save_weights(p, weights))
        console.print(f"final weights: {final_dir} (checkpoint {final.name})")
        if (run_dir / ALIGN_PLOT).is_file():
            console.print(f"ALIGN-PLOT: {run_dir / ALIGN_PLOT}")
        summary = monitor.before_after(metrics)
        if summary:
            console.print(summary, highlight=False, soft_wrap=True)
    distributed.barrier(ranks)


def pack_objective_state(state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The objective's tensors for the checkpoint: shapo's saliency mask as `saliency_mask.<i>` (uint8)."""
    mask = state.get("saliency_mask")
    if mask is None:
        return {}
    return {f"saliency_mask.{i}": m.detach().to(torch.uint8) for i, m in enumerate(mask)}


def unpack_objective_state(tensors: Optional[Dict[str, torch.Tensor]], params) -> Dict[str, Any]:
    """`pack_objective_state` inverted onto the trainable parameters (their shapes, dtypes, devices)."""
    if not tensors:
        return {}
    mask = [tensors[f"saliency_mask.{i}"].to(device=p.device, dtype=p.dtype) for i, p in enumerate(params)]
    if any(m.shape != p.shape for m, p in zip(mask, params)):
        raise ConfigError("resume: the checkpoint's saliency mask does not match the model's trainable parameters")
    return {"saliency_mask": mask}


def load_for_training(cfg: AwareConfig, device, *, sharded: bool = False):
    """(cfg, model, tokenizer, precision) for training at `trainer.precision` on `device`: the weights in the
    precision's dtype, and under `mixed` sampling from a cached bf16 copy at the update's compute precision
    (fsdp2 shards: under autocast instead), which is why the returned cfg may differ in `sampling.dtype`."""
    precision = training_precision(cfg.trainer.precision, device)
    model, tokenizer = load_model(cfg.model, device=device,
                                  dtype=weights_dtype(cfg.trainer.precision, cfg.model.dtype, device))
    dtype = sampling_dtype(cfg.sampling.dtype, device, precision, sharded)
    if dtype != cfg.sampling.dtype:
        cfg = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, dtype=dtype))
    return cfg, model, tokenizer, precision


def anchor_answers(cfg: AwareConfig, model, tokenizer, anchors: List[Example], run_dir: Path,
                   ranks: distributed.Ranks, console: Console) -> List[Example]:
    """The anchors this run uses, each with the base model's greedy answer as its reference (anchors.json).

    Greedy decoding of the untrained model is deterministic, so a resumed run reads back what it wrote; rank 0
    answers and broadcasts.
    """
    path = run_dir / "anchors.json"
    used = [anchors[i] for i in used_anchors(len(anchors), cfg.data.anchors.per_step, cfg.trainer.max_steps,
                                              cfg.trainer.seed, anchor_unit(cfg.data.anchors))]
    answers = json.loads(path.read_text()) if path.is_file() else {}
    if ranks.is_main and any(ex.id not in answers for ex in used):
        from aware_cli.pipeline.rollout.sample import generate

        todo = [ex for ex in used if ex.id not in answers]
        device = next(model.parameters()).device
        for start in range(0, len(todo), 16):
            part = todo[start:start + 16]
            ids = [build_prompt_ids(tokenizer, ex.prompt, chat_template=cfg.model.chat_template,
                                    system_prompt=cfg.model.system_prompt, max_tokens=cfg.data.max_prompt_tokens)[0]
                   for ex in part]
            out = generate(model, tokenizer, ids, num_return=1, max_new_tokens=cfg.data.anchors.max_new_tokens,
                           do_sample=False, device=device, dtype=cfg.sampling.dtype)
            answers.update({ex.id: texts[0] for ex, texts in zip(part, out.texts)})
        rundir.write_atomic(path, json.dumps(answers, indent=1, ensure_ascii=False) + "\n")
        console.print(f"anchors: {len(used)} of {len(anchors)} from {cfg.data.anchors.path}, "
                      f"{cfg.data.anchors.per_step} per step; base answers in {path}")
    answers = distributed.broadcast(answers, ranks)
    return [dataclasses.replace(ex, response=answers[ex.id]) for ex in used]


class RunInterrupted(AwareError):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""

    exit_code = 130


class NumericalError(AwareError):
    """Too many consecutive non-finite losses or gradients."""

    exit_code = 3


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step (a second signal stops at once).

    A repeat within `same_request_s` of the first counts as the same request: Ctrl-C under
    `trainer.nproc` reaches a worker twice (from the terminal and forwarded by the launcher).
    """

    same_request_s = 2.0

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._first = 0.0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:  # asked twice: stop now
            if time.monotonic() - self._first < self.same_request_s:
                return
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self._first = time.monotonic()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _log(metrics: Dict[str, Any], records: List[rundir.SampleRecord], metrics_file, samples_file, tb) -> None:
    metrics_file.write(json.dumps({k: _finite_or_none(v) for k, v in metrics.items()}) + "\n")
    metrics_file.flush()
    for record in records:
        samples_file.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    samples_file.flush()
    tb.log_metrics(metrics)  # every tracker of trainer.report_to


def _progress_info(m: Dict[str, Any]) -> str:
    mu = "-" if m.get("mu_mean") is None else f"{m['mu_mean']:.2f}"
    return f"loss {m['loss']:.3f} μ {mu} β {m['beta_mean']:.2f} abstain {m['frac_abstain']:.2f}"


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)
