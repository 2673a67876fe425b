"""Build the shipped ``dataset/ml-100k-mm`` from RecBole's own copy of MovieLens-100K (no download).

    python scripts/make_ml100k_mm.py                  # writes dataset/ml-100k-mm/
    python scripts/make_ml100k_mm.py --out /tmp/x     # anywhere else (the tests do this)
    python scripts/make_ml100k_mm.py --no-text        # everything but text_feat.npy

Outputs (MMRec layout, ids 0-based: userID = RecBole user_id - 1, itemID = item_id - 1):

- ``ml-100k-mm.inter``: ``userID itemID x_label``, every rating as an implicit interaction, split per
  user chronologically with MMRec's per-user counts (dataset/ml-100k-mm/README.md says why).
- ``items.tsv``: ``itemID text`` with text "title (year): genre, genre" — the input of the next step.
- ``text_feat.npy``: made by the public command ``python -m recbole_mm.features items.tsv`` (all-MiniLM-L6-v2).
- ``genre_feat.npy``: float32 multi-hot over the 19 MovieLens genres (column order: ``GENRES``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
NAME = "ml-100k-mm"
# MovieLens-100K's genre list (u.genre), in its own order.
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")


def recbole_source() -> Path:
    """RecBole's bundled ml-100k folder (``recbole/dataset_example/ml-100k``)."""
    import recbole

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


def per_user_counts(n: int) -> tuple[int, int]:
    """(valid, test) rows of a user with ``n`` interactions under MMRec's per-user 8:1:1 rule."""
    if n < 10:
        return 1, 1
    held = int(0.2 * n)
    return held // 2, held - held // 2


def split_interactions(inter: pd.DataFrame) -> pd.DataFrame:
    """0-based ``userID itemID x_label``: per user, the latest interactions (timestamp, then item id
    to break ties) go to test, the ones before them to valid, with MMRec's per-user counts."""
    table = pd.DataFrame({
        "userID": inter["user_id:token"].astype(np.int64) - 1,
        "itemID": inter["item_id:token"].astype(np.int64) - 1,
        "timestamp": inter["timestamp:float"].astype(np.int64),
    })
    if table.duplicated(["userID", "itemID"]).any():
        raise SystemExit("ml-100k.inter has a repeated (user, item) pair; this script assumes none")
    table = table.sort_values(["userID", "timestamp", "itemID"], kind="stable").reset_index(drop=True)
    labels = np.zeros(len(table), dtype=np.int64)
    start = 0
    for n in table.groupby("userID", sort=True).size().to_numpy():
        valid, test = per_user_counts(int(n))
        end = start + int(n)
        labels[end - test - valid:end - test] = 1
        labels[end - test:end] = 2
        start = end
    table["x_label"] = labels
    return table.sort_values(["userID", "x_label", "itemID"], kind="stable")[["userID", "itemID", "x_label"]]


def item_texts(items: pd.DataFrame) -> pd.DataFrame:
    """``itemID text`` rows, text "title (year): genre, genre"; empty for the one item RecBole's copy
    lists as "unkonwn" with no year and genre 'unknown' (its feature row stays NaN)."""
    rows = []
    for item, title, year, genres in items.itertuples(index=False):
        title = str(title).strip()
        if title == "unkonwn":
            rows.append((int(item) - 1, ""))
            continue
        year = str(year).strip()
        head = f"{title} ({year})" if year.isdigit() else title  # item 1412's year field is "V"
        rows.append((int(item) - 1, f"{head}: {', '.join(str(genres).split())}"))
    return pd.DataFrame(rows, columns=["itemID", "text"]).sort_values("itemID")


def genre_matrix(items: pd.DataFrame, n_items: int) -> np.ndarray:
    """Float32 ``[n_items, 19]`` multi-hot genres, row i = itemID i."""
    out = np.zeros((n_items, len(GENRES)), dtype=np.float32)
    column = {g: j for j, g in enumerate(GENRES)}
    for item, genres in zip(items["item_id:token"], items["class:token_seq"]):
        for genre in str(genres).split():
            out[int(item) - 1, column[genre]] = 1.0
    return out


def encode_text(items_file: Path, out: Path, n_items: int) -> None:
    """Run the public extraction command, as a user would, to write ``text_feat.npy``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-m", "recbole_mm.features", str(items_file), "--output-dir", str(out),
                    "--modalities", "text", "--num-items", str(n_items), "--device", "cpu", "--no-progress"],
                   check=True, env=env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help="RecBole's ml-100k folder (default: the installed one)")
    parser.add_argument("--out", type=Path, default=REPO / "dataset" / NAME, help="output folder")
    parser.add_argument("--no-text", action="store_true", help="skip text_feat.npy (needs the encoders extra)")
    args = parser.parse_args(argv)
    source = args.source or recbole_source()
    inter = pd.read_csv(source / "ml-100k.inter", sep="\t", dtype=str)
    items = pd.read_csv(source / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    n_items = int(items["item_id:token"].astype(int).max())
    if sorted(items["item_id:token"].astype(int)) != list(range(1, n_items + 1)):
        raise SystemExit("ml-100k.item ids are not 1..N; this script assumes they are")
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    inter_path = args.out / f"{NAME}.inter"
    split_interactions(inter).to_csv(inter_path, sep="\t", index=False, lineterminator="\n")
    items_path = args.out / "items.tsv"
    item_texts(items).to_csv(items_path, sep="\t", index=False, lineterminator="\n")
    genre_path = args.out / "genre_feat.npy"
    np.save(genre_path, genre_matrix(items, n_items))
    written += [inter_path, items_path, genre_path]
    if not args.no_text:
        encode_text(items_path, args.out, n_items)
        written.append(args.out / "text_feat.npy")
    for path in written:
        print(f"{path.name}\t{path.stat().st_size}\t{sha256(path)}")


if __name__ == "__main__":
    main()
