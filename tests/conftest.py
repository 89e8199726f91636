import warnings

import pytest

from eds.testing import tiny_model

warnings.filterwarnings("ignore", message=".*generation flags.*")


@pytest.fixture(scope="session")
def tiny():
    """A tiny float32 Qwen2-shaped chat model, shared (tests must not modify it)."""
    return tiny_model("qwen2")


@pytest.fixture
def eds_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
