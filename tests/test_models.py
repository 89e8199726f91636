import io
import json

import pytest
import torch
from torch import nn

from eds import models
from eds.models import Fingerprint, ModelError, find_layers
from eds.testing import TINY_CONFIGS, tiny_model

EXPECTED_PATHS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "opt": "model.decoder.layers"}


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_layer_discovery_on_tiny_models(model_type):
    lm = tiny_model(model_type, layers=4)
    path, layers = find_layers(lm.model)
    assert path == EXPECTED_PATHS.get(model_type, "model.layers")
    assert len(layers) == 4 and lm.fingerprint.num_layers == 4 and lm.fingerprint.hidden_size == 32
    # The state entering layer L is what the model reports as hidden_states[L].
    enc = lm.encode(["How do I kill a Python process?"])
    seen = {}

    def grab(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = layers[2].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = lm.model(**enc, output_hidden_states=True)
    finally:
        handle.remove()
    torch.testing.assert_close(seen["h"], out.hidden_states[2])


def test_unknown_architecture_says_how_to_name_layers():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ModelError, match="layers_attr"):
        find_layers(Odd())
    assert find_layers(Odd(), "blocks")[0] == "blocks"
    with pytest.raises(ModelError, match="no non-empty ModuleList at 'nope'"):
        find_layers(Odd(), "nope")


def test_fingerprint_round_trip_and_mismatch():
    a = tiny_model("qwen2").fingerprint
    assert Fingerprint.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    a.check(a)
    b = tiny_model("qwen2", layers=4).fingerprint
    with pytest.raises(ModelError, match="num_layers: 3 != 4"):
        a.check(b)
    c = tiny_model("llama").fingerprint
    with pytest.raises(ModelError, match="architecture"):
        a.check(c)
    renamed = Fingerprint(**{**a.to_dict(), "name": "a-finetune"})
    with pytest.warns(UserWarning, match="same shapes"):
        a.check(renamed)


def test_chat_rendering_and_left_padding(tiny):
    enc = tiny.encode(["hi", "a much longer prompt than the first one"])
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][:, -1].all()
    texts = tiny.chat_texts(["hi"], system_prompt="Be brief.")
    assert texts[0].startswith("<|im_start|>system\nBe brief.") and texts[0].endswith("<|im_start|>assistant\n")
    assert "system" not in tiny.chat_texts(["hi"])[0]


def test_encode_passes_only_ids_and_mask_so_generate_accepts_any_tokenizer(tiny, monkeypatch):
    # some tokenizers (and older transformers) add token_type_ids, which decoder-only generate rejects
    real = type(tiny.tokenizer).__call__

    def with_type_ids(self, *args, **kwargs):
        enc = real(self, *args, **kwargs)
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
        return enc

    monkeypatch.setattr(type(tiny.tokenizer), "__call__", with_type_ids)
    enc = tiny.encode(["hi", "a longer prompt"])
    assert set(enc) == {"input_ids", "attention_mask"}
    tiny.model.generate(**enc, max_new_tokens=1, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id)


def test_load_model_from_local_folder(tmp_path, tiny, monkeypatch):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    lm = models.load_model(str(tmp_path), dtype="float32", device="cpu")
    assert lm.fingerprint.mismatches(tiny.fingerprint) == []
    assert lm.tokenizer.padding_side == "left" and not any(p.requires_grad for p in lm.model.parameters())
    with pytest.raises(ModelError, match="cannot load"):
        models.load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="unknown dtype"):
        models.load_model(str(tmp_path), dtype="float8")
    # the default dtype follows what the CPU computes natively
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda native=native: native)
        lm = models.load_model(str(tmp_path), device="cpu")
        assert next(lm.model.parameters()).dtype == expected and lm.dtype_name == str(expected)[6:]


