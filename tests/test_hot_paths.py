"""Speed-ups that must not change results, pinned to the computations they replace: the trainer's
top-k collector (against RecBole's Collector), its multi-tensor Adam (against torch's default) and GUME's
fused Adam (against multi-tensor, within rounding)."""

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


def _five_steps_with_the_same_gradients(trainer, params: list, reference) -> None:
    """Five optimizer steps of the trainer's and the reference optimizer, fed the same random gradients."""
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for p, q in zip(trainer.model.parameters(), params):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        trainer.optimizer.step()
        reference.step()


def test_multi_tensor_adam_is_bitwise_torchs_default(planted):
    root, config_dict = planted
    config = make_config("VBPR", "planted", config_dict={**config_dict, "weight_decay": 1e-4})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    trainer = make_trainer(config, _build_model(config, train))
    assert all(group["foreach"] for group in trainer.optimizer.param_groups)
    params = [torch.nn.Parameter(p.detach().clone()) for p in trainer.model.parameters()]
    reference = torch.optim.Adam(params, lr=config["learning_rate"], weight_decay=1e-4, foreach=False)
    _five_steps_with_the_same_gradients(trainer, params, reference)
    for p, q in zip(trainer.model.parameters(), params):
        assert torch.equal(p, q)



def test_gume_trains_with_fused_adam_within_rounding_of_multi_tensor(planted):
    """GUME opts in to torch's fused Adam: the trainer builds it fused (other models stay multi-tensor,
    bit for bit), and five steps agree with the multi-tensor update up to float rounding."""
    root, config_dict = planted
    config = make_config("GUME", "planted", config_dict={**config_dict, "knn_k": 5})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    trainer = make_trainer(config, _build_model(config, train))
    assert all(group["fused"] for group in trainer.optimizer.param_groups)
    params = [torch.nn.Parameter(p.detach().clone()) for p in trainer.model.parameters()]
    reference = torch.optim.Adam(params, lr=config["learning_rate"], foreach=True)
    _five_steps_with_the_same_gradients(trainer, params, reference)
    for p, q in zip(trainer.model.parameters(), params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_vbpr_loss_and_gradients_match_the_two_call_computation(planted):
    """VBPR projects positives and negatives in one call (index_select gathers); the loss and every
    gradient equal the former per-side computation with advanced-indexing gathers."""
    root, config_dict = planted
    config = make_config("VBPR", "planted", config_dict={**config_dict, "reg_weight": 0.1})
    dataset = create_dataset(config)
    train, _, _ = prepare_data(config, dataset)
    model = _build_model(config, train)
    batch = next(iter(train))

    def old_item_vectors(items):
        fused = torch.cat([model.item_features(m)[items] for m in model.modalities], dim=1)
        return torch.cat([model.item_embedding(items), model.feature_projection(fused)], dim=1)

    def old_loss():
        u = model.user_embedding(batch[model.USER_ID])
        pos, neg = old_item_vectors(batch[model.ITEM_ID]), old_item_vectors(batch[model.NEG_ITEM_ID])
        return model.bpr_loss((u * pos).sum(dim=1), (u * neg).sum(dim=1)) + model.reg_weight * model.emb_loss(u, pos, neg)

    grads = []
    for compute in (old_loss, lambda: model.calculate_loss(batch)):
        model.zero_grad()
        loss = compute()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (old, old_grads), (new, new_grads) = grads
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)
    for a, b in zip(new_grads, old_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
