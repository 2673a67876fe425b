"""The Adam step of a trainable feature table read whole (GUME's 4096-d image table at the Electronics shape):
today's dense table gradient then one fused Adam call, against the gradient computed and applied in row chunks
(never materialised whole). One thread, CPU seconds per step, interleaved; the chunks' gradient rows are checked
bit for bit against the full product first.

    OMP_NUM_THREADS=1 THP_MEM_ALLOC_ENABLE=1 taskset -c 0 python benchmarks/table_adam.py --rows 64 256 1024

A design measurement for issue #24 (nothing in the package uses chunked steps yet).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=63001)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256, 1024], help="chunk sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    table = torch.randn(args.items, args.width) * 0.1
    weight = torch.randn(args.dim, args.width) * 0.01
    upstream = torch.randn(args.items, args.dim)  # the gradient of the projection's output
    exp_avg, exp_avg_sq, step = torch.zeros_like(table), torch.zeros_like(table), torch.tensor(0.0)
    adam = dict(amsgrad=False, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False)

    def dense() -> None:
        step.add_(1)
        torch._fused_adam_([table], [upstream @ weight], [exp_avg], [exp_avg_sq], [], [step], **adam)

    def chunked(rows: int) -> None:
        step.add_(1)
        for s in range(0, args.items, rows):
            torch._fused_adam_([table[s:s + rows]], [upstream[s:s + rows] @ weight], [exp_avg[s:s + rows]],
                               [exp_avg_sq[s:s + rows]], [], [step], **adam)

    full = upstream @ weight
    same = all(torch.equal(full[s:s + r], upstream[s:s + r] @ weight)
               for r in args.rows for s in range(0, args.items, r))
    del full
    print(f"table {args.items} x {args.width}, projection to {args.dim}; chunk gradients bit for bit: {same}")
    steps = {"dense gradient + one step": dense,
             **{f"chunks of {rows} rows": functools.partial(chunked, rows) for rows in args.rows}}
    seconds: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.repeats):
        for label, run_step in steps.items():
            start = time.process_time()
            run_step()
            seconds[label].append(time.process_time() - start)
    base = statistics.median(seconds["dense gradient + one step"])
    for label, values in seconds.items():
        print(f"{label}: median {statistics.median(values):.3f} CPU s (x{statistics.median(values) / base:.2f}; "
              f"{' '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
