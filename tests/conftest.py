import warnings

import pytest
import torch

from eds.testing import tiny_model

warnings.filterwarnings("ignore", message=".*generation flags.*")
# Tiny models only lose from threads (and CI machines have 2 cores); real-model tests set their own.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """A tiny float32 Qwen2-shaped chat model, shared (tests must not modify it)."""
    return tiny_model("qwen2")


@pytest.fixture
def eds_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
