"""recbole_mm.data.compact: RecBole's sampler and full-sort loaders on sorted arrays give RecBole's own draws
and batches (the hooks install them in data preparation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.sampler import Sampler

from recbole_mm.data.compact import CompactFullSortEvalDataLoader, CompactSampler, UserItems
from recbole_mm.quick_start import create_dataset, make_config, prepare_data


@pytest.fixture
def built(planted):
    root, config_dict = planted
    config = make_config("GUME", "planted", config_dict=config_dict)
    dataset = create_dataset(config)
    return config, dataset, dataset.build()


def test_used_ids_are_recboles_sets(built):
    config, dataset, datasets = built
    phases = ["train", "valid", "test"]
    ours, theirs = CompactSampler(phases, datasets), Sampler(phases, datasets)
    for phase in phases:
        assert len(ours.used_ids[phase]) == len(theirs.used_ids[phase]) == dataset.user_num
        assert list(ours.used_ids[phase]) == list(theirs.used_ids[phase])
        users = np.array([0, 3, 3, 7])
        assert list(ours.used_ids[phase][users]) == list(theirs.used_ids[phase][users])


@pytest.mark.parametrize("num", [1, 3])
def test_negatives_are_recboles_draws(built, num):
    """The same seeded negatives as RecBole's sampler, for mixed users and for one repeated user (RecBole's
    other branch), rejected positives redrawn in the same order."""
    config, dataset, datasets = built
    phases = ["train", "valid", "test"]
    ours = CompactSampler(phases, datasets).set_phase("train")
    theirs = Sampler(phases, datasets).set_phase("train")
    users = datasets[0].inter_feat[dataset.uid_field].numpy()[:300]
    for key_ids in (users, np.full(50, users[0])):
        np.random.seed(7)
        expected = theirs.sample_by_user_ids(key_ids, None, num)
        np.random.seed(7)
        got = ours.sample_by_user_ids(key_ids, None, num)
        assert torch.equal(got, expected)
        used = ours.used_ids
        assert not used.contains(np.tile(key_ids, num), got.numpy()).any()


def _as_sets(rows: torch.Tensor, items: torch.Tensor, n: int) -> list[set]:
    out = [set() for _ in range(n)]
    for r, i in zip(rows.tolist(), items.tolist()):
        out[r].add(i)
    return out


def test_full_sort_batches_are_recboles(built):
    """Every batch: the same users, history mask and positives (per row, as sets: RecBole's order is a set's)."""
    config, dataset, datasets = built
    phases = ["train", "valid", "test"]
    ours_sampler, theirs_sampler = CompactSampler(phases, datasets), Sampler(phases, datasets)
    config["eval_batch_size"] = 3 * dataset.item_num  # several batches
    for phase, data in zip(phases[1:], datasets[1:]):
        ours = CompactFullSortEvalDataLoader(config, data, ours_sampler.set_phase(phase))
        theirs = FullSortEvalDataLoader(config, data, theirs_sampler.set_phase(phase))
        assert torch.equal(ours.uid_list, theirs.uid_list)
        assert np.array_equal(ours.uid2items_num, theirs.uid2items_num)
        batches = 0
        for (u1, (hu1, hi1), pu1, pi1), (u2, (hu2, hi2), pu2, pi2) in zip(ours, theirs):
            assert torch.equal(u1[dataset.uid_field], u2[dataset.uid_field])
            n = len(u1)
            assert _as_sets(hu1, hi1, n) == _as_sets(hu2, hi2, n)
            assert _as_sets(pu1, pi1, n) == _as_sets(pu2, pi2, n)
            batches += 1
        assert batches > 1
        for u in ours.uid_list[:5].tolist():
            assert sorted(ours.uid2history_item[u].tolist()) == sorted(theirs.uid2history_item[u].tolist())
            assert sorted(ours.uid2positive_item[u].tolist()) == sorted(theirs.uid2positive_item[u].tolist())


def test_data_preparation_builds_the_compact_classes(planted):
    root, config_dict = planted
    config = make_config("GUME", "planted", config_dict={**config_dict, "test_masking": "train"})
    train, valid, test = prepare_data(config, create_dataset(config))
    assert isinstance(train._sampler, CompactSampler) and isinstance(train._sampler.used_ids, UserItems)
    assert isinstance(valid, CompactFullSortEvalDataLoader) and isinstance(test, CompactFullSortEvalDataLoader)


def test_user_items_reads():
    items = UserItems(np.array([2, 0, 2, 2]), np.array([5, 1, 3, 5]), n_users=4, n_items=8)
    assert items[2] == {3, 5} and items[1] == set() and len(items) == 4
    assert items.contains(np.array([2, 2, 0, 3]), np.array([3, 4, 1, 7])).tolist() == [True, False, True, False]
    rows, got = items.pairs(np.array([2, 1, 0]))
    assert rows.tolist() == [0, 0, 2] and got.tolist() == [3, 5, 1]
    assert items.counts().tolist() == [1, 0, 2, 0]


@pytest.mark.parametrize("shuffle", [True, False])
def test_loader_batches_are_torchs(shuffle):
    """_PositionBatches gives torch's BatchSampler(RandomSampler(generator) / SequentialSampler) batches, pass
    after pass, and leaves the generator where torch's leaves it."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    from recbole_mm.hooks import _PositionBatches

    for n, size in ((10, 3), (12, 4), (1, 5)):
        ours_gen, torch_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        ours = _PositionBatches(n, size, shuffle, ours_gen)
        base = RandomSampler(range(n), generator=torch_gen) if shuffle else SequentialSampler(range(n))
        theirs = BatchSampler(base, size, drop_last=False)
        assert len(ours) == len(theirs)
        for _ in range(3):
            assert list(ours) == list(theirs)
        assert torch.equal(ours_gen.get_state(), torch_gen.get_state())


def test_training_batches_unchanged_by_the_loader_hook(planted):
    """A RecBole training loader under the hook yields RecBole's own batches (positions from torch's samplers)."""
    from torch.utils.data import BatchSampler

    root, config_dict = planted
    config = make_config("BPR", "planted", config_dict={**config_dict, "train_batch_size": 37})
    train, _, _ = prepare_data(config, create_dataset(config))
    assert not isinstance(train.batch_sampler, BatchSampler)
    np.random.seed(1)
    ours = [batch["itemID"].clone() for batch in train]
    # The same loader state under torch's own index batching (what RecBole's __init__ builds), fresh generator.
    reference = train.__class__.__new__(train.__class__)
    reference.__dict__.update({k: v for k, v in train.__dict__.items() if not k.startswith("_DataLoader__")})
    torch.utils.data.DataLoader.__init__(reference, dataset=list(range(train.sample_size)), batch_size=train.step,
                                         collate_fn=reference.collate_fn, shuffle=True,
                                         generator=torch.Generator().manual_seed(config["seed"]))
    np.random.seed(1)
    theirs = [batch["itemID"].clone() for batch in reference]
    assert len(ours) == len(theirs) > 1 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
