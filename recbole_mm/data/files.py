"""Readers for MMRec-layout interaction files and per-modality ``.npy`` feature files.

Pure functions (paths and arrays in, arrays out) that know nothing of RecBole; every problem raises
:class:`~recbole_mm.errors.DataError` with one line naming the file and the fix.
"""

from __future__ import annotations

import os
import zipfile
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from recbole_mm.errors import DataError

SPLITS = ("train", "valid", "test")
SPLIT_LABEL = "x_label"
MISSING_POLICIES = ("error", "mean", "zero")
_ROW_CHUNK = 4096  # rows scanned at a time, so a memory-mapped file is never fully copied


def check_readable(path: str, what: str, fix: str) -> None:
    """A file the user named exists, is a file and can be read; else one line naming it and ``fix``."""
    if not os.path.exists(path):
        raise DataError(f"{path}: {what} not found; {fix}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} is a {'folder' if os.path.isdir(path) else 'special file'}, not a file; {fix}")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: {what} is not readable (permission denied); fix its permissions")


def available_datasets(root: str) -> list[str]:
    """Sub-folders of ``root`` that hold a ``.inter`` file (the datasets a user can name)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    found = []
    for name in names:
        folder = os.path.join(root, name)
        try:
            if os.path.isdir(folder) and any(f.endswith(".inter") for f in os.listdir(folder)):
                found.append(name)
        except OSError:
            continue
    return found


def has_bom(path: str) -> bool:
    """True when a file starts with a UTF-8 byte-order mark."""
    with open(path, "rb") as f:
        return f.read(3) == b"\xef\xbb\xbf"


def _header_line(path: str) -> str:
    """The first line of a text file, without a UTF-8 byte-order mark or a ``\\r\\n`` ending."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.readline().rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc


def is_mmrec_layout(path: str) -> bool:
    """True unless the header is RecBole's typed one (every column ``name:type``); MMRec's is untyped."""
    header = _header_line(path).split("\t")
    return not all(":" in column for column in header)


def not_tab_separated(path: str, header: str, expected: str) -> DataError | None:
    """The error for a header that is one column although it looks comma/semicolon/space separated."""
    if "\t" in header:
        return None
    for sep, name in ((",", "comma"), (";", "semicolon"), (" ", "space"), ("|", "pipe")):
        if sep in header.strip():
            return DataError(f"{path}: not tab-separated (the header {header.strip()!r} looks {name}-separated); "
                             f"columns must be separated by tabs: {expected}")
    return None


def read_mmrec_inter(path: str, user_field: str, item_field: str) -> pd.DataFrame:
    """Read ``userID itemID x_label`` rows (0/1/2 = train/valid/test) as int64 columns, validated.

    Accepts ``\\r\\n`` line endings (spreadsheet exports) and a UTF-8 byte-order mark.
    """
    check_readable(path, "interaction file", "put the dataset's .inter file there or set data_path / inter_file_name")
    expected = "\\t".join((user_field, item_field, SPLIT_LABEL))
    header = _header_line(path)
    wrong_separator = not_tab_separated(path, header, expected)
    if wrong_separator is not None:
        raise wrong_separator
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a table of tab-separated columns ({' '.join(str(exc).split())}); "
                        f"every line needs {expected}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    # Columns and cells as written: strip a stray '\r' (a file that mixes line endings) and spaces.
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DataError(f"{path}: no interaction rows; an MMRec .inter has a header and one row per interaction")
    missing = [c for c in (user_field, item_field, SPLIT_LABEL) if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: header lacks column(s) {', '.join(missing)} (has {', '.join(table.columns)}); "
            f"an MMRec .inter needs {user_field}, {item_field} and {SPLIT_LABEL} "
            "(set USER_ID_FIELD / ITEM_ID_FIELD in the dataset config if yours are named differently)"
        )
    out = {}
    for column in (user_field, item_field, SPLIT_LABEL):
        values = pd.to_numeric(table[column].str.strip(), errors="coerce")
        # Ids must be exact integers: the 2**53 bound keeps them exact as floats and far inside int64.
        bad = values.isna() | (values < 0) | (values != values.round()) | (values >= 2**53)
        if column == SPLIT_LABEL:
            bad |= values > 2
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            if column == SPLIT_LABEL:
                raise DataError(f"{path}: {SPLIT_LABEL} {table[column].iloc[row]!r} on data line {row + 1}; "
                                "use 0 (train), 1 (valid) or 2 (test)")
            raise DataError(
                f"{path}: ids out of range: {column} {table[column].iloc[row]!r} on data line {row + 1} "
                "is not a non-negative integer below 2**53; MMRec ids are 0-based integers"
            )
        out[column] = values.astype(np.int64).to_numpy()
    table = pd.DataFrame(out)
    check_splits(table, path)
    return table


def check_splits(table: pd.DataFrame, path: str, reason: str = "") -> None:
    """Every split must have rows."""
    for label, split in enumerate(SPLITS):
        if not (table[SPLIT_LABEL] == label).any():
            raise DataError(f"{path}: the {split} split is empty (no row with {SPLIT_LABEL} = {label}{reason}); "
                            "every split needs rows")


def drop_cold_start_users(table: pd.DataFrame, user_field: str) -> pd.DataFrame:
    """Drop valid/test rows of users without any training row (MMRec's ``filter_out_cod_start_users``)."""
    warm = table.loc[table[SPLIT_LABEL] == 0, user_field].unique()
    keep = (table[SPLIT_LABEL] == 0) | table[user_field].isin(warm)
    return table[keep].reset_index(drop=True)


_SAVE_NPY = "save the features with numpy.save(path, array) as a .npy file"


