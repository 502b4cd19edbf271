"""GPU sampling: a pre-allocated KV cache and the decode step replayed as one CUDA graph.

On a GPU, an eager decode step of a small model costs hundreds of kernel launches issued one by one
from Python (~20 ms for a 24-layer model), far above the ~1 ms its memory traffic needs. Capturing
the step once as a CUDA graph and replaying it removes that overhead; a graph needs every tensor it
touches at a fixed address, hence:

- `SlotCache`: keys/values of shape [rows, kv heads, prompt + max_new_tokens, head dim] per layer,
  written in place at a slot counter that lives on the device (no host value changes per step);
- the attention mask is ours, 4-D and additive ([rows, 1, queries, slots]), built on the device from
  a boolean "slot holds a real token" table, so transformers' mask code returns it as it is;
- the prompt is prefilled once per prompt (B rows), then its KV copied to the k rows that sample it;
- all B×k rows decode until the last one ends (finished rows are ignored, not removed: a graph's
  shapes are fixed); whether every row has ended is read back every `check_every` steps only.

Sampling (temperature, top-p, the seeded generator) stays outside the graph and is shared with the
dynamic engine (`sampler.sample_next`), so both draw from the same distribution. Without CUDA (or
with `use_graph=False`) the same code runs eagerly: that is how it is tested on CPU against
`model.generate`. `supports_static` lists what it needs of a model; `engine.generate_k` falls back
to the dynamic engine otherwise.
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Sequence

import torch

from aware_cli.models.logprobs import pack_left, position_ids
from aware_cli.pipeline.rollout.sampler import draws, sample_next


class SlotCache:
    """The per-layer KV tensors of a fixed-size cache; `update` is what transformers' attention layers call."""

    def __init__(self, length: int, device: torch.device) -> None:
        self.length = length
        self.slot = torch.zeros((), dtype=torch.long, device=device)  # next slot to write, on the device
        self.keys: List[torch.Tensor] = []
        self.values: List[torch.Tensor] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx == len(self.keys):  # first call of a layer (the prefill) allocates it
            rows, heads, _, dim = key_states.shape
            self.keys.append(key_states.new_zeros((rows, heads, self.length, dim)))
            self.values.append(value_states.new_zeros((rows, heads, self.length, value_states.shape[-1])))
        index = self.slot + torch.arange(key_states.shape[-2], device=key_states.device)
        self.keys[layer_idx].index_copy_(2, index, key_states)
        self.values[layer_idx].index_copy_(2, index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def repeat_rows(self, k: int) -> None:
        """Row b → rows b·k … b·k+k−1 (the prefilled prompt, copied to its k samples)."""
        self.keys = [t.repeat_interleave(k, dim=0) for t in self.keys]
        self.values = [t.repeat_interleave(k, dim=0) for t in self.values]

    # transformers asks a cache these when it builds masks or positions itself; we pass both, but
    # answer sensibly in case a model asks anyway
    def get_seq_length(self, layer_idx: int = 0):
        return self.slot

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.length


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_argument(model) -> str:
    """The forward's name for the KV cache: `cache` in transformers ≥ 5.2x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(_base(model).forward).parameters else "past_key_values"


def supports_static(model) -> Optional[str]:
    """None when the static decoder can run `model`, else why not (the dynamic engine is used then)."""
    config = getattr(_base(model), "config", None)
    if config is None:
        return "the model has no config"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    attention = getattr(text, "_attn_implementation", None) or "eager"
    if attention not in ("sdpa", "eager"):
        return f"attention implementation {attention} takes no additive 4-D mask"
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return "sliding-window attention"
    if any(kind != "full_attention" for kind in (getattr(text, "layer_types", None) or [])):
        return "layers other than full attention"
    if getattr(text, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    return None


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean [rows, queries, slots] → additive [rows, 1, queries, slots] (0 or the dtype's minimum).

    The minimum rather than −inf: a left-padding query that may attend to nothing gets a uniform
    softmax instead of NaN, as in transformers' own masks.
    """
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


@torch.no_grad()
def generate_k_static(model, prompts: Sequence[List[int]], k: int, *, max_new_tokens: int, eos_ids: Sequence[int],
                      pad_id: int, device: torch.device, temperature: float = 1.0, top_p: float = 1.0,
                      seed: Optional[int] = None, use_graph: Optional[bool] = None,
                      check_every: int = 8, row_seeds: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Token lists (EOS included when produced) for each prompt's k samples, prompt-major: [b*k + j].

    Same contract and sampler as `engine.generate_k`. `use_graph`: None = on CUDA devices.
    """
    use_graph = device.type == "cuda" if use_graph is None else use_graph
    was_training = model.training
    model.eval()
    try:
        generator, uniforms = draws(row_seeds, seed, temperature, k, max_new_tokens, device)
        dtype = model.get_input_embeddings().weight.dtype  # the hidden states' (LoRA weights may be float32)
        key = cache_argument(model)
        ids, attn = pack_left([list(p) for p in prompts], pad_id, device)
        batch, width = ids.shape
        rows, length = batch * k, width + max_new_tokens
        cache = SlotCache(length, device)

        # prefill, one row per prompt: query i sees real prompt tokens at slots ≤ i
        real = attn.bool()
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        allowed = causal[None] & real[:, None, :]
        allowed = torch.cat([allowed, allowed.new_zeros((batch, width, max_new_tokens))], dim=-1)
        positions = position_ids(attn)
        out = model(input_ids=ids, attention_mask=_additive(allowed, dtype), position_ids=positions,
                    use_cache=True, logits_to_keep=1, **{key: cache})
        logits = out.logits[:, -1, :].repeat_interleave(k, dim=0)
        cache.repeat_rows(k)
        cache.slot.fill_(width)

        # the decode step's fixed-address inputs and output
        seen = torch.cat([real, real.new_zeros((batch, max_new_tokens))], dim=-1).repeat_interleave(k, dim=0)
        step_ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        step_positions = (positions[:, -1:] + 1).repeat_interleave(k, dim=0)
        step_logits = torch.empty((rows, logits.shape[-1]), dtype=logits.dtype, device=device)

        def decode_step() -> None:  # everything a graph replays: reads and writes only the tensors above
            seen.index_fill_(1, cache.slot.view(1), True)
            mask = _additive(seen[:, None, :], dtype)
            result = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, use_cache=True,
                           logits_to_keep=1, **{key: cache})
            step_logits.copy_(result.logits[:, -1, :])
            cache.slot.add_(1)
            step_positions.add_(1)

        graph = None
        eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
        tokens_out = torch.empty((rows, max_new_tokens), dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        produced = 0
        for step in range(max_new_tokens):
            tokens = sample_next(logits, temperature, top_p, generator, None if uniforms is None else uniforms[:, step])
            tokens_out[:, step] = tokens
            done |= torch.isin(tokens, eos)
            produced = step + 1
            if step == max_new_tokens - 1 or ((step + 1) % check_every == 0 and bool(done.all())):
                break
            step_ids.copy_(tokens[:, None])
            if graph is not None:
                graph.replay()
            elif use_graph:  # the first decode step runs eagerly on a side stream (warm-up), then is captured
                graph = _warm_up_and_capture(decode_step, device)
            else:
                decode_step()
            logits = step_logits
        return _until_eos(tokens_out[:, :produced].tolist(), set(eos_ids))
    finally:
        model.train(was_training)


def _warm_up_and_capture(decode_step, device: torch.device) -> "torch.cuda.CUDAGraph":
    """Run `decode_step` once for real (warm-up), then record it as a graph for the later steps."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        decode_step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # recorded, not run: the state the warm-up left is what replays advance
        decode_step()
    return graph


def _until_eos(rows: List[List[int]], eos: set) -> List[List[int]]:
    out = []
    for row in rows:
        end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
        out.append(row[:end])
    return out
