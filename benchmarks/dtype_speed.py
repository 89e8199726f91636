"""Greedy generation speed of the default model in float32 (linear layers plain and oneDNN-packed) and
bfloat16 on this machine, same prompts, same replies checked: what `eds.models.default_dtype` and
`load_model(pack_linear=)` decide by. Run from the repository root: python benchmarks/dtype_speed.py"""

import time

from eds import load_model, load_prompts
from eds.generate import generate

prompts = [p.prompt for p in load_prompts("orbench_hard:val:16", seed=0)]
replies = {}
for label, dt, pack in (
    ("float32, plain linear", "float32", False),
    ("float32, packed", "float32", True),
    ("bfloat16", "bfloat16", False),
):
    lm = load_model(dtype=dt, pack_linear=pack)
    generate(lm, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    t = time.perf_counter()
    replies[label], _ = generate(lm, prompts, max_new_tokens=32, batch_size=16, progress=False)
    print(f"{label}: {time.perf_counter() - t:.1f} s for 16 prompts x 32 new tokens (batch 16)", flush=True)
    del lm
same = sum(a == b for a, b in zip(replies["float32, plain linear"], replies["float32, packed"], strict=True))
print(f"float32 replies identical with and without packing: {same}/16")
