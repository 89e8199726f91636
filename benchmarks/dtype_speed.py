"""Greedy generation speed of the default model in float32 and bfloat16 on this machine (same prompts):
what `eds.models.default_dtype` decides by. Run from the repository root: python benchmarks/dtype_speed.py"""

import time

from eds import load_model, load_prompts
from eds.generate import generate

prompts = [p.prompt for p in load_prompts("orbench_hard:val:16", seed=0)]
for dt in ("float32", "bfloat16"):
    lm = load_model(dtype=dt)
    generate(lm, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    t = time.perf_counter()
    out, _ = generate(lm, prompts, max_new_tokens=32, batch_size=16, progress=False)
    print(dt, f"{time.perf_counter() - t:.1f} s for 16 prompts x 32 new tokens (batch 16)", flush=True)
