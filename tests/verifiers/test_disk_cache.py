"""The on-disk score cache: hits across reopen, concurrent writers, and the verifier identity."""

import multiprocessing
import sqlite3
import threading

from aware_cli.config.schema import ClassifierConfig, CompositeConfig, HttpJudgeConfig, VerifierConfig
from aware_cli.verifiers.base import verifier_identity
from aware_cli.verifiers.disk_cache import DB_NAME, NONE_SCORE, DiskCache, batch_keys, cache_key


def test_put_get_and_reopen(tmp_path):
    keys = [f"k{i}" for i in range(5)]
    with DiskCache(tmp_path / "cache") as cache:
        assert cache.get_many(keys) == [None] * 5
        assert cache.put_many([("k0", 0.25), ("k1", 1.0), ("k2", None)]) == 2  # None skipped by default
        assert cache.put_many([("k3", None)], include_none=True) == 1
        assert cache.get_many(["k1", "k0", "k2", "k3", "k1"]) == [1.0, 0.25, None, NONE_SCORE, 1.0]
    assert (tmp_path / "cache" / DB_NAME).is_file()
    reopened = DiskCache(tmp_path / "cache")
    hits, misses = reopened.split(keys)
    assert hits == {0: 0.25, 1: 1.0, 3: None} and misses == [2, 4]
    assert len(reopened) == 3 and reopened.stats["hits"] == 3
    mode = sqlite3.connect(str(reopened.path)).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    reopened.put_many([("k0", 0.5)])  # last write wins
    assert reopened.get_many(["k0"]) == [0.5]


def test_many_keys_beyond_one_select(tmp_path):
    cache = DiskCache(tmp_path / "scores.sqlite")
    items = [(f"key{i}", i / 2000) for i in range(1500)]
    cache.put_many(items)
    assert cache.get_many([k for k, _ in items]) == [v for _, v in items]
    assert cache.path == tmp_path / "scores.sqlite"