AVX2_EPYC = "flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512bw avx512vl sha_ni\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (AVX2_EPYC, False),  # avx512 without its bf16 extension: torch emulates bf16
        (AVX2_EPYC.replace("sha_ni", "avx512_bf16 sha_ni"), True),  # Zen 4, Cooper Lake
        (AVX2_EPYC.replace("sha_ni", "amx_bf16 amx_tile"), True),  # Sapphire Rapids
        ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics bf16 i8mm\n", True),  # arm64 (Graviton 3)
        ("Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n", False),
    ],
)
def test_native_bf16_is_read_off_the_cpu_flags(cpuinfo, native):
    assert models.cpu_has_native_bf16(cpuinfo) is native


def test_chunks_are_joined_in_numeric_order():
    names = ["part10.bin", "part2.bin", "part1.bin"]
    assert sorted(names, key=models._numeric_key) == ["part1.bin", "part2.bin", "part10.bin"]


def _fake_spec(payload: bytes):
    import hashlib

    return models.BuiltinModel(
        name="fake",
        upstream="x/y",
        packages=("fake-part1", "fake-part2"),
        version="1.0",
        sha256=hashlib.sha256(payload).hexdigest(),
    )


def test_joined_chunks_must_match_the_pinned_hash(tmp_path, monkeypatch):
    spec = _fake_spec(b"abcdef")
    monkeypatch.setattr(
        models, "_iter_chunks", lambda s, w: iter([("p1", io.BytesIO(b"abc")), ("p2", io.BytesIO(b"def"))])
    )
    models._join_gguf(spec, tmp_path, tmp_path / "ok.gguf")
    assert (tmp_path / "ok.gguf").read_bytes() == b"abcdef"
    monkeypatch.setattr(
        models, "_iter_chunks", lambda s, w: iter([("p1", io.BytesIO(b"abX")), ("p2", io.BytesIO(b"def"))])
    )
    with pytest.raises(ModelError, match="refusing to use them"):
        models._join_gguf(spec, tmp_path, tmp_path / "bad.gguf")


@pytest.fixture
def fake_builtin(eds_cache, monkeypatch, tiny):
    """A built-in whose 'GGUF' is a few bytes and whose conversion saves the tiny model."""
    spec = _fake_spec(b"gguf-bytes")
    monkeypatch.setitem(models.BUILTIN_MODELS, "fake", spec)
    monkeypatch.setattr(
        models, "_iter_chunks", lambda s, w: iter([("p1", io.BytesIO(b"gguf-")), ("p2", io.BytesIO(b"bytes"))])
    )
    conversions = []

    def convert(gguf_dir, out):
        assert (gguf_dir / models._GGUF_NAME).read_bytes() == b"gguf-bytes"
        conversions.append(out)
        tiny.model.save_pretrained(out)
        tiny.tokenizer.save_pretrained(out)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return conversions


def test_builtin_cache_is_built_once_then_reused(fake_builtin):
    assert models.cache_state("fake") == "missing"
    folder = models.prepare_builtin("fake")
    assert models.cache_state("fake") == "ready" and len(fake_builtin) == 1
    assert models.prepare_builtin("fake") == folder and len(fake_builtin) == 1
    lm = models.load_model("fake", dtype="float32")
    assert lm.name == "fake" and lm.fingerprint.num_layers == 3
    assert not list(folder.parent.glob(".fake.build-*"))  # no build leftovers


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no-marker"])
def test_bad_cache_is_detected_and_rebuilt(fake_builtin, damage):
    folder = models.prepare_builtin("fake")
    weights = folder / "model.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "delete":
        weights.unlink()
    else:
        (folder / models._MARKER).unlink()
    assert models.cache_state("fake").startswith("corrupt")
    with pytest.warns(UserWarning, match="rebuilding"):
        models.prepare_builtin("fake")
    assert models.cache_state("fake") == "ready" and len(fake_builtin) == 2


def test_unknown_builtin():
    with pytest.raises(ModelError, match="unknown built-in"):
        models.prepare_builtin("gpt-17")
