"""recbole_mm's own behaviour on RecBole's classes: not version fixes, the plugin's choices.

- Multi-process runs on CPU too (RecBole 1.2.1 hard-codes nccl and ``device_ids=[rank]``,
  ``configurator.py:496-511``, ``trainer.py:62-64``): gloo on CPU or ``dist_backend``, ``device_ids`` only
  on CUDA, the plugin models' data buffers made equal on every rank (docs/recbole-compat.md, fix 10).
- Checkpoint names that two runs started in the same second do not share, the same on every rank, and an
  evaluate barrier so that no rank reloads the best checkpoint before rank 0 has written it (fix 11).
- RecBole's loaders batch their positions a batch at a time (the same batches from the same draws).
- RecBole's negative sampler and full-sort evaluation loaders keep per-user item sets as sorted arrays
  (:mod:`recbole_mm.data.compact`: the same draws and batches in a small fraction of the memory).
- RecBole's LightGCN propagates through CSR copies of its graph (:func:`_lightgcn_forward`), the same sums as
  its COO ``torch.sparse.mm`` (up to their order) at about half the CPU time.
- A full-sort evaluation holds one ``[users, items]`` score matrix at a time instead of RecBole's two (the
  previous batch's goes back before the next is computed), with large blocks mapped while it runs
  (:func:`recbole_mm.speedups.large_blocks_mapped`): LightGCN's validation pass at the Electronics shape
  peaked 9.3 GiB, now 2.7 GiB (``benchmarks/electronics.py --models LightGCN``), with the same results.

The Config hook (model and dataset yaml files, settings read as data) is :mod:`recbole_mm.registry`'s.
:mod:`recbole_mm.plugin` installs these when RecBole is first imported.
"""

from __future__ import annotations

from typing import Any