def test_two_connections_in_threads(tmp_path):
    a, b = DiskCache(tmp_path), DiskCache(tmp_path)

    def write(cache, tag):
        for i in range(30):
            cache.put_many([(f"{tag}{i}-{j}", 0.5) for j in range(5)])
            cache.get_many([f"{tag}{i}-0"])

    threads = [threading.Thread(target=write, args=(c, t)) for c, t in ((a, "a"), (b, "b"), (a, "c"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(a) == 3 * 30 * 5
    assert b.get_many(["a29-4", "c0-0", "b17-2"]) == [0.5, 0.5, 0.5]


def _writer(path, tag, count):
    cache = DiskCache(path, timeout=30)
    for i in range(count):
        cache.put_many([(f"{tag}-{i}", (i % 10) / 10)])
    cache.close()


def test_two_processes(tmp_path):
    DiskCache(tmp_path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), tag, 60)) for tag in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = DiskCache(tmp_path)
    assert len(cache) == 120
    assert cache.get_many(["p-59", "q-13"]) == [0.9, 0.3]


def test_connection_is_reopened_after_fork(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put_many([("parent", 1.0)])
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=lambda: cache.put_many([("child", 0.0)]) and None)
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert cache.get_many(["parent", "child"]) == [1.0, 0.0]


# --- keys -----------------------------------------------------------------------------------


def test_cache_key_depends_on_score_relevant_kwargs_only():
    base = cache_key("id", "p", "c", {"harmful": True, "references": "r", "ids": "1"})
    assert base == cache_key("id", "p", "c", {"harmful": True, "references": "r", "ids": "2"})
    assert base != cache_key("id", "p", "c", {"harmful": False, "references": "r", "ids": "1"})
    assert base != cache_key("id", "p", "c", {"harmful": True, "references": "other"})
    assert base != cache_key("id2", "p", "c", {"harmful": True, "references": "r"})
    assert base != cache_key("id", "p", "c2", {"harmful": True, "references": "r"})
    assert cache_key("id", "p", "c", {"metas": {"a": 1, "b": 2}}) == \
        cache_key("id", "p", "c", {"metas": {"b": 2, "a": 1}})


def test_batch_keys_slices_row_kwargs():
    keys = batch_keys("id", ["p1", "p2"], ["c", "c"], {"harmful": [True, False], "ids": ["a", "b"], "mode": "x"})
    assert keys[0] == cache_key("id", "p1", "c", {"harmful": True, "mode": "x"})
    assert keys[1] == cache_key("id", "p2", "c", {"harmful": False, "mode": "x"})


def test_identity_is_stable_and_ignores_operational_fields(monkeypatch):
    http = dict(url="https://judge.example/v1/chat/completions", model="m1")
    base = VerifierConfig(name="http_judge", http=HttpJudgeConfig(**http))
    ident = verifier_identity(base)
    assert ident == verifier_identity(VerifierConfig(name="http_judge", http=HttpJudgeConfig(**http)))
    monkeypatch.setenv("AWARE_JUDGE_API_KEY", "sk-secret-value")
    same = VerifierConfig(name="http_judge", batch_size=3, cache=False, cache_dir="/tmp/x", device="cpu",
                          max_none_frac=0.9, harm=base.harm.__class__(max_length=64),
                          http=HttpJudgeConfig(**http, api_key_env="OTHER", timeout_s=1, max_retries=9,
                                               concurrency=1, verify_tls=False, backoff_s=0.1))
    assert verifier_identity(same) == ident
    for changed in (HttpJudgeConfig(url=http["url"], model="m2"),
                    HttpJudgeConfig(**http, rubric="truthfulness"),
                    HttpJudgeConfig(**http, temperature=0.7)):
        assert verifier_identity(VerifierConfig(name="http_judge", http=changed)) != ident
    assert verifier_identity(VerifierConfig(name="refusal")) != verifier_identity(
        VerifierConfig(name="refusal", aligned_when="refuse"))
    clf = VerifierConfig(name="hf_classifier", classifier=ClassifierConfig(model="x/y", aligned_labels=["safe"]))
    assert verifier_identity(clf) != verifier_identity(
        VerifierConfig(name="hf_classifier", classifier=ClassifierConfig(model="x/y", aligned_labels=["ok"])))


def test_identity_tracks_file_contents(tmp_path):
    target = tmp_path / "r.py"
    target.write_text("def f(p, c, **k):\n    return [1.0] * len(c)\n")
    cfg = VerifierConfig(name="python", target=f"{target}:f")
    before = verifier_identity(cfg)
    target.write_text("def f(p, c, **k):\n    return [0.0] * len(c)\n")
    assert verifier_identity(cfg) != before
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("{prompt} {response} v1")
    http = VerifierConfig(name="http_judge", http=HttpJudgeConfig(rubric=str(rubric)))
    before = verifier_identity(http)
    rubric.write_text("{prompt} {response} v2")
    assert verifier_identity(http) != before


def test_identity_of_composite_depends_on_components():
    def comp(weight):
        return VerifierConfig(name="composite", composite=CompositeConfig(components=[
            {"name": "refusal", "weight": weight}, {"name": "refusal", "aligned_when": "refuse"}]))

    assert verifier_identity(comp(1)) == verifier_identity(comp(1))
    assert verifier_identity(comp(1)) != verifier_identity(comp(2))


def test_non_finite_scores_are_not_stored(tmp_path):
    cache = DiskCache(tmp_path)
    assert cache.put_many([("nan", float("nan")), ("inf", float("inf")), ("ok", 0.0)]) == 1
    assert cache.get_many(["nan", "inf", "ok"]) == [None, None, 0.0]


# ----------------------------------------------------------------------------- a failing cache never stops a run


def _counting(prompts, completions, **kwargs):
    return [0.5 for _ in completions]


def _cached_verifier(cache_dir):
    from aware_cli.verifiers import build_verifier

    return build_verifier(VerifierConfig(name="python", target=f"{__name__}:_counting", cache_dir=str(cache_dir),
                                         cache=False))


def test_a_corrupt_cache_file_warns_once_and_scores_without_it(tmp_path, caplog):
    (tmp_path / DB_NAME).write_bytes(b"this is not an sqlite database" * 100)
    verifier = _cached_verifier(tmp_path)
    assert verifier(["p", "q"], ["a", "b"]) == [0.5, 0.5] and verifier(["p"], ["a"]) == [0.5]
    assert verifier.stats["disk_errors"] == 1 and verifier.stats["scored"] == 3
    warnings = [r for r in caplog.records if "score cache" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_a_full_disk_mid_run_warns_once_and_scores_without_it(tmp_path, monkeypatch, caplog):
    verifier = _cached_verifier(tmp_path)
    assert verifier(["p"], ["a"]) == [0.5]  # cached on disk
    assert DiskCache(tmp_path).get_many([]) == []

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(DiskCache, "put_many", full)
    assert verifier(["p", "q"], ["a", "b"]) == [0.5, 0.5]  # the read hits, the write fails
    monkeypatch.setattr(DiskCache, "get_many", full)
    assert verifier(["r"], ["c"]) == [0.5]  # no longer touched
    assert verifier.stats["disk_errors"] == 1 and verifier.stats["disk_hits"] == 1
    assert len([r for r in caplog.records if "database or disk is full" in r.getMessage()]) == 1


def test_training_with_a_broken_cache_completes(tmp_path, in_project_root):
    from typer.testing import CliRunner

    from aware_cli.cli import app

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / DB_NAME).write_bytes(b"garbage" * 500)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}", "trainer.max_steps=2",
                                      "eval.every=0", f"verifier.cache_dir={cache}"])
    assert result.exit_code == 0, result.output
    assert result.output.count("score cache") == 1  # one warning, through the log handler
