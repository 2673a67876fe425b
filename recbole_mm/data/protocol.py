"""Evaluation-protocol switches that let RecBole reproduce MMRec's protocol when asked.

- ``test_masking: train_valid`` (RecBole, default) masks a user's training *and* validation items when
  ranking for test; ``train`` masks training items only, as MMRec (and every published multimodal
  number) does, so test scores come out slightly lower.
- ``negative_items: all`` (RecBole, default) draws training negatives uniformly from all items;
  ``train`` draws them from items that occur in training only, as MMRec does; it has no effect on
  models that train without negatives (``train_neg_sample_args: None``, e.g. BM3).
- ``cold_start_items: 0.2`` (MM-GEF's cold-start study; ``cold_start_valid_items``, ``cold_start_seed``):
  a seeded group of training items is held out with all its interactions as the test split, a second
  group as the validation split, so the epoch is chosen on new items too. Held-out items are never
  training negatives (they do not exist at training time). ``cold_start_candidates: cold`` (default)
  ranks each split's held-out items among that split's held-out items only, as cold-start studies do,
  by masking every other item; ``all`` ranks them among all items (warm items, whose ID embeddings
  were trained, then fill the top-K).
- ``shuffle_features: True`` (``shuffle_features_seed``) is the control for content: the feature rows are
  permuted across items (one permutation for every modality), everything else equal.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_mm.data.compact import CompactFullSortEvalDataLoader, CompactSampler, user_items_of
from recbole_mm.data.files import SPLIT_LABEL  # 0/1/2 = train/valid/test
from recbole_mm.errors import DataError, RecBoleMMError, config_choice

COLD_VALID_DEFAULT = 0.1  # cold_start_valid_items when unset: a tenth of the training items validate


def cold_start_split(table: pd.DataFrame, item_field: str, test_fraction: float, valid_fraction: float,
                     seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Cold-start protocol: hold out seeded groups of the items that occur in training.

    ``round(test_fraction * n)`` of the n training items (drawn first, so a seed's test items do not
    depend on ``valid_fraction``) move with all their interactions to test, and then
    ``round(valid_fraction * n)`` others to valid. Test holds only the test group's interactions and,
    when ``valid_fraction > 0``, valid only the valid group's (other valid/test rows are dropped), so
    both splits measure items never seen in training. ``valid_fraction == 0`` keeps the warm validation
    rows (the epoch is then chosen on warm items). Returns the table and the groups' raw item ids.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"cold_start_items: {test_fraction} must be a fraction between 0 and 1, e.g. 0.2")
    if not 0 <= valid_fraction < 1 - test_fraction:
        raise DataError(f"cold_start_valid_items: {valid_fraction} must be at least 0 and below "
                        f"1 - cold_start_items = {1 - test_fraction:g}, e.g. 0.1")
    train_items = np.unique(table.loc[table[SPLIT_LABEL] == 0, item_field].to_numpy())
    rng = np.random.default_rng(seed)
    test = rng.choice(train_items, size=max(1, int(round(test_fraction * len(train_items)))), replace=False)
    valid = np.zeros(0, dtype=train_items.dtype)
    if valid_fraction > 0:
        rest = np.setdiff1d(train_items, test)
        valid = rng.choice(rest, size=min(len(rest) - 1, max(1, int(round(valid_fraction * len(train_items))))),
                           replace=False)
    in_test, in_valid = table[item_field].isin(test), table[item_field].isin(valid)
    keep = in_test | in_valid | (table[SPLIT_LABEL] == 0)
    if valid_fraction == 0:
        keep |= table[SPLIT_LABEL] == 1
    out = table[keep].copy()
    out.loc[out[item_field].isin(valid), SPLIT_LABEL] = 1
    out.loc[out[item_field].isin(test), SPLIT_LABEL] = 2
    # RecBole numbers items in order of first appearance, and in file order a held-out item with many
    # held-out rows tends to appear early: its internal id would carry its held-out popularity, which a
    # ranker that breaks ties by id (Pop: every held-out item scores 0) would read. So the held-out
    # rows come grouped by item, the items in a seeded random order, and ids carry nothing.
    held_out = np.concatenate([valid, test])
    rank = dict(zip(held_out.tolist(), (rng.permutation(len(held_out)) + 1).tolist()))
    key = out[item_field].map(rank).where(out[SPLIT_LABEL] != 0, 0).to_numpy()
    out = out.iloc[np.lexsort((np.arange(len(out)), key))]
    return out.reset_index(drop=True), {"valid": np.sort(valid), "test": np.sort(test)}


class CandidateEvalDataLoader(CompactFullSortEvalDataLoader):
    """RecBole's full-sort loader whose rankings are restricted to ``candidates`` (internal item ids).

    Every other item is masked through the loader's history index, which RecBole's trainer sets to
    -inf before its evaluators run; the index is built by broadcasting (batch rows x non-candidates),
    so it costs a batch-sized and an item-sized vector, not a batch x items one. A user's own history
    needs no separate mask here: the candidates of a cold-start split never occur in its history.
    """

    non_candidates: torch.Tensor

    def collate_fn(self, index):
        interaction, _, positive_u, positive_i = super().collate_fn(index)
        rows = torch.arange(len(interaction)).unsqueeze(1)
        return interaction, (rows, self.non_candidates.unsqueeze(0)), positive_u, positive_i


def candidate_loader(config, loader: FullSortEvalDataLoader, candidates: np.ndarray) -> CandidateEvalDataLoader:
    """A copy of ``loader`` that ranks only ``candidates``."""
    restricted = CandidateEvalDataLoader(config, loader._dataset, loader._sampler, shuffle=False)
    item_num = loader._dataset.item_num
    restricted.non_candidates = torch.from_numpy(np.setdiff1d(np.arange(1, item_num), candidates))
    return restricted


def _cold_start(config, train_data, valid_data, test_data):
    groups = getattr(train_data._dataset, "cold_start_item_ids", None)
    if not groups:
        return train_data, valid_data, test_data
    candidates = config_choice(config, "cold_start_candidates", ("cold", "all"), default="cold")
    # Never a negative: an item that does not exist at training time cannot be pushed down.
    sampler = train_data._sampler
    if sampler is not None:
        if config["train_neg_sample_args"]["distribution"] != "uniform":
            raise RecBoleMMError("cold_start_items needs uniform negative sampling (train_neg_sample_args), "
                                 "so that held-out items can be kept out of the negatives")
        pool = getattr(sampler, "candidate_items", np.arange(1, train_data._dataset.item_num))
        held_out = np.concatenate([groups["valid"], groups["test"]])
        train_data._sampler = TrainItemsSampler.from_sampler(sampler, np.setdiff1d(pool, held_out))
    if candidates == "cold":
        for name, data in (("valid", valid_data), ("test", test_data)):
            if len(groups[name]) and not isinstance(data, FullSortEvalDataLoader):
                raise RecBoleMMError("cold_start_candidates: cold needs full-sort evaluation (eval_args mode: full); "
                                     "or set cold_start_candidates: all")
        if len(groups["valid"]):
            valid_data = candidate_loader(config, valid_data, groups["valid"])
        test_data = candidate_loader(config, test_data, groups["test"])
    return train_data, valid_data, test_data


class TrainItemsSampler(CompactSampler):
    """RecBole's ``Sampler`` whose uniform negatives come only from ``candidate_items``."""

    candidate_items: np.ndarray

    @classmethod
    def from_sampler(cls, sampler: CompactSampler, candidate_items: np.ndarray) -> "TrainItemsSampler":
        restricted = copy.copy(sampler)
        restricted.__class__ = cls
        restricted.candidate_items = candidate_items
        return restricted

    def _uni_sampling(self, sample_num):
        return self.candidate_items[np.random.randint(0, len(self.candidate_items), sample_num)]


