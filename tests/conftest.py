"""Shared test setup: offline hubs, and paths to the shared data next to the project."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture
def in_project_root(monkeypatch):
    """Recipes name ../shared/data/... relative to the project root, as `make demo` runs them."""
    monkeypatch.chdir(PROJECT_ROOT)
    return PROJECT_ROOT
