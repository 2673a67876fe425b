"""``feature_dtype`` float32 vs bfloat16 on GUME's costly layer at the Electronics shape: the purifier's first
layer (recbole_mm's FeatureLinear, 4,096 -> 64) applied to the whole 63,001 x 4,096 image table, one thread,
CPU seconds (time.process_time), float32 and bfloat16 interleaved, median of the repeats:

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/feature_dtype.py [--repeats 5]

Three cells, each as the model runs it:
- ``forward, fixed table``: evaluation or ``freeze_features``: float32 table vs its bf16 copy cast once
  (MultiModalRecommender.projection_input), no gradient;
- ``step, trainable table``: GUME's default training step for this layer: forward of the trainable float32
  table (the master Adam updates; cast to bf16 on every call under bfloat16), backward to the layer and the
  table, and the trainer's fused Adam step over both;
- ``forward+backward only``: the same without the Adam step (what bf16 can speed up; Adam's pass over the
  float32 table and its two moments is the same in both).
The features are random non-negative (CNN-like) values from a fixed seed: the cost does not depend on them.
Large blocks come from transparent huge pages, as under the recbole-mm command (cli.use_huge_pages): without
them the casts of the trainable table are dominated by page faults.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from recbole_mm.cli import use_huge_pages
from recbole_mm.model.abstract_recommender import FeatureLinear


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Print and return, per cell, the median CPU seconds ``(float32, bfloat16)``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=63_001)
    parser.add_argument("--width", type=int, default=4_096)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    use_huge_pages()  # before the first large allocation
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(args.items, args.width, generator=generator) * 2
    out_grad = torch.randn(args.items, args.dim, generator=generator)

    layers, tables, optimisers = {}, {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        layer = layers[dtype] = FeatureLinear(args.width, args.dim)
        layer.compute_dtype = None if dtype == torch.float32 else dtype
        table = tables[dtype] = torch.nn.Parameter(features.clone())
        optimisers[dtype] = torch.optim.Adam([table, *layer.parameters()], lr=1e-4, fused=True)
    fixed = {torch.float32: features, torch.bfloat16: features.bfloat16()}

    def forward(dtype):
        with torch.no_grad():
            layers[dtype](fixed[dtype])

    def forward_backward(dtype):
        optimisers[dtype].zero_grad(set_to_none=True)
        layers[dtype](tables[dtype]).backward(out_grad)

    def step(dtype):
        forward_backward(dtype)
        optimisers[dtype].step()

    cells = {"forward, fixed table": forward, "forward+backward only": forward_backward,
             "step, trainable table": step}
    times = {name: {torch.float32: [], torch.bfloat16: []} for name in cells}
    for name, fn in cells.items():
        fn(torch.float32), fn(torch.bfloat16)  # warm-up: allocations, oneDNN's kernel choice
        for _ in range(args.repeats):
            for dtype in (torch.float32, torch.bfloat16):
                times[name][dtype].append(_cpu(lambda: fn(dtype)))
    result = {}
    print(f"FeatureLinear {args.width} -> {args.dim} on {args.items:,} items, 1 thread, CPU s, "
          f"median of {args.repeats} (interleaved)")
    for name in cells:
        f32, bf16 = (statistics.median(times[name][d]) for d in (torch.float32, torch.bfloat16))
        result[name] = (f32, bf16)
        print(f"  {name:24s} float32 {f32:7.3f}  bfloat16 {bf16:7.3f}  ratio {bf16 / f32:.2f}")
    return result


if __name__ == "__main__":
    main()