def apply_protocol(config, train_data, valid_data, test_data):
    """Apply ``test_masking``, ``negative_items`` and the cold-start candidates and negatives to
    RecBole's dataloaders; returns the three."""
    masking = config_choice(config, "test_masking", ("train_valid", "train"), default="train_valid")
    negatives = config_choice(config, "negative_items", ("all", "train"), default="all")
    if masking == "train":
        if not isinstance(test_data, FullSortEvalDataLoader):
            raise RecBoleMMError("test_masking: train needs full-sort evaluation (eval_args mode: full)")
        # A full-sort loader masks its sampler's used items minus its positives, and RecBole's test
        # sampler uses train+valid+test; a copy that uses the training items only masks exactly those.
        sampler = copy.copy(test_data._sampler)
        sampler.used_ids = user_items_of(train_data._dataset)  # the training items per user
        test_data = CompactFullSortEvalDataLoader(config, test_data._dataset, sampler, shuffle=False)
    # Models that train without negatives (BM3: train_neg_sample_args None) have nothing to restrict.
    if negatives == "train" and config["train_neg_sample_args"]["distribution"] != "none":
        sampler = train_data._sampler
        if sampler is None or config["train_neg_sample_args"]["distribution"] != "uniform":
            raise RecBoleMMError("negative_items: train needs uniform negative sampling (train_neg_sample_args)")
        dataset = train_data._dataset
        seen = np.unique(dataset.inter_feat[dataset.iid_field].numpy())
        train_data._sampler = TrainItemsSampler.from_sampler(sampler, seen)
    return _cold_start(config, train_data, valid_data, test_data)
