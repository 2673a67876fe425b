"""Evaluation-protocol switches that let RecBole reproduce MMRec's protocol when asked.

- ``test_masking: train_valid`` (RecBole, default) masks a user's training *and* validation items when
  ranking for test; ``train`` masks training items only, as MMRec (and every published multimodal
  number) does, so test scores come out slightly lower.
- ``negative_items: all`` (RecBole, default) draws training negatives uniformly from all items;
  ``train`` draws them from items that occur in training only, as MMRec does; it has no effect on
  models that train without negatives (``train_neg_sample_args: None``, e.g. BM3).
"""

from __future__ import annotations

import copy

import numpy as np
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.sampler import Sampler

from recbole_mm.errors import RecBoleMMError, config_choice


class TrainItemsSampler(Sampler):
    """RecBole's ``Sampler`` whose uniform negatives come only from ``candidate_items``."""

    candidate_items: np.ndarray

    @classmethod
    def from_sampler(cls, sampler: Sampler, candidate_items: np.ndarray) -> "TrainItemsSampler":
        restricted = copy.copy(sampler)
        restricted.__class__ = cls
        restricted.candidate_items = candidate_items
        return restricted

    def _uni_sampling(self, sample_num):
        return self.candidate_items[np.random.randint(0, len(self.candidate_items), sample_num)]


def training_items_per_user(train_dataset) -> np.ndarray:
    """Array (indexed by user id) of the sets of items each user has in training."""
    used = np.array([set() for _ in range(train_dataset.user_num)])
    users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
    items = train_dataset.inter_feat[train_dataset.iid_field].numpy()
    for user, item in zip(users, items):
        used[user].add(item)
    return used


def apply_protocol(config, train_data, valid_data, test_data):
    """Apply ``test_masking`` and ``negative_items`` to RecBole's dataloaders; returns the three."""
    masking = config_choice(config, "test_masking", ("train_valid", "train"), default="train_valid")
    negatives = config_choice(config, "negative_items", ("all", "train"), default="all")
    if masking == "train":
        if not isinstance(test_data, FullSortEvalDataLoader):
            raise RecBoleMMError("test_masking: train needs full-sort evaluation (eval_args mode: full)")
        # A full-sort loader masks its sampler's used items minus its positives, and RecBole's test
        # sampler uses train+valid+test; a copy that uses the training items only masks exactly those.
        sampler = copy.copy(test_data._sampler)
        sampler.used_ids = training_items_per_user(train_data._dataset)
        test_data = FullSortEvalDataLoader(config, test_data._dataset, sampler, shuffle=False)
    # Models that train without negatives (BM3: train_neg_sample_args None) have nothing to restrict.
    if negatives == "train" and config["train_neg_sample_args"]["distribution"] != "none":
        sampler = train_data._sampler
        if sampler is None or config["train_neg_sample_args"]["distribution"] != "uniform":
            raise RecBoleMMError("negative_items: train needs uniform negative sampling (train_neg_sample_args)")
        dataset = train_data._dataset
        seen = np.unique(dataset.inter_feat[dataset.iid_field].numpy())
        train_data._sampler = TrainItemsSampler.from_sampler(sampler, seen)
    return train_data, valid_data, test_data
