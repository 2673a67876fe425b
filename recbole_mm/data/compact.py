"""RecBole's per-user item sets, stored as sorted arrays instead of one Python object per user.

RecBole 1.2.1 keeps, for every user, a Python ``set`` of used items per sampler phase (train, train+valid,
train+valid+test: three copies) and two ``torch`` tensors per user in every full-sort evaluation loader
(history and positives). At the Electronics shape (192k users, 1.69M interactions) that is about 860 MB of
small objects, more than the interactions themselves by two orders of magnitude. :class:`UserItems` holds the
same (user, item) pairs as one sorted int64 array of keys ``user * n_items + item``; :class:`CompactSampler`
and :class:`CompactFullSortEvalDataLoader` are RecBole's ``Sampler`` and ``FullSortEvalDataLoader`` on it, with
the same random draws and the same batches (each user's items in ascending id order, where RecBole's come
in set order, which no consumer reads: masks and positive matrices are order-free). recbole_mm's hooks
install them in RecBole's data preparation (:func:`recbole_mm.hooks.install`).
"""

from __future__ import annotations

from logging import getLogger

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader
from recbole.data.interaction import Interaction
from recbole.sampler import Sampler
from recbole.utils import ModelType


class UserItems:
    """Per user, a set of item ids (internal ids below ``n_items``), as sorted keys ``user * n_items + item``.

    Reads like RecBole's array of sets where RecBole's code reads it (``[user]`` a ``set``, ``[users]`` an
    array of sets, iteration, ``len``), and has the vectorised reads recbole_mm's loaders use instead
    (:meth:`contains`, :meth:`pairs`, :meth:`items`)."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
        keys = np.asarray(users, dtype=np.int64) * int(n_items) + np.asarray(items, dtype=np.int64)
        self._index(np.unique(keys), n_users, n_items)

    @classmethod
    def from_keys(cls, keys: np.ndarray, n_users: int, n_items: int) -> "UserItems":
        """From already sorted, distinct keys."""
        out = cls.__new__(cls)
        out._index(keys, n_users, n_items)
        return out

    def _index(self, keys: np.ndarray, n_users: int, n_items: int) -> None:
        self.n_users, self.n_items, self.keys = int(n_users), int(n_items), keys
        self.indptr = np.searchsorted(keys, np.arange(self.n_users + 1, dtype=np.int64) * self.n_items)

    def union(self, users: np.ndarray, items: np.ndarray) -> "UserItems":
        """These pairs plus the given ones (a later sampler phase)."""
        added = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        return UserItems.from_keys(np.union1d(self.keys, added), self.n_users, self.n_items)

    def counts(self) -> np.ndarray:
        """Number of items per user."""
        return np.diff(self.indptr)

    def items(self, user: int) -> np.ndarray:
        """One user's items, ascending."""
        return self.keys[self.indptr[user]:self.indptr[user + 1]] - user * self.n_items

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean per pair: whether ``items[k]`` is among ``users[k]``'s items."""
        query = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        where = np.minimum(np.searchsorted(self.keys, query), max(len(self.keys) - 1, 0))
        return self.keys[where] == query if len(self.keys) else np.zeros(len(query), dtype=bool)

    def pairs(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) int64 tensors of every item of ``users[row]``, rows in order: what RecBole's full-sort
        collate builds from its per-user tensors."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        counts = ends - starts
        rows = np.repeat(np.arange(len(users), dtype=np.int64), counts)
        offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        items = self.keys[np.repeat(starts, counts) + offsets] - np.repeat(users, counts) * self.n_items
        return torch.from_numpy(rows), torch.from_numpy(items)

    def __len__(self) -> int:
        return self.n_users

    def __getitem__(self, user):
        if np.ndim(user) == 0:
            return set(self.items(int(user)).tolist())
        out = np.empty(len(user), dtype=object)
        out[:] = [set(self.items(int(u)).tolist()) for u in user]
        return out

    def __iter__(self):
        return (set(self.items(u).tolist()) for u in range(self.n_users))


class UserItemTensors:
    """A loader's per-user tensors (RecBole's ``uid2history_item`` / ``uid2positive_item``) as a view of
    :class:`UserItems`: ``[user]`` one tensor, ``[users]`` a list of tensors (RecBole's case study reads it)."""

    def __init__(self, items: UserItems):
        self.user_items = items

    def __len__(self) -> int:
        return len(self.user_items)

    def __getitem__(self, user):
        if np.ndim(user) == 0:
            return torch.from_numpy(self.user_items.items(int(user)).copy())
        return [torch.from_numpy(self.user_items.items(int(u)).copy()) for u in user]


