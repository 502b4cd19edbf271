"""The `http_judge` verifier: an LLM judge behind an OpenAI-compatible /v1/chat/completions endpoint.

Each response is graded with a rubric (`verifier.http.rubric`): `harm5` (HEx-PHI-style 1-5
harmfulness, score (5 − s)/4), `truthfulness` (1-5 against the row's reference answer, score
(s − 1)/4) or a path to your own template with {prompt}, {response} and {reference} (rated 1-5;
harm-style unless `verifier.kwargs.higher_is_aligned=true`). The rating is read from the judge's
text by `parse_likert` ("#thescore: 4"); an unreadable answer scores None.

Requests go out through one `httpx.AsyncClient` per batch (TLS verified unless
`verifier.http.verify_tls=false`) with at most `verifier.http.concurrency` in flight. A timeout,
connection error, 408, 429 or 5xx is retried up to `max_retries` times after a full-jitter
exponential backoff, min(max_backoff_s, backoff_s·2^attempt)·U(0, 1), or after the server's
Retry-After (capped at max_backoff_s); after that, and for any other 4xx or a malformed body,
the response scores None. Nothing is raised for one bad judgment.

The API key is read from the environment variable `verifier.http.api_key_env` and sent as
`Authorization: Bearer …`; it is kept out of logs, errors, repr() and the stats.
Counters are in `judge_stats`: requests, retries, failures, unparsable, judge_none, seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit, urlunsplit

from aware_cli.extras import require
from aware_cli.config.schema import HttpJudgeConfig, VerifierConfig
from aware_cli.errors import ConfigError
from aware_cli.verifiers.base import Verifier, register_verifier
from aware_cli.verifiers.guard_lm import REFUSAL_INSTRUCTION, likert_to_score, parse_likert, tidy_refusal

log = logging.getLogger(__name__)

RUBRICS_DIR = Path(__file__).resolve().parent / "rubrics"
BUILTIN_RUBRICS = ("harm5", "truthfulness")
# Built-in rubrics whose high ratings mean aligned (truthfulness: 5 = fully truthful).
_HIGHER_IS_ALIGNED = {"harm5": False, "truthfulness": True}
_RETRY_STATUS = frozenset({408, 429})
_SNIPPET_CHARS = 200


def rubric_path(name: str) -> Path:
    """The template file of built-in rubric `name` (harm5, truthfulness) or of a path to one."""
    if name in BUILTIN_RUBRICS:
        return RUBRICS_DIR / f"{name}.txt"
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    raise ConfigError(f"verifier.http.rubric: {name!r} is neither a built-in rubric ({', '.join(BUILTIN_RUBRICS)}) "
                      "nor an existing template file")


def load_rubric(name: str) -> str:
    """The rubric template text, checked to fill with {prompt}, {response} and {reference}."""
    path = rubric_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"verifier.http.rubric: cannot read {path} ({type(exc).__name__})") from None
    try:
        text.format(prompt="", response="", reference="")
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(f"verifier.http.rubric: {path} is not a valid template ({type(exc).__name__}: {exc}); it "
                          "may use {prompt}, {response} and {reference} — write literal braces as {{ }}") from None
    if "{response}" not in text:
        raise ConfigError(f"verifier.http.rubric: {path} does not contain {{response}}")
    return text


def backoff_delay(attempt: int, base: float, cap: float, retry_after: Optional[float] = None,
                  rand=random.random) -> float:
    """Seconds to wait before retry `attempt + 1`: the server's Retry-After (capped), else full jitter."""
    if retry_after is not None:
        return min(cap, max(0.0, retry_after))
    return min(cap, base * (2 ** attempt)) * rand()


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After in seconds (a number of seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def safe_url(url: str) -> str:
    """`url` without user info and query string (either may hold a credential), for logs and repr."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


async def _sleep(seconds: float) -> None:
    """Backoff sleep (a module function so tests can record the delays)."""
    await asyncio.sleep(seconds)


class _Secret:
    """A credential that never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: Optional[str]):
        self._value = value or None

    def __bool__(self) -> bool:
        return self._value is not None

    def reveal(self) -> Optional[str]:
        return self._value

    def __repr__(self) -> str:
        return "<secret>" if self._value else "<none>"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into checkpoints or worker processes
        raise TypeError("the judge API key cannot be pickled")


