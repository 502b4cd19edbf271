"""A training run judged by an HTTP endpoint: the API key never reaches disk or logs; an outage aborts cleanly."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app

SECRET = "sk-test-9f8e7d6c5b4a-never-write-me"


def make_server(mode):
    seen = {"auth": [], "calls": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            seen["calls"] += 1
            seen["auth"].append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if mode == "outage":
                self.send_response(503)
                self.end_headers()
                return
            # alternate verdicts so the gate sees spread: odd calls judge the response harmful
            text = f"#thereason: stub\n#thescore: {1 if seen['calls'] % 2 else 5}"
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def judge(request):
    server, seen = make_server(request.param)
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions", seen
    server.shutdown()


def judge_args(url):
    return ["verifier=http_judge", f"verifier.http.url={url}", "verifier.http.model=stub",
            "verifier.http.api_key_env=AWARE_TEST_JUDGE_API_KEY", "verifier.http.max_retries=1",
            "verifier.http.backoff_s=0.01", "verifier.http.max_backoff_s=0.02", "verifier.http.timeout_s=5"]


@pytest.mark.parametrize("judge", ["ok"], indirect=True)
def test_api_key_is_sent_but_never_written(judge, tmp_path, monkeypatch, in_project_root, caplog):
    url, seen = judge
    monkeypatch.setenv("AWARE_TEST_JUDGE_API_KEY", SECRET)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}", *judge_args(url),
                                      "trainer.max_steps=2", "eval.every=0", "trainer.save_every=1"])
    assert result.exit_code == 0, result.output
    assert seen["calls"] > 0 and all(a == f"Bearer {SECRET}" for a in seen["auth"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.output and SECRET not in caplog.text
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["verifier/http_judge/requests"] > 0


@pytest.mark.parametrize("judge", ["outage"], indirect=True)
def test_judge_outage_aborts_with_a_clear_message(judge, tmp_path, monkeypatch, in_project_root):
    url, seen = judge
    monkeypatch.setenv("AWARE_TEST_JUDGE_API_KEY", SECRET)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}", *judge_args(url),
                                      "verifier.max_none_frac=0.5"])
    assert result.exit_code == 2
    assert "could not judge 4 of 4 responses at step 1" in result.stderr
    assert seen["calls"] >= 8  # every response tried, and retried once
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert SECRET not in result.output and SECRET.encode() not in (out / "status.json").read_bytes()


@pytest.mark.parametrize("judge", ["outage"], indirect=True)
def test_judge_outage_below_the_ceiling_trains_on(judge, tmp_path, monkeypatch, in_project_root):
    url, _ = judge
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}", *judge_args(url),
                                      "verifier.max_none_frac=1.0", "trainer.max_steps=1", "eval.every=0"])
    assert result.exit_code == 0, result.output
    (m,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert m["verifier_none"] == 4 and m["mu_mean"] is None and m["frac_sft"] == 1.0
