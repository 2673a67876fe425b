"""recbole-mm recommend / recbole_mm.recommend: top-k unseen items per user from a trained checkpoint."""

from __future__ import annotations

import csv
import io
import json
import os

import pandas as pd
import pytest
import torch
from recbole.data.interaction import Interaction

import recbole_mm
from conftest import planted_config, write_planted_dataset
from recbole_mm.errors import exit_on_user_error
from recbole_mm.quick_start import load_data_and_model
from recbole_mm.recommendations import format_recommendations, main

NO_TEST_ROWS = "5"  # its test row is removed below: it has train and valid rows only
ONLY_TRAIN = "7"  # its valid and test rows are removed: train rows only


@pytest.fixture(scope="module", params=["VBPR", "LightGCN"])
def trained(request, tmp_path_factory):
    """(checkpoint path, the .inter table) of a model trained one epoch on the planted dataset, whose
    users 5 and 7 have no test rows."""
    tmp = tmp_path_factory.mktemp(request.param)
    root = tmp / "data"
    folder = write_planted_dataset(root)
    inter_file = folder / "planted.inter"
    table = pd.read_csv(inter_file, sep="\t")
    drop = ((table.userID == int(NO_TEST_ROWS)) & (table.x_label == 2)) | \
           ((table.userID == int(ONLY_TRAIN)) & (table.x_label > 0))
    table = table[~drop]
    table.to_csv(inter_file, sep="\t", index=False)
    here = os.getcwd()
    os.chdir(tmp)  # RecBole writes log/ into the working folder
    try:
        result = recbole_mm.run_recbole(model=request.param, dataset="planted",
                                        config_dict=planted_config(root, filter_cold_start_users=True))
    finally:
        os.chdir(here)
    return result["saved_model_file"], table


def expected_rankings(checkpoint: str, table: pd.DataFrame, users: list[str], k: int) -> dict:
    """The model's own full_sort_predict scores for ``users`` (one batch, as recommend scores them, so
    the floats are the same), sorted, without padding and without every item of the user's rows in the
    .inter file (read here from the file, not from the dataset)."""
    _, model, dataset, *_ = load_data_and_model(checkpoint, log=False)
    model.eval()
    uids = torch.tensor([int(dataset.token2id(dataset.uid_field, user)) for user in users])
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({dataset.uid_field: uids})).view(len(users), -1)
    tokens = dataset.field2id_token[dataset.iid_field]
    out = {}
    for user, row in zip(users, scores):
        seen = {str(i) for i in table.loc[table.userID == int(user), "itemID"]}
        ranked = sorted(range(1, len(tokens)), key=lambda i: (-float(row[i]), i))
        out[user] = [(str(tokens[i]), float(row[i])) for i in ranked if str(tokens[i]) not in seen][:k]
    return out


def test_ranking_is_the_models_full_sort_order_without_known_items(trained):
    checkpoint, table = trained
    users = ["0", NO_TEST_ROWS, ONLY_TRAIN, "42"]
    recs = recbole_mm.recommend(checkpoint, users, k=10)
    assert list(recs) == users
    expected = expected_rankings(checkpoint, table, users, 10)
    for user in users:
        assert [item for item, _ in recs[user]] == [item for item, _ in expected[user]], user
        assert [score for _, score in recs[user]] == pytest.approx([score for _, score in expected[user]],
                                                                   rel=1e-6, abs=1e-6)
        assert all(a >= b for (_, a), (_, b) in zip(recs[user], recs[user][1:]))


def test_every_known_item_is_masked_valid_and_test_rows_included(trained):
    checkpoint, table = trained
    n_items = table.itemID.nunique()
    recs = recbole_mm.recommend(checkpoint, [0, int(NO_TEST_ROWS)], k=n_items)  # integers work too
    for user, pairs in recs.items():
        rows = table[table.userID == int(user)]
        items = [item for item, _ in pairs]
        assert len(items) == len(set(items)) == n_items - rows.itemID.nunique()  # all others, each once
        assert not set(items) & {str(i) for i in rows.itemID}
        assert "[PAD]" not in items
    # User 0 still has valid and test rows: they are masked as well as its training rows.
    assert (table[table.userID == 0].x_label > 0).any()


def test_command_line_formats(trained, capsys):
    checkpoint, _ = trained
    users = ["0", NO_TEST_ROWS]
    recs = main([checkpoint, "--users", *users, "--k", "3", "--format", "json"])
    assert json.loads(capsys.readouterr().out) == {
        user: [{"item": item, "score": score} for item, score in pairs] for user, pairs in recs.items()}
    main([checkpoint, "--users", *users, "--k", "3", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["user"], int(r["rank"]), r["item"]) for r in rows] == [
        (user, rank, item) for user in users for rank, (item, _) in enumerate(recs[user], start=1)]
    assert [float(r["score"]) for r in rows] == [score for user in users for _, score in recs[user]]
    main([checkpoint, "--users", *users, "--k", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["user", "rank", "item", "score"] and len(lines) == 1 + 3 * len(users)
    assert lines[1].split()[:3] == ["0", "1", recs["0"][0][0]]
    assert format_recommendations(recs, "table") == "\n".join(lines)


def test_unknown_user_and_bad_k_are_one_line_and_write_nothing(trained, tmp_path, monkeypatch, capsys):
    checkpoint, _ = trained
    monkeypatch.chdir(tmp_path)
    for argv, words in (([checkpoint, "--users", "0", "nobody", "9999"], ["'nobody'", "'9999'", "user ids"]),
                        ([checkpoint, "--users", "0", "--k", "0"], ["--k", ">= 1"])):
        with pytest.raises(SystemExit) as stop:
            exit_on_user_error(lambda: main(argv))
        assert stop.value.code == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("recbole_mm: error:"), lines
        assert all(word in lines[0] for word in words), lines[0]
        assert captured.out == ""
    assert os.listdir(tmp_path) == []  # no log/, no saved/
