"""AWARE: the gated loss L = mean_x [(1 − β)·L_SFT + β·λ_pg·L_PG], with abstention (docs/algorithm.md).

`GatedObjective` is the update shared with `sft` and `pg`/`grpo`: each input contributes its SFT
target, weighted −(1 − β)/B (0 when the gate dropped the target), and each of its k samples,
weighted −β·λ_pg·A_i/(k·B) (`gate.sample_weights`), and, where refusing scores clearly below the samples
(`gate.over_refusal_penalty`), its refusal y_ref as an unlikelihood term weighted w/B;
`update.backward_gated_loss` forwards and
back-propagates them in chunks, skipping zero weights. The objectives differ in what the step
scores and in the gate: AWARE scores the reference and refusal targets too and gates on (μ, σ).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from aware_cli.config.schema import AwareConfig
from aware_cli.pipeline.gate import NO_TARGET, GroupGate, gate_group, over_refusal_weights, sample_weights
from aware_cli.pipeline.objectives.registry import Objective, Rollout, Update, register_objective
from aware_cli.pipeline.update import WeightedSequence, backward_gated_loss


class GatedObjective(Objective):
    """The gated SFT + PG update on the step's targets and samples (aware, sft, pg, grpo)."""

    def update(self, policy, rollout: Rollout, step: int) -> Update:
        cfg, B, k = policy.cfg, rollout.batch_size, rollout.k
        sequences: List[WeightedSequence] = []
        sft_index: List[int] = []
        for prompt, target, samples, gate in zip(rollout.prompts, rollout.targets, rollout.samples, rollout.gates):
            sft_index.append(len(sequences))
            sft_weight = 0.0 if gate.target == NO_TARGET else -(1.0 - gate.beta) / B
            sequences.append(WeightedSequence(prompt, target, weight=sft_weight))
            weights = sample_weights(gate, cfg.objective.lambda_pg, k, cfg.gate.min_weight)
            for ids, weight in zip(samples, weights):
                sequences.append(WeightedSequence(prompt, ids, weight=-weight / B, is_sample=True))
        if rollout.refusals is not None:  # over-refusal term: + w·(−log(1 − π̄(y_ref))) pushes the refusal down
            weights = over_refusal_weights([g.over_refusal_gap for g in rollout.gates], cfg.gate)
            for prompt, refusal, w in zip(rollout.prompts, rollout.refusals, weights):
                if w:  # after every input's block, so `sft_index` + j still finds the samples
                    sequences.append(WeightedSequence(prompt, refusal, weight=w / B, unlikely=True))
        result = backward_gated_loss(policy.model, sequences, num_samples=max(1, B * k),
                                     pad_id=policy.tokenizer.pad_token_id, device=policy.device,
                                     chunk=cfg.trainer.logprob_batch, kl_coef=cfg.objective.kl_coef)
        # per input: L_SFT and L_PG from the forwarded log-probs
        losses = []
        for first, samples, gate in zip(sft_index, rollout.samples, rollout.gates):
            loss_sft = -result.logprobs[first] if first in result.logprobs else None
            loss_pg = None  # −(1/k) Σ A_i·ℓ(ŷ_i) over the samples the update forwarded (the others weigh ~0)
            forwarded = [j for j in range(len(samples)) if first + 1 + j in result.logprobs]
            if gate.beta > 0 and forwarded:
                loss_pg = -sum(gate.advantages[j] * result.logprobs[first + 1 + j] for j in forwarded) / k
            losses.append((loss_sft, loss_pg))
        return Update(result, losses=losses)


@register_objective("aware")
class Aware(GatedObjective):
    """Gated SFT + PG with abstention; the verifier also scores y* (gate.target_check) and y_ref (gate.abstain)."""

    settles = True

    def scores_targets(self, cfg: AwareConfig) -> bool:
        return self.sampled(cfg) and cfg.gate.target_check

    def scores_refusals(self, cfg: AwareConfig) -> bool:
        return self.sampled(cfg) and cfg.gate.abstain

    def gate(self, scores: Sequence[Optional[float]], cfg: AwareConfig, dual: float, *,
             refusal_score: Optional[float], target_score: Optional[float]) -> GroupGate:
        return gate_group(scores, cfg.gate, dual, refusal_score=refusal_score, target_score=target_score)