def load_feature_array(path: str) -> np.ndarray:
    """The array of a feature file, never unpickled: a ``.npy`` (memory-mapped), or a ``.npz`` that holds
    exactly one array. A pickle (``torch.save``'s ``.pt``, ``pickle.dump``) is refused: unpickling a
    file can run arbitrary code, and a feature file is data."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):  # a zip: numpy's .npz, or torch.save's format
        return _single_npz_array(path)
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy format or pickle.dump
        raise DataError(f"{path}: a pickle (as torch.save or pickle.dump write), which recbole_mm does not load "
                        f"because unpickling can run code; {_SAVE_NPY}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:  # cut short, empty, unreadable, pickled object array
        raise DataError(f"{path}: not a readable .npy array ({exc}); {_SAVE_NPY}") from exc


def _single_npz_array(path: str) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: a damaged zip file ({exc}); {_SAVE_NPY}") from exc
    if any(name.endswith("data.pkl") for name in members):
        raise DataError(f"{path}: a torch file (torch.save), which recbole_mm does not load because it unpickles "
                        f"Python objects; {_SAVE_NPY}, e.g. numpy.save(path, tensor.cpu().numpy())")
    arrays = [name[:-len(".npy")] for name in members if name.endswith(".npy")]
    if len(arrays) != 1 or len(members) != 1:
        held = f"{len(arrays)} arrays ({', '.join(arrays[:5])})" if arrays else "no .npy array"
        raise DataError(f"{path}: a .npz (zip) file holding {held}; a feature file is one array: {_SAVE_NPY}, "
                        "or a .npz holding that one array")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[arrays[0]]
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: array '{arrays[0]}' of this .npz cannot be read without unpickling or is "
                        f"damaged ({exc}); {_SAVE_NPY}") from exc


def open_feature_file(path: str, modality: str, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a 2-D ``.npy`` with ``n_rows`` rows; return it and the indices of all-NaN rows.

    An all-NaN row marks an item without features; any other NaN or inf is an error.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: feature file for modality '{modality}' not found; put it there or fix 'modalities' in the dataset config")
    array = load_feature_array(path)
    if array.ndim != 2 or array.shape[1] == 0:
        raise DataError(f"{path}: features must be 2-D [items, dim] with dim >= 1, got shape {array.shape}; "
                        "reshape before saving")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: dtype {array.dtype} is not numeric; save float32 features")
    if array.shape[0] != n_rows:
        raise DataError(
            f"{path}: wrong row count: {array.shape[0]} rows, but item ids run 0..{n_rows - 1}, so {n_rows} "
            "rows are needed (row i = item i)"
        )
    missing = []
    for start in range(0, n_rows, _ROW_CHUNK):
        block = np.asarray(array[start:start + _ROW_CHUNK], dtype=np.float64)
        finite = np.isfinite(block)
        all_nan = np.isnan(block).all(axis=1)
        partial = ~finite.all(axis=1) & ~all_nan
        if partial.any():
            row = start + int(np.flatnonzero(partial)[0])
            raise DataError(
                f"{path}: NaN/inf in row {row} (item {row}); fix the features "
                "(an item without features should have a row that is entirely NaN)"
            )
        missing.extend((start + np.flatnonzero(all_nan)).tolist())
    return array, np.asarray(missing, dtype=np.int64)


def item_rows(tokens: Sequence[str], path: str) -> np.ndarray:
    """Feature-file rows of item tokens: the token is the row number (MMRec's itemID)."""
    try:
        rows = np.asarray([int(t) for t in tokens], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: ids out of range: item token is not an integer row number ({exc}); "
                        "row i of a feature file belongs to item id i") from exc
    return rows


def align_features(array: np.ndarray, rows: np.ndarray, missing: np.ndarray, policy: str,
                   path: str) -> torch.Tensor:
    """Float32 ``[len(rows) + 1, dim]`` tensor: row 0 is RecBole's padding (zeros), row j+1 = ``array[rows[j]]``."""
    if policy not in MISSING_POLICIES:
        raise DataError(f"missing_feature: {policy!r} is not one of {', '.join(MISSING_POLICIES)}; fix the dataset config")
    out_of_range = (rows < 0) | (rows >= array.shape[0])
    if out_of_range.any():
        raise DataError(f"{path}: ids out of range: item {rows[out_of_range][0]} has no row "
                        f"({array.shape[0]} rows); row i of a feature file belongs to item id i")
    aligned = np.zeros((len(rows) + 1, array.shape[1]), dtype=np.float32)
    # Row blocks: array[rows] of a float64 file would first copy the whole table in float64 (5.4 GiB for
    # Electronics' 4096-d image features) before the cast; a block at a time the cast needs 4096 rows.
    for start in range(0, len(rows), _ROW_CHUNK):
        aligned[1 + start:1 + start + _ROW_CHUNK] = array[rows[start:start + _ROW_CHUNK]]
    lacking = np.isin(rows, missing)
    if lacking.any():
        if policy == "error":
            ids = ", ".join(map(str, rows[lacking][:5]))
            raise DataError(
                f"{path}: {int(lacking.sum())} item(s) have no features (all-NaN rows, e.g. item {ids}); "
                "set missing_feature: mean (MMRec's practice) or missing_feature: zero in the dataset config"
            )
        fill = 0.0
        if policy == "mean":
            present = np.setdiff1d(np.arange(array.shape[0]), missing)
            fill = _row_mean(array, present)
        aligned[1:][lacking] = fill
    return torch.from_numpy(aligned)


def _row_mean(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    total = np.zeros(array.shape[1], dtype=np.float64)
    for start in range(0, len(rows), _ROW_CHUNK):
        total += np.asarray(array[rows[start:start + _ROW_CHUNK]], dtype=np.float64).sum(axis=0)
    return (total / max(len(rows), 1)).astype(np.float32)
