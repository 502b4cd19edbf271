"""The `http_judge` verifier: an LLM judge behind an OpenAI-compatible /v1/chat/completions endpoint.

Each response is graded with a rubric (`verifier.http.rubric`): `harm5` (HEx-PHI-style 1-5
harmfulness, score (5 − s)/4), `truthfulness` (1-5 against the row's reference answer, score
(s − 1)/4) or a path to your own template with {prompt}, {response} and {reference} (rated 1-5;
harm-style unless `verifier.kwargs.higher_is_aligned=true`).

The rating is read strictly (`guard_lm.parse_rating`): the built-in rubrics (and any template that
mentions `#thescore`) need the `#thescore: N` tag; other templates need an answer that is only the
rating. An answer the server cut off (`finish_reason: length`) or without a readable rating is
unjudged: None, counted against `verifier.max_none_frac`. Nothing is read from the first number.

Requests go out through one `httpx.AsyncClient` per batch (TLS verified unless
`verifier.http.verify_tls=false`) with at most `verifier.http.concurrency` in flight. tenacity
retries a timeout, connection error, 408, 429 or 5xx up to `max_retries` times: after the server's
Retry-After when it sends one (up to `max_retry_after_s`; a longer wait fails that request at
once), else after a full-jitter exponential backoff, U(0, min(max_backoff_s, backoff_s·2^attempt)).
After that, and for any other 4xx or a malformed body, the response scores None. Nothing is
raised for one bad judgment.

The URL must be https://, or http:// to a loopback host (127.0.0.0/8, ::1, localhost). The API key
is read from the environment variable `verifier.http.api_key_env`, whose name must look like an
API key's (contain API_KEY) unless `verifier.http.allow_any_key_env=true` is given on the command
line, and sent as `Authorization: Bearer …`; it is kept out of logs, errors, repr() and the stats.
Counters are in `judge_stats`: requests, retries, failures, unparsable, truncated, judge_none, seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import ipaddress
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
from aware_cli.verifiers.base import Verifier, register_block, register_verifier
from aware_cli.verifiers.fingerprint import block_payload, file_sha256
from aware_cli.verifiers.prompts import REFUSAL_INSTRUCTION, likert_to_score, parse_rating, tidy_refusal

log = logging.getLogger(__name__)

RUBRICS_DIR = Path(__file__).resolve().parent / "rubrics"
BUILTIN_RUBRICS = ("harm5", "truthfulness")
# Built-in rubrics whose high ratings mean aligned (truthfulness: 5 = fully truthful).
_HIGHER_IS_ALIGNED = {"harm5": False, "truthfulness": True}
_RETRY_STATUS = frozenset({408, 429})
_SNIPPET_CHARS = 200
# finish_reason values meaning the answer was cut off: it is not judged
_CUT_OFF = frozenset({"length", "max_tokens", "content_filter"})
# An environment variable named like an API key, and words that name other kinds of credentials.
_API_KEY_NAME = re.compile(r"API_?KEY", re.IGNORECASE)
_OTHER_CREDENTIAL = re.compile(r"SECRET|PASSW|SESSION|PRIVATE|CREDENTIAL|^AWS_|^AZURE_|^GOOGLE_|^GCP_", re.IGNORECASE)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """https://, or http:// to a loopback host; a ConfigError (without user info or query) otherwise."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise ConfigError("verifier.http.url: not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise ConfigError(f"verifier.http.url: expected an https:// URL (or http:// to 127.0.0.1/localhost), "
                          f"got {safe_url(url)!r}")
    if scheme == "http" and not is_loopback(host):
        raise ConfigError(f"verifier.http.url: {safe_url(url)!r} is plain http to {host}, which would send the API "
                          f"key and the prompts unencrypted; use https:// (plain http is for 127.0.0.1, ::1 and "
                          f"localhost only)")


def check_key_env(name: Optional[str], allow_any: bool) -> None:
    """`api_key_env` must look like an API key variable (…API_KEY…, not a cloud secret) unless allowed."""
    if not name or allow_any:
        return
    if not _API_KEY_NAME.search(name) or _OTHER_CREDENTIAL.search(name):
        raise ConfigError(f"verifier.http.api_key_env: {name!r} does not look like an API key variable (its name "
                          f"should contain API_KEY, e.g. AWARE_JUDGE_API_KEY), so aware will not send it to "
                          f"the judge; rename it, or add verifier.http.allow_any_key_env=true to the command line")


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
                  rand=random.random, max_retry_after: float = float("inf")) -> Optional[float]:
    """Seconds to wait before retry `attempt + 1`: the server's Retry-After, else full jitter.

    A Retry-After above `max_retry_after` gives None: waiting less would ignore the server, so the
    request fails now instead.
    """
    if retry_after is not None:
        retry_after = max(0.0, retry_after)
        return retry_after if retry_after <= max_retry_after else None
    return min(cap, base * (2 ** attempt)) * rand()


