"""Speed-ups that must not change results, pinned to the computations they replace: the trainer's
top-k collector (against RecBole's Collector), its multi-tensor Adam (against torch's default), the fused
Adam every model gets (against multi-tensor, within rounding) and the row-sparse gradients of FREEDOM's
feature tables (against dense gradients and the same optimizer)."""

from __future__ import annotations

import pytest
import torch
from recbole.config import Config
from recbole.evaluator import Collector as RecBoleCollector

from recbole_mm.quick_start import _build_model, create_dataset, make_config, make_trainer, prepare_data
from recbole_mm.speedups import Collector


def _collectors(metrics: list[str]) -> tuple:
    config = Config(model="BPR", dataset="ml-100k", config_dict={"metrics": metrics, "topk": [3, 5],
                                                                   "valid_metric": f"{metrics[0]}@5"})
    return Collector(config), RecBoleCollector(config)


@pytest.mark.parametrize("metrics", [["Recall", "NDCG", "Precision", "MAP", "Hit", "MRR"],
                                     ["Recall", "AveragePopularity", "GAUC"]])
def test_topk_collector_matches_recbole(metrics):
    ours, theirs = _collectors(metrics)
    g = torch.Generator().manual_seed(0)
    for batch in range(3):
        n_rows, n_items = 7 + batch, 40
        scores = torch.randint(0, 6, (n_rows, n_items), generator=g).float()  # many ties
        scores[:, 0] = -torch.inf
        scores[1, 5:] = -torch.inf
        positive_u = torch.randint(0, n_rows, (25,), generator=g)
        positive_i = torch.randint(1, n_items, (25,), generator=g)
        positive_u = torch.cat([positive_u, positive_u[:4]])  # duplicate pairs count once in RecBole
        positive_i = torch.cat([positive_i, positive_i[:4]])
        for collector in (ours, theirs):
            collector.eval_batch_collect(scores.clone(), None, positive_u, positive_i)
    a, b = ours.get_data_struct(), theirs.get_data_struct()
    assert set(a._data_dict) == set(b._data_dict)
    for key in b._data_dict:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert ours.register.need("rec.topk")  # restored after collecting the other resources


def test_evaluation_results_equal_recbole_collector(planted):
    root, config_dict = planted
    config = make_config("VBPR", "planted", config_dict={**config_dict, "metrics": ["Recall", "NDCG", "MAP"]})
    dataset = create_dataset(config)
    train, valid, test = prepare_data(config, dataset)
    trainer = make_trainer(config, _build_model(config, train))
    assert isinstance(trainer.eval_collector, Collector)
    trainer.eval_collector.data_collect(train)
    ours = trainer.evaluate(test, load_best_model=False)
    trainer.eval_collector = RecBoleCollector(config)
    trainer.eval_collector.data_collect(train)
    assert trainer.evaluate(test, load_best_model=False) == ours


@pytest.mark.parametrize("model_name", ["BPR", "VBPR"])  # RecBole's model and one of recbole_mm's
def test_evaluation_frees_each_batch_of_scores_before_the_next(planted, model_name):
    """The trainer's evaluate hands each batch's score matrix back before computing the next one (RecBole's
    loop would hold two), with the results of one batch holding every user."""
    root, config_dict = planted
    results, returned = [], []
    for users_per_batch in (3, 10_000):
        config = make_config(model_name, "planted", config_dict={**config_dict, "seed": 5})
        dataset = create_dataset(config)
        config["eval_batch_size"] = users_per_batch * dataset.item_num
        train, valid, _ = prepare_data(config, dataset)
        model = _build_model(config, train)
        trainer = make_trainer(config, model)
        predict = model.full_sort_predict
        model.full_sort_predict = lambda interaction: returned.append(predict(interaction)) or returned[-1]
        results.append(trainer.evaluate(valid, load_best_model=False))
        if users_per_batch == 3:
            assert len(returned) > 2
            assert all(s.untyped_storage().nbytes() == 0 for s in returned[:-1])
            assert returned[-1].untyped_storage().nbytes() > 0  # the last one is freed by RecBole's loop ending
    assert results[0] == results[1]


def _five_steps_with_the_same_gradients(trainer, params: list, reference) -> None:
    """Five optimizer steps of the trainer's and the reference optimizer, fed the same random gradients."""
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(trainer.model.parameters(), params):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        trainer.optimizer.step()
        reference.step()


