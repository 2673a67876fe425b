"""CPU seconds and loss of every training epoch, for recbole_mm's run of a model or for MMRec's own
(docs/slmrec.md: the TikTok side by side and the epoch-time ratio). Not part of the package or of CI.

    OMP_NUM_THREADS=1 python scripts/epoch_cpu_seconds.py ours -- --model=SLMRec --dataset=tiktok --epochs=3
    OMP_NUM_THREADS=1 <reference venv>/bin/python scripts/epoch_cpu_seconds.py mmrec /path/to/MMRec/src -- \\
        SLMRec learning_rate=0.001 ssl_alpha=0.1 ssl_temp=0.2 reg=0.0001 epochs=3

``ours`` runs ``run_recbole_mm.py`` with the words after ``--``; ``mmrec`` runs
``scripts/run_mmrec_reference.py`` with them. Either way the trainer's ``_train_epoch`` is wrapped to
read ``time.process_time()`` (this process's CPU time, all threads; one thread here) around each
training epoch, so a loaded machine does not inflate the numbers as wall time would. The last line
printed is ``EPOCHS {"loss": [...], "cpu_s": [...]}`` (JSON). Interleave runs of the two sides (A B A B)
to compare them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(trainer_class, losses: list, seconds: list, returns_pair: bool) -> None:
    """Wrap ``trainer_class._train_epoch`` to record each epoch's loss and CPU seconds. RecBole's returns
    the epoch's summed loss (a tuple for a model with several losses); MMRec's (that, per-batch losses)."""
    original = trainer_class._train_epoch

    def _train_epoch(self, *args, **kwargs):
        start = time.process_time()
        result = original(self, *args, **kwargs)
        seconds.append(time.process_time() - start)
        loss = result[0] if returns_pair else result
        losses.append(float(sum(loss)) if isinstance(loss, tuple) else float(loss))
        return result

    trainer_class._train_epoch = _train_epoch


def main(argv: list[str]) -> None:
    split = argv.index("--")
    side, rest, words = argv[0], argv[1:split], argv[split + 1:]
    losses, seconds = [], []
    try:
        if side == "ours":
            sys.path.insert(0, str(HERE.parent))
            import recbole_mm  # noqa: F401
            from recbole_mm.cli import console_main
            from recbole_mm.trainer import Trainer

            timed(Trainer, losses, seconds, returns_pair=False)
            sys.argv = ["run_recbole_mm.py", *words]
            console_main(prog="run_recbole_mm.py")
        elif side == "mmrec":
            sys.path.insert(0, str(HERE))
            import run_mmrec_reference

            run_mmrec_reference.install_shims()
            sys.path.insert(0, str(Path(rest[0]).resolve()))
            from common.trainer import Trainer

            timed(Trainer, losses, seconds, returns_pair=True)
            run_mmrec_reference.main(rest[0], *words)
        else:
            raise SystemExit(f"epoch_cpu_seconds.py: error: first word is ours or mmrec, got {side!r}")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise
    print("EPOCHS " + json.dumps({"loss": losses, "cpu_s": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])
