"""Test setup: offline hubs, the project root (tests name fixtures as tests/fixtures/... from there)."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture
def in_project_root(monkeypatch):
    """Run from the project root: tests name their fixtures `tests/fixtures/...` relative to it."""
    monkeypatch.chdir(PROJECT_ROOT)
    return PROJECT_ROOT