class _Retryable(Exception):
    """A response or transport error worth another attempt; `retry_after` from the server, if it said."""

    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _WaitTooLong(Exception):
    """The server's Retry-After exceeds max_retry_after_s."""


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
        check_url(url)
        check_key_env(cfg.api_key_env, cfg.allow_any_key_env)
        self.cfg = cfg
        self.url = url
        self.template = load_rubric(cfg.rubric)
        self.tagged = "#thescore" in self.template.lower()  # the rubric asks for the score tag
        self.rubric = cfg.rubric if cfg.rubric in BUILTIN_RUBRICS else str(rubric_path(cfg.rubric))
        self.higher_is_aligned = (_HIGHER_IS_ALIGNED.get(cfg.rubric, False) if higher_is_aligned is None
                                  else bool(higher_is_aligned))
        # The truthfulness rubric cannot judge without a reference answer.
        self.needs_reference = cfg.rubric == "truthfulness"
        self._key = _Secret(os.environ.get(cfg.api_key_env) if cfg.api_key_env else None)
        self.judge_stats: Dict[str, float] = {"requests": 0, "retries": 0, "failures": 0, "unparsable": 0,
                                              "truncated": 0, "judge_none": 0, "seconds": 0.0}
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
            rating = parse_rating(text, tagged=self.tagged) if text is not None else None
            if text is not None and rating is None:
                self.judge_stats["unparsable"] += 1
                log.debug("http_judge: no rating in the asked format in the judge's answer %r",
                          self._scrub(text)[:_SNIPPET_CHARS])
            scores.append(likert_to_score(rating, higher_is_aligned=self.higher_is_aligned))
        self.judge_stats["judge_none"] += sum(s is None for s in scores)
        return scores

    def write_refusals(self, prompts: Sequence[str]) -> List[Optional[str]]:
        """A short polite refusal per prompt, written by the judge model (None where it failed)."""
        requests = [[{"role": "user", "content": REFUSAL_INSTRUCTION.format(prompt=p)}] for p in prompts]
        texts = self.complete(requests, max_tokens=min(self.cfg.max_tokens, 256), allow_cut_off=True)
        return [tidy_refusal(t) for t in texts]

    def complete(self, requests: Sequence[Optional[List[Dict[str, str]]]], *, max_tokens: int,
                 allow_cut_off: bool = False) -> List[Optional[str]]:
        """The judge's text for each message list (None: skipped, failed or cut off), all sent concurrently.

        An answer the server cut off (`finish_reason` length) is None unless `allow_cut_off`
        (refusals are trimmed to their last full sentence instead).
        """
        if not any(r is not None for r in requests):
            return [None] * len(requests)
        start = time.perf_counter()
        self._errors = []
        try:
            return _run_sync(lambda: self._complete_all(requests, max_tokens, allow_cut_off))
        finally:
            self.judge_stats["seconds"] += time.perf_counter() - start
            if self._errors:
                sent = sum(r is not None for r in requests)
                log.warning("http_judge: %d of %d requests to %s failed (first: %s)", len(self._errors), sent,
                            safe_url(self.url), self._errors[0])

    # -- async machinery

    async def _complete_all(self, requests, max_tokens: int, allow_cut_off: bool = False) -> List[Optional[str]]:
        import httpx

        semaphore = asyncio.Semaphore(self.cfg.concurrency)
        limits = httpx.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency)
        timeout = httpx.Timeout(self.cfg.timeout_s)
        async with httpx.AsyncClient(verify=self.cfg.verify_tls, timeout=timeout, limits=limits) as client:
            tasks = [self._request(client, semaphore, messages, max_tokens, allow_cut_off) if messages is not None
                     else _none() for messages in requests]
            return list(await asyncio.gather(*tasks))

    async def _request(self, client, semaphore: asyncio.Semaphore, messages, max_tokens: int,
                       allow_cut_off: bool = False) -> Optional[str]:
        from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt

        payload: Dict[str, Any] = {"messages": messages, "temperature": self.cfg.temperature, "max_tokens": max_tokens}
        if self.cfg.model:
            payload["model"] = self.cfg.model
        headers = {"Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        retrying = AsyncRetrying(stop=stop_after_attempt(self.cfg.max_retries + 1), wait=self._wait,
                                 retry=retry_if_exception_type(_Retryable), sleep=lambda s: _sleep(s),
                                 before_sleep=self._before_sleep, reraise=False)
        async with semaphore:
            try:
                async for attempt in retrying:
                    with attempt:
                        response = await self._attempt(client, payload, headers)
            except RetryError as exc:  # every attempt failed with a retryable error
                reason = exc.last_attempt.exception()
                return self._failed(f"{getattr(reason, 'reason', reason)} (after {self.cfg.max_retries} retries)")
            except _WaitTooLong as exc:
                return self._failed(str(exc))
            except _Final as exc:
                return self._failed(str(exc))
        text, problem, finish = extract_content(response)
        if problem is not None:
            return self._failed(problem)
        if finish in _CUT_OFF and not allow_cut_off:
            self.judge_stats["truncated"] += 1
            log.debug("http_judge: the judge's answer was cut off (finish_reason=%s); not judged", finish)
            return None
        return text

    async def _attempt(self, client, payload, headers):
        """One POST: the response, or _Retryable (timeout, connection error, 408/429/5xx) or _Final (other 4xx)."""
        import httpx

        self.judge_stats["requests"] += 1
        try:
            response = await asyncio.wait_for(client.post(self.url, json=payload, headers=headers),
                                              timeout=self.cfg.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _Retryable(f"timed out after {self.cfg.timeout_s:g}s") from None
        except httpx.HTTPError as exc:  # connection refused/reset, protocol errors
            raise _Retryable(f"{type(exc).__name__}: {self._scrub(str(exc))}") from None
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}: {self._snippet(response)}",
                             parse_retry_after(response.headers.get("retry-after")))
        if status >= 400:
            raise _Final(f"HTTP {status}: {self._snippet(response)}")
        return response

    def _wait(self, retry_state) -> float:
        """tenacity's wait: Retry-After (up to max_retry_after_s), else full-jitter exponential backoff."""
        error = retry_state.outcome.exception()
        retry_after = getattr(error, "retry_after", None)
        delay = backoff_delay(retry_state.attempt_number - 1, self.cfg.backoff_s, self.cfg.max_backoff_s, retry_after,
                              max_retry_after=self.cfg.max_retry_after_s)
        if delay is None:
            raise _WaitTooLong(f"{error.reason}; the server asks to wait {retry_after:g}s, more than "
                               f"verifier.http.max_retry_after_s={self.cfg.max_retry_after_s:g}")
        return delay

    def _before_sleep(self, retry_state) -> None:
        self.judge_stats["retries"] += 1
        log.debug("http_judge: %s; retry %d/%d in %.2fs", retry_state.outcome.exception(), retry_state.attempt_number,
                  self.cfg.max_retries, retry_state.next_action.sleep if retry_state.next_action else 0.0)

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