# 10. configurator.py:496-511 hard-codes backend="nccl", cuda:<rank> and asserts one gpu_id per
#     process, and trainer.py:62-64 passes device_ids=[rank]: `run(..., nproc=2)` cannot run on CPU.
# 11. trainer.py:132 names the checkpoint per process from a 1-second clock, only rank 0 saves
#     (:296) and nothing waits before evaluate(load_best_model=True) (:583): other ranks read a
#     missing or half-written file (seen on GPU too). The same 1-second name makes two separate
#     runs started in the same second share (and overwrite) one checkpoint file.
def _init_device(self: Any) -> None:
    """``Config._init_device`` that runs multi-process jobs on CPU with gloo (or ``dist_backend``)."""
    import os

    import torch

    config = self.final_config_dict
    gpu_id = config["gpu_id"]
    config["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
    os.environ["CUDA_VISIBLE_DEVICES"] = config["gpu_id"]
    use_cuda = len(config["gpu_id"]) > 0 and torch.cuda.is_available()
    if "local_rank" not in config:
        config["single_spec"] = True
        config["local_rank"] = 0
        config["device"] = torch.device("cuda") if use_cuda else torch.device("cpu")
        return
    rank = config["local_rank"]
    if use_cuda and len(config["gpu_id"].split(",")) < config["nproc"]:
        from recbole_mm.errors import RecBoleMMError

        raise RecBoleMMError(f"gpu_id: '{config['gpu_id']}' lists fewer GPUs than nproc={config['nproc']} "
                             "processes; give one per process, e.g. --gpu_id=0,1 for --nproc=2")
    torch.distributed.init_process_group(
        backend=config.get("dist_backend") or ("nccl" if use_cuda else "gloo"),
        rank=rank + config["offset"],
        world_size=config["world_size"],
        init_method=f"tcp://{config['ip']}:{config['port']}",
    )
    config["device"] = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    config["single_spec"] = False
    if use_cuda:
        torch.cuda.set_device(rank)
    if rank != 0:
        config["state"] = "error"
        config["show_progress"] = False
        config["verbose"] = False


def _lightgcn_forward(self: Any) -> tuple[Any, Any]:
    """RecBole's ``LightGCN.forward`` (mean of the layers E, ÂE, Â²E, ...) with each layer's product through CSR
    copies of ``norm_adj_matrix`` and of its transpose (``graphs.sparse_matmul``), made once per graph: on CPU
    torch's COO ``sparse.mm`` and its backward were half of a training step (profiled, TikTok). Every row's sum
    runs over the same entries, in column order (RecBole's graph is not coalesced, so its own order may differ:
    float rounding; TikTok's 2-epoch fingerprint is bit for bit the same, ``tests/test_hooks_lightgcn.py``)."""
    import torch

    from recbole_mm.model.abstract_recommender import _CsrCache
    from recbole_mm.model.graphs import csr_pair, sparse_matmul

    cache = self.__dict__.setdefault("_recbole_mm_csr", _CsrCache())  # emptied in copies: CSR cannot be copied
    graph = self.norm_adj_matrix
    if cache.get("graph") is not graph:
        cache.update(graph=graph, csr=csr_pair(graph))
    embeddings = self.get_ego_embeddings()
    total = embeddings
    for _ in range(self.n_layers):
        embeddings = sparse_matmul(*cache["csr"], embeddings)
        total = total + embeddings
    # RecBole's stack(layers).mean(1) adds the layers in this order and divides once: the same numbers (bit for
    # bit), without the stacked copy of every layer and its backward (a sixth of a TikTok training step).
    mean = total / (self.n_layers + 1)
    return torch.split(mean, [self.n_users, self.n_items])


class _Positions:
    """The positions 0..n-1 that a RecBole loader batches (RecBole passes ``list(range(n))``), fetched a batch at
    a time: torch's fetcher calls ``__getitems__`` once per batch instead of indexing once per position."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i

    def __getitems__(self, positions: list) -> list:
        return positions


class _PositionBatches:
    """torch's ``BatchSampler`` over ``RandomSampler(generator=...)`` (``shuffle``) or ``SequentialSampler``, one
    batch at a time: the same batches from the same generator draws (a pass draws ``randperm(n)`` and, when it
    is exhausted, a second permutation of which ``RandomSampler`` keeps nothing), without a Python step per
    position."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator: Any):
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        import torch

        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else range(self.n)
        for start in range(0, self.n, self.batch_size):
            yield list(order[start:start + self.batch_size])
        if self.shuffle:
            torch.randperm(self.n, generator=self.generator)  # RandomSampler's remainder draw


def _abstract_loader_init(self: Any, config: Any, dataset: Any, sampler: Any, shuffle: bool = False) -> None:
    """RecBole's ``AbstractDataLoader.__init__`` (abstract_dataloader.py:45-76) with batches of positions made
    whole (:class:`_PositionBatches`, :class:`_Positions`) in single-process runs; multi-process runs keep
    RecBole's ``DistributedSampler``."""
    import torch
    from recbole.data.transform import construct_transform
    from recbole.utils import ModelType

    self.shuffle = shuffle
    self.config = config
    self._dataset = dataset
    self._sampler = sampler
    self._batch_size = self.step = self.model = None
    self._init_batch_size_and_step()
    self.generator = torch.Generator()
    self.generator.manual_seed(config["seed"])
    self.transform = construct_transform(config)
    self.is_sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    if not config["single_spec"] or self.sample_size == 0:
        index_sampler = None
        if not config["single_spec"]:
            index_sampler = torch.utils.data.distributed.DistributedSampler(
                list(range(self.sample_size)), shuffle=shuffle, drop_last=False)
            self.step = max(1, self.step // config["world_size"])
            shuffle = False
        torch.utils.data.DataLoader.__init__(
            self, dataset=list(range(self.sample_size)), batch_size=self.step, collate_fn=self.collate_fn,
            num_workers=config["worker"], shuffle=shuffle, sampler=index_sampler, generator=self.generator)
        return
    torch.utils.data.DataLoader.__init__(
        self, dataset=_Positions(self.sample_size),
        batch_sampler=_PositionBatches(self.sample_size, self.step, shuffle, self.generator),
        collate_fn=self.collate_fn, num_workers=config["worker"], generator=self.generator)


def install() -> None:
    import os
    import uuid

    import torch
    import torch.distributed as dist
    from recbole.config.configurator import Config
    from recbole.trainer.trainer import AbstractTrainer, Trainer
    from torch.nn.parallel import DistributedDataParallel

    Config._init_device = _init_device
    # Data preparation builds recbole_mm's compact sampler and full-sort loaders (same draws and batches,
    # per-user item sets as sorted arrays instead of Python objects: recbole_mm.data.compact).
    import recbole.data.utils as data_utils
    from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader

    from recbole_mm.data.compact import CompactFullSortEvalDataLoader, CompactSampler

    data_utils.Sampler = CompactSampler
    data_utils.FullSortEvalDataLoader = CompactFullSortEvalDataLoader
    AbstractDataLoader.__init__ = _abstract_loader_init  # whole batches of positions
    from recbole.model.general_recommender.lightgcn import LightGCN

    LightGCN.forward = _lightgcn_forward

    def abstract_trainer_init(self: Any, config: Any, model: Any) -> None:
        self.config = config
        self.model = model
        if not config["single_spec"]:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # recbole_mm's models keep data-derived buffers (features, sparse graphs) out of DDP's
            # broadcasts; they are made equal on every rank here, once (MultiModalRecommender).
            broadcast_data_buffers = getattr(self.model, "broadcast_data_buffers", None)
            if broadcast_data_buffers is not None:
                broadcast_data_buffers()
            on_cuda = config["device"].type == "cuda"
            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=[config["local_rank"]] if on_cuda else None
            )

    original_init = Trainer.__init__
    original_evaluate = Trainer.evaluate
    original_full_sort_batch_eval = Trainer._full_sort_batch_eval

    def trainer_init(self: Any, config: Any, model: Any) -> None:
        original_init(self, config, model)
        # trainer.py:132 names the checkpoint <Model>-<time to the second>.pth: two runs started in
        # the same second (a benchmark with parallel workers) overwrite each other's best checkpoint
        # and may test the other run's weights. A random suffix, as RecBole's log files have, fixes it.
        stem, ext = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{stem}-{uuid.uuid4().hex[:6]}{ext}"
        if not config["single_spec"]:
            name = [self.saved_model_file]
            dist.broadcast_object_list(name, src=0)  # every rank reads the file rank 0 writes
            self.saved_model_file = name[0]

    def evaluate(self: Any, eval_data: Any, load_best_model: bool = True, model_file: Any = None,
                 show_progress: bool = False) -> Any:
        if load_best_model and not self.config["single_spec"] and eval_data:
            dist.barrier()  # rank 0 has finished writing the best checkpoint
        from recbole_mm.speedups import large_blocks_mapped  # (speedups imports RecBole, which imports these hooks)

        self._collected_scores = None
        self._evaluating = True
        try:
            with large_blocks_mapped():  # its [users, items] score matrices: mapped, not grown into the heap
                return original_evaluate(self, eval_data, load_best_model=load_best_model, model_file=model_file,
                                         show_progress=show_progress)
        finally:
            self._evaluating, self._collected_scores = False, None

    def full_sort_batch_eval(self: Any, batched_data: Any) -> Any:
        # RecBole's evaluate loop (trainer.py:519-528) still holds the previous batch's [users, items] scores
        # while this batch's are computed: its variable is rebound only when this returns, so two matrices are
        # alive at once (2 GB at 4,096 users x 63,002 items). The collector has taken what it keeps (copies)
        # and the loop reads them no more: their memory goes back first. Only scores that own their storage
        # (a model's fresh matrix, never a view into something it keeps; not numpy's memory, which torch
        # cannot resize: ItemKNN's), and only inside evaluate's loop.
        previous, self._collected_scores = getattr(self, "_collected_scores", None), None
        if previous is not None:
            storage = previous.untyped_storage()
            if storage.resizable() and storage.nbytes() == previous.numel() * previous.element_size():
                storage.resize_(0)
        out = original_full_sort_batch_eval(self, batched_data)
        if getattr(self, "_evaluating", False):
            self._collected_scores = out[1]
        return out

    AbstractTrainer.__init__ = abstract_trainer_init
    Trainer.__init__ = trainer_init
    Trainer.evaluate = evaluate
    Trainer._full_sort_batch_eval = full_sort_batch_eval

