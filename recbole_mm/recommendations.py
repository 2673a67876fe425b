"""Top-k recommendations from a trained checkpoint, in the dataset's own user and item ids.

    recbole-mm recommend saved/VBPR-<time>.pth --users 0 1 2 --k 10 [--format table|json|csv]

RecBole's ``full_sort_topk`` ranks only users of an evaluation split (it takes the mask from the split's
history index, and a user without test rows has none), and speaks internal ids. Here any user of the
checkpoint's dataset can be asked for, by original id, and every item the user has interacted with in the
dataset (train, valid and test rows) is masked, so the answer holds only items new to the user.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Iterable, Sequence

from recbole_mm.errors import RecBoleMMError

FORMATS = ("table", "json", "csv")
_USERS_SHOWN = 5  # examples of valid user ids in an unknown-user error


def _internal_user_ids(dataset, users: Sequence[str]) -> list[int]:
    """Internal ids of the given user tokens; every unknown token is named in one error."""
    token_to_id = dataset.field2token_id[dataset.uid_field]
    unknown = [user for user in users if user not in token_to_id or user == "[PAD]"]
    if unknown:
        examples = ", ".join(str(t) for t in dataset.field2id_token[dataset.uid_field][1:_USERS_SHOWN + 1])
        dropped = (" (users without training rows are dropped by filter_cold_start_users)"
                   if dataset.config["filter_cold_start_users"] else "")
        raise RecBoleMMError(
            f"--users: {', '.join(map(repr, unknown))} not in dataset '{dataset.dataset_name}'{dropped}; "
            f"give the dataset's original user ids ({dataset.uid_field}), e.g. {examples}")
    return [int(token_to_id[user]) for user in users]


def known_items(dataset, user_ids: Iterable[int]):
    """Per internal user id, the internal ids of every item it has an interaction with in ``dataset``
    (all splits: the dataset object holds every interaction before RecBole cuts it into splits)."""
    import torch

    users = torch.as_tensor(list(user_ids), dtype=torch.long)
    inter_users = dataset.inter_feat[dataset.uid_field]
    inter_items = dataset.inter_feat[dataset.iid_field]
    return {int(u): inter_items[inter_users == u] for u in users}


def rank_items(model, dataset, user_ids: Sequence[int], k: int) -> list[list[tuple[int, float]]]:
    """Per user, the ``k`` best ``(internal item id, score)`` pairs by ``model.full_sort_predict``,
    without padding (id 0) and the user's known items; equal scores keep the lower item id first."""
    import torch
    from recbole.data.interaction import Interaction

    device = next(model.parameters()).device
    model.eval()
    n_items = dataset.item_num
    seen = known_items(dataset, user_ids)
    with torch.no_grad():
        users = torch.as_tensor(list(user_ids), dtype=torch.long, device=device)
        scores = model.full_sort_predict(Interaction({dataset.uid_field: users})).view(len(user_ids), n_items)
        scores = scores.detach().to("cpu", torch.float64).clone()
    out = []
    for row, user in zip(scores, user_ids):
        row[0] = float("-inf")  # RecBole's padding item
        row[seen[int(user)]] = float("-inf")
        # A stable sort, not topk: the order of equal scores is then defined (lower internal id first).
        order = torch.sort(row, descending=True, stable=True).indices
        order = order[torch.isfinite(row[order])][:k]
        out.append([(int(i), float(row[i])) for i in order])
    return out


def recommend(checkpoint: str, users: Iterable[str | int], k: int = 10,
              trust_pickle: bool = False) -> dict[str, list[tuple[str, float]]]:
    """Top-``k`` unseen items for each user of a trained checkpoint.

    ``users`` are the dataset's original user ids (tokens, e.g. ``"0"`` or ``0``); the answer maps each
    to its ``(original item id, score)`` pairs, best first. Every item the user interacted with in the
    checkpoint's dataset (train, valid and test rows) is left out. The checkpoint goes through the safe
    loader (``trust_pickle`` opts in to plain RecBole's pickled checkpoints) and nothing is written.
    """
    from recbole_mm.quick_start import load_data_and_model

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RecBoleMMError(f"--k: {k!r} is not allowed: it must be an integer >= 1")
    tokens = [str(user) for user in users]
    if not tokens:
        raise RecBoleMMError("--users: no user given; name at least one of the dataset's user ids")
    tokens = list(dict.fromkeys(tokens))
    _, model, dataset, *_ = load_data_and_model(checkpoint, trust_pickle=trust_pickle, log=False)
    user_ids = _internal_user_ids(dataset, tokens)
    item_tokens = dataset.field2id_token[dataset.iid_field]
    ranked = rank_items(model, dataset, user_ids, k)
    return {user: [(str(item_tokens[i]), score) for i, score in pairs] for user, pairs in zip(tokens, ranked)}


def format_recommendations(recs: dict[str, list[tuple[str, float]]], fmt: str = "table") -> str:
    """``recs`` as an aligned table, JSON (user → list of {item, score}) or CSV (user,rank,item,score)."""
    rows = [(user, rank, item, score) for user, pairs in recs.items()
            for rank, (item, score) in enumerate(pairs, start=1)]
    if fmt == "json":
        return json.dumps({user: [{"item": item, "score": score} for item, score in pairs]
                           for user, pairs in recs.items()}, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["user", "rank", "item", "score"])
        writer.writerows((user, rank, item, repr(score)) for user, rank, item, score in rows)
        return buffer.getvalue().rstrip("\n")
    header = ("user", "rank", "item", "score")
    cells = [header] + [(user, str(rank), item, f"{score:.4f}") for user, rank, item, score in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) if c in (0, 2) else cell.rjust(w)
                               for c, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in cells)


def build_parser(prog: str = "recbole-mm recommend") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Top-k items for given users from a trained checkpoint, in the dataset's own "
        "ids; every item a user has interacted with in the dataset (train, valid and test rows) is left out.")
    parser.add_argument("checkpoint", help="a saved .pth (e.g. saved/VBPR-<time>.pth)")
    parser.add_argument("--users", nargs="+", required=True, metavar="USER",
                        help="original user ids of the dataset (the user column of its .inter file)")
    parser.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (default), json (user -> [{item, score}]) or csv (user,rank,item,score)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a checkpoint written by plain RecBole (it unpickles Python objects: "
                        "only for files whose origin you trust)")
    return parser


def main(argv: list[str] | None = None, prog: str = "recbole-mm recommend") -> dict:
    """Entry point of ``recbole-mm recommend``: prints the recommendations, returns them."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    recs = recommend(args.checkpoint, args.users, args.k, trust_pickle=args.trust_pickle)
    print(format_recommendations(recs, args.format))
    return recs


if __name__ == "__main__":
    from recbole_mm.errors import exit_on_user_error

    exit_on_user_error(main)
