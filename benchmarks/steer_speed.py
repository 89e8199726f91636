#!/usr/bin/env python3
"""Steering speed benchmark; the code lives in eds.bench (also `eds bench`). Run from a checkout:

python3 benchmarks/steer_speed.py --config qwen2.5-1.5b --batch-sizes 1 8 32 --out-dir benchmarks/results
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without installing

from eds.bench import main

if __name__ == "__main__":
    sys.exit(main())