def test_multi_tensor_adam_is_bitwise_torchs_default(planted, monkeypatch):
    """A model class with ``fused_adam = False`` gets multi-tensor Adam: torch's default update, bit for bit."""
    from recbole_mm.model.general_recommender.vbpr import VBPR

    monkeypatch.setattr(VBPR, "fused_adam", False)
    root, config_dict = planted
    config = make_config("VBPR", "planted", config_dict={**config_dict, "weight_decay": 1e-4})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    trainer = make_trainer(config, _build_model(config, train))
    assert all(group["foreach"] and not group.get("fused") for group in trainer.optimizer.param_groups)
    params = [torch.nn.Parameter(p.detach().clone()) for p in trainer.model.parameters()]
    reference = torch.optim.Adam(params, lr=config["learning_rate"], weight_decay=1e-4, foreach=False)
    _five_steps_with_the_same_gradients(trainer, params, reference)
    for p, q in zip(trainer.model.parameters(), params):
        assert torch.equal(p, q)


@pytest.mark.parametrize("model_name", ["GUME", "VBPR", "FREEDOM"])
def test_every_model_trains_with_fused_adam_within_rounding_of_multi_tensor(planted, model_name):
    """The trainer builds Adam fused for every model (one place: Trainer._build_optimizer), and five
    steps agree with the multi-tensor update up to float rounding."""
    root, config_dict = planted
    config = make_config(model_name, "planted", config_dict={**config_dict, "knn_k": 5, "feat_embed_dim": 16,
                                                                 "weight_decay": 1e-4})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    trainer = make_trainer(config, _build_model(config, train))
    assert all(group["fused"] for group in trainer.optimizer.param_groups)
    params = [torch.nn.Parameter(p.detach().clone()) for p in trainer.model.parameters()]
    reference = torch.optim.Adam(params, lr=config["learning_rate"], weight_decay=1e-4, foreach=True)
    _five_steps_with_the_same_gradients(trainer, params, reference)
    for p, q in zip(trainer.model.parameters(), params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def _freedom_trainer(planted, **extra):
    root, config_dict = planted
    config = make_config("FREEDOM", "planted", config_dict={**config_dict, "knn_k": 5, "feat_embed_dim": 16,
                                                                "reg_weight": 0.1, **extra})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    return make_trainer(config, _build_model(config, train)), train


def test_row_sparse_feature_gradients_give_the_dense_step(planted):
    """FREEDOM's feature tables (read by the batch's rows only) get row-sparse gradients in the trainer;
    each step equals the dense-gradient step of the same optimizer (momentum of untouched rows included),
    and the persistent buffer holds zeros again after every step."""
    trainer, train = _freedom_trainer(planted, train_batch_size=64)
    model = trainer.model
    tables = list(model.raw_features.values())
    assert trainer.row_gradients is not None and all(t.sparse for t in tables)
    # The reference: a copy of the model with ordinary dense-gradient tables and its own fused Adam.
    import copy

    reference = copy.deepcopy(model)
    for table in reference.raw_features.values():
        table.sparse = False
    ref_opt = torch.optim.Adam(reference.parameters(), lr=trainer.optimizer.defaults["lr"], fused=True)
    batches = iter(train)
    for step in range(4):
        batch = next(batches)
        for m, opt in ((model, trainer.optimizer), (reference, ref_opt)):
            opt.zero_grad(set_to_none=True)
            torch.manual_seed(step)  # the same pruned graph draw for both
            m.calculate_loss(batch).backward()
        assert all(t.weight.grad.is_sparse for t in tables)
        dense_grads = [t.weight.grad.to_dense() for t in tables]
        trainer.optimizer.step()
        ref_opt.step()
        for table, ref_table, grad in zip(tables, reference.raw_features.values(), dense_grads):
            torch.testing.assert_close(ref_table.weight.grad, grad, rtol=1e-6, atol=1e-9)
            assert torch.count_nonzero(table.weight.grad) == 0  # the buffer, cleared after the step
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
    # Momentum moves rows the last batch did not touch, as with dense gradients.
    untouched = torch.ones(model.n_items, dtype=torch.bool)
    untouched[batch[model.ITEM_ID]] = False
    untouched[batch[model.NEG_ITEM_ID]] = False
    state = trainer.optimizer.state[tables[0].weight]
    assert untouched.any() and state["exp_avg"][untouched].abs().sum() > 0


def test_row_sparse_gradients_not_with_gradient_clipping(planted):
    """clip_grad_norm would measure the sparse gradient: the tables then keep dense gradients."""
    trainer, _ = _freedom_trainer(planted, clip_grad_norm={"max_norm": 5})
    assert trainer.row_gradients is None
    assert not any(t.sparse for t in trainer.model.raw_features.values())


def test_vbpr_loss_and_gradients_match_the_two_call_computation(planted):
    """VBPR projects positives and negatives in one call (index_select gathers); the loss and every
    gradient equal the former per-side computation with advanced-indexing gathers."""
    root, config_dict = planted
    config = make_config("VBPR", "planted", config_dict={**config_dict, "reg_weight": 0.1})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    model = _build_model(config, train)
    batch = next(iter(train))

    from recbole.model.loss import EmbLoss

    def old_item_vectors(items):
        fused = torch.cat([model.item_features(m)[items] for m in model.modalities], dim=1)
        return torch.cat([model.item_embedding(items), model.feature_projection(fused)], dim=1)

    def old_loss():
        u = model.user_embedding(batch[model.USER_ID])
        pos, neg = old_item_vectors(batch[model.ITEM_ID]), old_item_vectors(batch[model.NEG_ITEM_ID])
        return model.bpr_loss((u * pos).sum(dim=1), (u * neg).sum(dim=1)) + model.reg_weight * EmbLoss()(u, pos, neg)

    grads = []
    for compute in (old_loss, lambda: model.calculate_loss(batch)):
        model.zero_grad()
        loss = compute()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (old, old_grads), (new, new_grads) = grads
    torch.testing.assert_close(new.reshape(()), old.reshape(()), rtol=1e-6, atol=0)  # EmbLoss is [1]
    for a, b in zip(new_grads, old_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("p", [0.5, 0.3, 0.8])
def test_dropout_mask_rows_equal_torch_dropout_bit_for_bit(p):
    """dropout_mask draws F.dropout's mask (same random stream, generator left in the same state), and
    dropout_rows on some rows equals those rows of F.dropout's result bit for bit."""
    from recbole_mm.speedups import _uniform_draws_bernoulli, dropout_mask, dropout_rows

    assert _uniform_draws_bernoulli()  # this torch: the fast path is the one under test
    x = torch.randn(257, 33, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([5, 0, 256, 5, 17])
    torch.manual_seed(11)
    expected = torch.nn.functional.dropout(x, p, training=True)
    after_expected = torch.rand(4)
    torch.manual_seed(11)
    mask = dropout_mask(x.shape, p)
    after = torch.rand(4)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    assert torch.equal(dropout_rows(x[rows], mask[rows], p), expected[rows])
    assert torch.equal(after, after_expected)
    assert 0.0 < mask.float().mean().item() < 1.0


def test_dropout_mask_falls_back_to_torch_dropout(monkeypatch):
    """Where uniforms do not reproduce bernoulli_ (another torch), the mask comes from F.dropout itself."""
    from recbole_mm import speedups

    monkeypatch.setattr(speedups, "_UNIFORM_DRAWS_BERNOULLI", False)
    torch.manual_seed(3)
    expected = torch.nn.functional.dropout(torch.ones(40, 7), 0.3, training=True) != 0
    torch.manual_seed(3)
    assert torch.equal(speedups.dropout_mask((40, 7), 0.3), expected)


@pytest.mark.parametrize("model_name,extra", [("GUME", {}), ("MGCN", {}), ("LATTICE", {}), ("SMORE", {}),
                                              ("PGL", {"feat_embed_dim": 16}), ("GUME", {"weight_decay": 1e-3})])
def test_whole_table_steps_give_the_dense_step(planted, model_name, extra):
    """Feature tables a model projects whole are stepped inside the projection's backward (TableSteps): no
    table gradient is left for the optimizer, and four steps leave every parameter and the tables' Adam state
    where a copy of the model with dense table gradients and its own fused optimizer leaves them."""
    import copy

    root, config_dict = planted
    config = make_config(model_name, "planted", config_dict={**config_dict, "train_batch_size": 64, **extra})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    model = _build_model(config, train)
    reference = copy.deepcopy(model)
    trainer = make_trainer(config, model)
    assert trainer.table_steps is not None
    tables = [t.weight for t in model.raw_features.values()]
    ref_opt = torch.optim.Adam(reference.parameters(), lr=trainer.optimizer.defaults["lr"],
                        weight_decay=trainer.optimizer.defaults["weight_decay"], fused=True)
    model.train(), reference.train()
    batches = iter(train)
    for step in range(4):
        batch = next(batches)
        for m, opt in ((model, trainer.optimizer), (reference, ref_opt)):
            opt.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            m.calculate_loss(batch).backward()
        assert all(t.grad is None for t in tables)
        trainer.optimizer.step()
        ref_opt.step()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    for table, ref_table in zip(tables, (t.weight for t in reference.raw_features.values())):
        state, ref_state = trainer.optimizer.state[table], ref_opt.state[ref_table]
        # LATTICE projects its tables on an epoch's first batch only: one step, in both.
        assert float(state["step"]) == float(ref_state["step"]) == (1 if model_name == "LATTICE" else 4)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[key], ref_state[key], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("chunk_rows", [3, 256])
def test_whole_table_steps_with_adamw(chunk_rows, monkeypatch):
    """AdamW (decoupled weight decay; not a RecBole learner, but a script's own optimizer) through
    TableSteps.attach: the same parameters and state as AdamW over the dense table gradient, chunks that
    split the table unevenly included."""
    import copy

    from recbole_mm.model.abstract_recommender import FeatureLinear
    from recbole_mm.speedups import TableSteps

    monkeypatch.setattr(TableSteps, "rows", chunk_rows)
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.table = torch.nn.Embedding.from_pretrained(torch.randn(10, 6), freeze=False)
    model.table.feature_table = True
    model.linear = FeatureLinear(6, 4)
    reference = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, fused=True)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.1, fused=True)
    assert TableSteps.attach(model, opt) is not None
    target = torch.randn(10, 4)
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad(set_to_none=True)
            ((m.linear(m.table.weight) - target) ** 2).sum().backward()
            o.step()
    assert model.table.weight.grad is None and reference.table.weight.grad is not None
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(opt.state[model.table.weight]["exp_avg_sq"],
                               ref_opt.state[reference.table.weight]["exp_avg_sq"])


def test_whole_table_steps_refuse_a_table_read_another_way(planted):
    """A table stepped in its projection's backward that also gets a gradient elsewhere is refused at the step
    (the chunked update would have missed that gradient), never silently stepped twice."""
    root, config_dict = planted
    config = make_config("MGCN", "planted", config_dict={**config_dict, "train_batch_size": 64})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    trainer = make_trainer(config, _build_model(config, train))
    model = trainer.model
    table = model.raw_features["image"].weight
    trainer.optimizer.zero_grad(set_to_none=True)
    loss = model.calculate_loss(next(iter(train)))
    (loss + table[1:3].sum() * 0).backward()
    with pytest.raises(RuntimeError, match="another way"):
        trainer.optimizer.step()


def test_whole_table_steps_not_with_gradient_clipping(planted):
    """clip_grad_norm needs every gradient: the tables then keep their dense gradients."""
    root, config_dict = planted
    config = make_config("GUME", "planted", config_dict={**config_dict, "clip_grad_norm": {"max_norm": 5}})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    trainer = make_trainer(config, _build_model(config, train))
    assert trainer.table_steps is None


@pytest.mark.parametrize("model_name", ["GUME", "FREEDOM", "BM3", "LATTICE", "MGCN", "SMORE", "PGL"])
def test_models_that_train_feature_copies_release_the_fixed_ones(planted, model_name):
    """After building, a model that trains copies of its features holds no fixed feature buffer and the dataset
    no loaded copy (one table per modality for the run, not two or three); reading them from the model says
    so in one line, and the dataset loads the same values again when asked."""
    from recbole_mm.errors import RecBoleMMError

    root, config_dict = planted
    extra = {"feat_embed_dim": 16} if model_name in ("PGL", "FREEDOM") else {}
    config = make_config(model_name, "planted", config_dict={**config_dict, **extra})
    dataset = create_dataset(config)
    before = {m: t.clone() for m, t in dataset.item_features.items()}
    train, _, _ = prepare_data(config, dataset)
    model = _build_model(config, train)
    assert not any(name.startswith("features_") for name, _ in model.named_buffers())
    assert not dataset._feature_store
    with pytest.raises(RecBoleMMError, match="released its fixed 'image' features"):
        model.item_features("image")
    for m, table in model.raw_features.items():
        assert torch.equal(table.weight, before[m])  # the trainable copies start from the loaded values
    assert all(torch.equal(dataset.item_features[m], before[m]) for m in before)


def test_frozen_gume_keeps_its_fixed_features(planted):
    root, config_dict = planted
    config = make_config("GUME", "planted", config_dict={**config_dict, "freeze_features": True})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    model = _build_model(config, train)
    assert torch.equal(model.item_features("image"), dataset.item_features["image"])


def _page_faults(probe: str) -> tuple[int, int]:
    """The two page-fault counts a probe prints after whether reuse_freed_memory applied (in a fresh process:
    malloc's settings last for the process); skips where it did not (not glibc)."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "THP_MEM_ALLOC_ENABLE": "0"})
    applied, first, second = out.stdout.split()
    if applied != "True":
        pytest.skip("not glibc")
    return int(first), int(second)


REUSE_PROBE = """
import resource, sys, torch
from recbole_mm.speedups import reuse_freed_memory

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
applied = reuse_freed_memory()
faults()  # the heap grows once
print(applied, before, faults())
"""


def test_reuse_freed_memory_stops_page_faults_of_repeated_temporaries():
    """glibc's default maps fresh pages for every 64 MiB temporary (16k page faults each); after
    reuse_freed_memory the next ones reuse the freed pages."""
    before, after = _page_faults(REUSE_PROBE)
    assert before > 5 * 8000 and after < before / 20, (before, after)


MAPPED_PROBE = """
import resource, torch
from recbole_mm.speedups import large_blocks_mapped, reuse_freed_memory

def faults(mib):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(mib * 2**18).fill_(1.0)  # freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

with large_blocks_mapped():  # reuse is not on: nothing to undo
    faults(64)
applied = reuse_freed_memory()
faults(64)  # the heap grows to hold one 64 MiB block
with large_blocks_mapped():
    inside = faults(256)  # larger than what the heap has free
faults(256)  # the heap grows once more
print(applied, inside, faults(256))
"""


def test_evaluation_maps_large_blocks_again_then_training_reuses_them():
    """Under large_blocks_mapped (the trainer's evaluate), a large block that the heap's free space cannot hold
    gets a fresh mapping, returned when freed, instead of growing the heap for good, though reuse_freed_memory is
    on (256 MiB: 65k page faults each time; grown into the heap, once); after it the heap serves them again."""
    inside, after = _page_faults(MAPPED_PROBE)
    assert inside > 4 * 65536 and after < inside / 20, (inside, after)


def test_freed_memory_reused_only_for_models_with_large_tables(planted, monkeypatch):
    """The trainer switches malloc to reuse freed pages for a model holding a tensor above glibc's largest mmap
    threshold (below it glibc reuses freed blocks already), always with reuse_freed_memory: True, never with
    False."""
    import recbole_mm.trainer as trainer_module
    from recbole_mm.speedups import GLIBC_MMAP_THRESHOLD_MAX, holds_large_tensors

    calls = []
    monkeypatch.setattr(trainer_module, "reuse_freed_memory", lambda: calls.append(1) or True)
    root, config_dict = planted
    for setting, large, expected in ((None, False, 0), (True, False, 1), (None, True, 1), (False, True, 0)):
        calls.clear()
        config = make_config("BPR", "planted", config_dict={**config_dict, "reuse_freed_memory": setting})
        train, _, _ = prepare_data(config, create_dataset(config))
        model = _build_model(config, train)
        if large:
            model.register_buffer("big", torch.zeros(GLIBC_MMAP_THRESHOLD_MAX // 4 + 1), persistent=False)
        assert holds_large_tensors(model) == large
        make_trainer(config, model)
        assert len(calls) == expected, (setting, large)


def test_an_evaluation_pass_hands_its_forward_temporaries_back_before_scoring(monkeypatch):
    """GraphRecommender.cached trims the heap once after computing an evaluation pass's forward (the forward's
    freed blocks would otherwise sit under the score matrices), and never per training step."""
    from recbole_mm.model import abstract_recommender

    calls = []
    monkeypatch.setattr(abstract_recommender, "release_free_heap", lambda: calls.append(1))
    model = abstract_recommender.GraphRecommender.__new__(abstract_recommender.GraphRecommender)
    torch.nn.Module.__init__(model)
    model._cache = {}
    model.training = True
    assert model.cached("o", lambda: torch.ones(2)).sum() == 2 and calls == []
    model.training = False
    model.cached("o", lambda: torch.ones(2))
    model.cached("o", lambda: torch.zeros(2))  # the pass's value, computed once
    assert calls == [1] and model.cached("o", lambda: torch.zeros(2)).sum() == 2
