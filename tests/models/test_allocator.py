"""The CPU allocator settings: applied once through glibc's mallopt, never elsewhere or when turned off."""

import pytest

from aware_cli.models import allocator
from aware_cli.models.loading import resolve_device


class FakeGlibc:
    def __init__(self, result=1):
        self.calls, self.result = [], result

    def mallopt(self, option, value):
        self.calls.append((option, value))
        return self.result


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.delenv("AWARE_MALLOC_TUNING", raising=False)


def test_cpu_device_sets_the_mmap_threshold_once(fresh, monkeypatch):
    libc = FakeGlibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    assert resolve_device("cpu").type == "cpu"
    resolve_device("cpu")
    assert libc.calls == [(-3, 32 << 20), (-1, 1 << 30), (-2, 64 << 20)]  # once, glibc's mmap threshold first
    assert allocator.tune_cpu_allocator() is True


def test_turned_off_by_the_environment_or_absent_glibc(fresh, monkeypatch):
    libc = FakeGlibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    monkeypatch.setenv("AWARE_MALLOC_TUNING", "0")
    assert allocator.tune_cpu_allocator() is False and libc.calls == []
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.delenv("AWARE_MALLOC_TUNING")
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # macOS, musl
    assert allocator.tune_cpu_allocator() is False


def test_a_refused_setting_is_reported(fresh, monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: FakeGlibc(result=0))
    assert allocator.tune_cpu_allocator() is False


def test_real_glibc_accepts_the_settings(fresh):
    if allocator._glibc() is None:
        pytest.skip("not glibc")
    assert allocator.tune_cpu_allocator() is True