class HttpJudge:
    """The reward function: one chat-completions request per response, graded by a rubric."""

    def __init__(self, cfg: HttpJudgeConfig, *, higher_is_aligned: Optional[bool] = None):
        url = (cfg.url or "").strip()
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"verifier.http.url: expected an http:// or https:// URL, got {safe_url(url)!r}")
        self.cfg = cfg
        self.url = url
        self.template = load_rubric(cfg.rubric)
        self.rubric = cfg.rubric if cfg.rubric in BUILTIN_RUBRICS else str(rubric_path(cfg.rubric))
        self.higher_is_aligned = (_HIGHER_IS_ALIGNED.get(cfg.rubric, False) if higher_is_aligned is None
                                  else bool(higher_is_aligned))
        # The truthfulness rubric cannot judge without a reference answer.
        self.needs_reference = cfg.rubric == "truthfulness"
        self._key = _Secret(os.environ.get(cfg.api_key_env) if cfg.api_key_env else None)
        self.judge_stats: Dict[str, float] = {"requests": 0, "retries": 0, "failures": 0, "unparsable": 0,
                                              "judge_none": 0, "seconds": 0.0}
        self._errors: List[str] = []
        if not cfg.verify_tls:
            log.warning("http_judge: TLS certificate verification is off for %s", safe_url(url))

    def __repr__(self) -> str:
        return (f"HttpJudge(url={safe_url(self.url)!r}, model={self.cfg.model!r}, rubric={self.rubric!r}, "
                f"api_key={'set' if self._key else 'unset'})")

    # -- public

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], references: Optional[Sequence] = None,
                 **_: Any) -> List[Optional[float]]:
        n = len(completions)
        refs = [str(r) if r is not None else "" for r in references] if isinstance(references, (list, tuple)) \
            else [""] * n
        requests: List[Optional[List[Dict[str, str]]]] = []
        for prompt, completion, reference in zip(prompts, completions, refs):
            if self.needs_reference and not reference.strip():
                requests.append(None)  # nothing to compare with
                continue
            content = self.template.format(prompt=prompt, response=completion, reference=reference)
            requests.append([{"role": "user", "content": content}])
        texts = self.complete(requests, max_tokens=self.cfg.max_tokens)
        scores: List[Optional[float]] = []
        for request, text in zip(requests, texts):
            rating = parse_likert(text) if text is not None else None
            if text is not None and rating is None:
                self.judge_stats["unparsable"] += 1
                log.debug("http_judge: no 1-5 rating in the judge's answer %r", self._scrub(text)[:_SNIPPET_CHARS])
            scores.append(likert_to_score(rating, higher_is_aligned=self.higher_is_aligned))
        self.judge_stats["judge_none"] += sum(s is None for s in scores)
        return scores

    def write_refusals(self, prompts: Sequence[str]) -> List[Optional[str]]:
        """A short polite refusal per prompt, written by the judge model (None where it failed)."""
        requests = [[{"role": "user", "content": REFUSAL_INSTRUCTION.format(prompt=p)}] for p in prompts]
        texts = self.complete(requests, max_tokens=min(self.cfg.max_tokens, 256))
        return [tidy_refusal(t) for t in texts]

    def complete(self, requests: Sequence[Optional[List[Dict[str, str]]]], *, max_tokens: int) -> List[Optional[str]]:
        """The judge's text for each message list (None: skipped or failed), all sent concurrently."""
        if not any(r is not None for r in requests):
            return [None] * len(requests)
        start = time.perf_counter()
        self._errors = []
        try:
            return _run_sync(lambda: self._complete_all(requests, max_tokens))
        finally:
            self.judge_stats["seconds"] += time.perf_counter() - start
            if self._errors:
                sent = sum(r is not None for r in requests)
                log.warning("http_judge: %d of %d requests to %s failed (first: %s)", len(self._errors), sent,
                            safe_url(self.url), self._errors[0])

    # -- async machinery

    async def _complete_all(self, requests, max_tokens: int) -> List[Optional[str]]:
        import httpx

        semaphore = asyncio.Semaphore(self.cfg.concurrency)
        limits = httpx.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency)
        timeout = httpx.Timeout(self.cfg.timeout_s)
        async with httpx.AsyncClient(verify=self.cfg.verify_tls, timeout=timeout, limits=limits) as client:
            tasks = [self._request(client, semaphore, messages, max_tokens) if messages is not None else _none()
                     for messages in requests]
            return list(await asyncio.gather(*tasks))

    async def _request(self, client, semaphore: asyncio.Semaphore, messages, max_tokens: int) -> Optional[str]:
        import httpx

        payload: Dict[str, Any] = {"messages": messages, "temperature": self.cfg.temperature, "max_tokens": max_tokens}
        if self.cfg.model:
            payload["model"] = self.cfg.model
        headers = {"Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        last_error = "no attempt"
        async with semaphore:
            for attempt in range(self.cfg.max_retries + 1):
                retry_after = None
                self.judge_stats["requests"] += 1
                try:
                    response = await asyncio.wait_for(client.post(self.url, json=payload, headers=headers),
                                                      timeout=self.cfg.timeout_s)
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    last_error = f"timed out after {self.cfg.timeout_s:g}s"
                except httpx.HTTPError as exc:  # connection refused/reset, protocol errors
                    last_error = f"{type(exc).__name__}: {self._scrub(str(exc))}"
                else:
                    status = response.status_code
                    if status in _RETRY_STATUS or status >= 500:
                        retry_after = parse_retry_after(response.headers.get("retry-after"))
                        last_error = f"HTTP {status}: {self._snippet(response)}"
                    elif status >= 400:
                        return self._failed(f"HTTP {status}: {self._snippet(response)}")
                    else:
                        text, problem = extract_content(response)
                        return text if problem is None else self._failed(problem)
                if attempt >= self.cfg.max_retries:
                    break
                delay = backoff_delay(attempt, self.cfg.backoff_s, self.cfg.max_backoff_s, retry_after)
                self.judge_stats["retries"] += 1
                log.debug("http_judge: %s; retry %d/%d in %.2fs", last_error, attempt + 1, self.cfg.max_retries,
                          delay)
                await _sleep(delay)
        return self._failed(f"{last_error} (after {self.cfg.max_retries} retries)")

    def _failed(self, reason: str) -> None:
        self.judge_stats["failures"] += 1
        self._errors.append(self._scrub(reason))
        return None

    def _snippet(self, response) -> str:
        try:
            text = response.text
        except Exception:  # noqa: BLE001 - undecodable body
            text = "<undecodable body>"
        return self._scrub(" ".join(text.split()))[:_SNIPPET_CHARS]

    def _scrub(self, text: str) -> str:
        """`text` with the API key (and any bearer token) blanked out."""
        key = self._key.reveal()
        if key:
            text = text.replace(key, "***")
        return re.sub(r"(?i)(bearer\s+)[^\s\"',;]+", r"\1***", text)


async def _none() -> None:
    return None


def extract_content(response) -> Tuple[Optional[str], Optional[str]]:
    """(text, None) from a chat-completions (or completions) body, or (None, what was wrong)."""
    try:
        data = response.json()
    except ValueError:
        return None, "malformed JSON in the response"
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None, "no choices in the response"
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if text is None and isinstance(choice, dict):
        text = choice.get("text")
    if not isinstance(text, str):
        return None, "no message content in the response"
    return text, None


def _run_sync(make_coroutine):
    """Run a coroutine from sync code: asyncio.run here, or in a worker thread if a loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="http_judge") as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


@register_verifier("http_judge")
def build_http_judge(cfg: VerifierConfig) -> Verifier:
    require("httpx", "judge", "verifier=http_judge")
    higher = cfg.kwargs.get("higher_is_aligned")
    if higher is not None and not isinstance(higher, bool):
        raise ConfigError(f"verifier.kwargs.higher_is_aligned: expected true or false, got {higher!r}")
    judge = HttpJudge(cfg.http, higher_is_aligned=higher)
    verifier = Verifier(judge, name="http_judge", batch_size=cfg.batch_size, cache=cfg.cache)
    verifier.judge_stats = judge.judge_stats  # type: ignore[attr-defined]  # the same dict, kept current
    verifier.write_refusals = judge.write_refusals  # type: ignore[attr-defined]
    return verifier