def user_items_of(dataset, previous: UserItems | None = None) -> UserItems:
    """The (user, item) pairs of ``dataset``'s interactions (plus ``previous``'s)."""
    users = dataset.inter_feat[dataset.uid_field].numpy()
    items = dataset.inter_feat[dataset.iid_field].numpy()
    if previous is not None:
        return previous.union(users, items)
    return UserItems(users, items, dataset.user_num, dataset.item_num)


class CompactSampler(Sampler):
    """RecBole's ``Sampler`` with :class:`UserItems` as ``used_ids``: the same negatives from the same random
    draws (rejection sampling redraws the same positions in the same order), at a vectorised membership test
    instead of a Python loop over sets."""

    def get_used_ids(self):
        used, last = {}, None
        for phase, dataset in zip(self.phases, self.datasets):
            last = used[phase] = user_items_of(dataset, last)
        if last is not None and (last.counts() + 1 == self.item_num).any():
            raise ValueError(  # RecBole's own message
                "Some users have interacted with all items, "
                "which we can not sample negative items for them. "
                "Please set `user_inter_num_interval` to filter those users."
            )
        return used

    def sample_by_key_ids(self, key_ids, num):
        key_ids = np.array(key_ids)
        if not isinstance(self.used_ids, UserItems) or (key_ids == key_ids[0]).all():
            return super().sample_by_key_ids(key_ids, num)
        total_num = len(key_ids) * num
        value_ids = np.zeros(total_num, dtype=np.int64)
        check_list = np.arange(total_num)
        key_ids = np.tile(key_ids, num)
        while len(check_list) > 0:
            value_ids[check_list] = self.sampling(len(check_list))
            check_list = check_list[self.used_ids.contains(key_ids[check_list], value_ids[check_list])]
        return torch.tensor(value_ids, dtype=torch.long)


class CompactFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's ``FullSortEvalDataLoader`` whose per-user history and positives are :class:`UserItems`
    (``uid2history_item`` / ``uid2positive_item`` read as RecBole's, through :class:`UserItemTensors`)."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            super().__init__(config, dataset, sampler, shuffle=shuffle)
            return
        self.logger = getLogger()
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.is_sequential = False
        dataset.sort(by=self.uid_field, ascending=True)  # as RecBole does (in place)
        users = dataset.inter_feat[self.uid_field].numpy()
        items = dataset.inter_feat[self.iid_field].numpy()
        positives = UserItems(users, items, dataset.user_num, dataset.item_num)
        listed = np.unique(users)
        used = sampler.used_ids
        if not isinstance(used, UserItems):  # a sampler from elsewhere: RecBole's array of sets
            pairs = np.array([(u, i) for u in listed for i in used[u]], dtype=np.int64).reshape(-1, 2)
            used = UserItems(pairs[:, 0], pairs[:, 1], dataset.user_num, dataset.item_num)
        mine = np.isin(used.keys // used.n_items, listed)
        history = UserItems.from_keys(np.setdiff1d(used.keys[mine], positives.keys, assume_unique=True),
                                      dataset.user_num, dataset.item_num)
        self.positive_items, self.history_items = positives, history
        self.uid2positive_item = UserItemTensors(positives)
        self.uid2history_item = UserItemTensors(history)
        self.uid2items_num = positives.counts()
        self.uid_list = torch.from_numpy(listed.astype(np.int64))
        self.user_df = dataset.join(Interaction({self.uid_field: self.uid_list}))
        self.sample_size = len(self.user_df)
        if shuffle:
            self.logger.warning("FullSortEvalDataLoader can't shuffle")
            shuffle = False
        AbstractDataLoader.__init__(self, config, dataset, sampler, shuffle=shuffle)

    def collate_fn(self, index):
        if self.is_sequential:
            return super().collate_fn(index)
        user_df = self.user_df[np.array(index)]
        uids = user_df[self.uid_field].numpy()
        history_u, history_i = self.history_items.pairs(uids)
        positive_u, positive_i = self.positive_items.pairs(uids)
        return user_df, (history_u, history_i), positive_u, positive_i