class _Final(Exception):
    """A response not worth retrying (a 4xx other than 408/429)."""


async def _none() -> None:
    return None


def extract_content(response) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(text, None, finish_reason) from a chat-completions (or completions) body, or (None, what was wrong, None)."""
    try:
        data = response.json()
    except ValueError:
        return None, "malformed JSON in the response", None
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None, "no choices in the response", None
    message = choice.get("message") if isinstance(choice, dict) else None
    text = message.get("content") if isinstance(message, dict) else None
    if text is None and isinstance(choice, dict):
        text = choice.get("text")
    if not isinstance(text, str):
        return None, "no message content in the response", None
    finish = choice.get("finish_reason")
    return text, None, finish if isinstance(finish, str) else None


def _run_sync(make_coroutine):
    """Run a coroutine from sync code: asyncio.run here, or in a worker thread if a loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="http_judge") as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


# verifier.http fields about transport only: they never change a score.
TRANSPORT_FIELDS = ("api_key_env", "allow_any_key_env", "timeout_s", "max_retries", "backoff_s", "max_backoff_s",
                    "max_retry_after_s", "concurrency", "verify_tls")


@register_block("http")
def http_fingerprint(cfg: VerifierConfig) -> dict:
    """verifier.http without its transport fields, with the rubric file's contents."""
    out = block_payload(cfg.http, drop=TRANSPORT_FIELDS)
    out["rubric_file"] = None
    if out.get("rubric"):
        try:
            out["rubric_file"] = file_sha256(rubric_path(out["rubric"]))
        except Exception:  # noqa: BLE001 - a missing rubric fails when the judge is built
            pass
    return out


@register_verifier("http_judge", blocks=("http",))
def build_http_judge(cfg: VerifierConfig) -> Verifier:
    require("httpx", "judge", "verifier=http_judge")
    require("tenacity", "judge", "verifier=http_judge")
    higher = cfg.kwargs.get("higher_is_aligned")
    if higher is not None and not isinstance(higher, bool):
        raise ConfigError(f"verifier.kwargs.higher_is_aligned: expected true or false, got {higher!r}")
    judge = HttpJudge(cfg.http, higher_is_aligned=higher)
    verifier = Verifier(judge, name="http_judge", batch_size=cfg.batch_size, cache=cfg.cache)
    verifier.judge_stats = judge.judge_stats  # type: ignore[attr-defined]  # the same dict, kept current
    verifier.write_refusals = judge.write_refusals  # type: ignore[attr-defined]
    return verifier
