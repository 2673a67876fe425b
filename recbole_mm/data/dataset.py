"""RecBole ``Dataset`` that also reads MMRec-layout folders and per-modality item features."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType

from recbole_mm.data import files, protocol
from recbole_mm.errors import DataError


class MultiModalDataset(Dataset):
    """A RecBole ``Dataset`` for MMRec layout (``<name>.inter`` with ``x_label``) or RecBole's atomic files.

    Dataset config keys (see ``dataset_configs/*.yaml``):

    - ``inter_file_name``: the interaction file (default ``<dataset>.inter``).
    - ``data_format``: ``auto`` (from the header), ``mmrec`` or ``atomic``.
    - ``modalities``: ``{name: file.npy}``; row i of each file holds the features of item id i.
    - ``missing_feature``: ``error`` (default), ``mean`` or ``zero`` for items whose row is all NaN.
    - ``filter_cold_start_users``: drop valid/test rows of users with no training row (MMRec).
    - ``cold_start_items``: e.g. 0.2 — the cold-start protocol (:mod:`recbole_mm.data.protocol`): that
      fraction of the training items (seeded by ``cold_start_seed``) moves with all its interactions
      into test, ``cold_start_valid_items`` (default 0.1) others into valid, and each split holds only
      its group's items; ``cold_start_candidates`` says whether they are ranked among themselves.
    - ``shuffle_features``: True permutes the feature rows across items (``shuffle_features_seed``),
      the same permutation for every modality: the shuffled-content control.
    - ``feature_source``: where the feature files can be obtained, quoted when they are missing.

    The MMRec split is honoured exactly: train/valid/test become RecBole's benchmark parts.
    """

    def __init__(self, config):
        # Shared (not copied) by the train/valid/test views that RecBole makes with copy.copy.
        self._feature_store: dict[str, torch.Tensor] = {}
        self._feature_rows: int | None = None
        super().__init__(config)

    # ---- interactions ---------------------------------------------------------------------------
    def _load_data(self, token, dataset_path):
        if not os.path.isdir(dataset_path):
            # RecBole would try to download an unknown dataset here; say what is wrong instead.
            from recbole_mm.resources import bundled_data_root

            root = os.path.dirname(os.path.abspath(dataset_path))
            found = files.available_datasets(root)
            there = f"datasets in {root}: {', '.join(found)}" if found else f"{root} holds no datasets"
            shipped = files.available_datasets(str(bundled_data_root()))
            if shipped and os.path.abspath(str(bundled_data_root())) != root:
                there += f"; shipped with recbole_mm: {', '.join(shipped)}"
            raise DataError(f"{dataset_path}: dataset folder not found ({there}; names are case-sensitive); "
                            f"set --dataset to one of them or data_path to the folder that holds '{token}/'")
        super()._load_data(token, dataset_path)

    def _load_feat(self, filepath, source):
        # RecBole reads atomic files as plain UTF-8, so a byte-order mark (as Excel writes) would become
        # part of the first column's name; read such a file as utf-8-sig.
        if not (filepath and os.path.isfile(filepath) and files.has_bom(filepath)):
            return super()._load_feat(filepath, source)
        encoding = self.config["encoding"]
        self.config["encoding"] = "utf-8-sig"
        try:
            return super()._load_feat(filepath, source)
        finally:
            self.config["encoding"] = encoding

    def _inter_file(self, token: str, dataset_path: str) -> str:
        return os.path.join(dataset_path, self.config["inter_file_name"] or f"{token}.inter")

    def _layout(self, token: str, dataset_path: str) -> str:
        layout = self.config["data_format"] or "auto"
        if layout not in ("auto", "mmrec", "atomic"):
            raise DataError(f"data_format: {layout!r} is not auto, mmrec or atomic; fix the dataset config")
        if layout != "auto":
            return layout
        path = self._inter_file(token, dataset_path)
        return "mmrec" if os.path.isfile(path) and files.is_mmrec_layout(path) else "atomic"

    def _load_inter_feat(self, token, dataset_path):
        if not self.config["benchmark_filename"]:
            # Before the layout is guessed: a missing file is neither layout, and must be named as missing.
            files.check_readable(self._inter_file(token, dataset_path), "interaction file",
                                 "put the dataset's .inter file there or set data_path / inter_file_name")
        if self._layout(token, dataset_path) == "atomic":
            named = self.config["inter_file_name"]
            if named and named != f"{token}.inter":
                # RecBole's atomic reader opens <token>.inter whatever this says.
                raise DataError(f"inter_file_name: {named!r} works for MMRec-layout files only, but "
                                f"{self._inter_file(token, dataset_path)} is RecBole's atomic format, which is "
                                f"read from {token}.inter; rename the file or unset inter_file_name")
            for key in ("cold_start_items", "filter_cold_start_users"):
                if self.config[key]:
                    # They act on MMRec's x_label split, which an atomic file does not have.
                    raise DataError(f"{key}: {self.config[key]!r} needs an MMRec-layout .inter (userID itemID "
                                    f"x_label), but {self._inter_file(token, dataset_path)} is RecBole's atomic "
                                    f"format; unset {key} for this dataset")
            benchmark = self.config["benchmark_filename"]
            names = [f"{token}.{part}.inter" for part in benchmark] if benchmark else [f"{token}.inter"]
            for name in names:
                # RecBole would say only "File ... not exist." (and a traceback); CRLF/BOM are its to read.
                files.check_readable(os.path.join(dataset_path, name), "interaction file",
                                     "put the dataset's .inter file there or set data_path / inter_file_name")
            return super()._load_inter_feat(token, dataset_path)
        path = self._inter_file(token, dataset_path)
        table = files.read_mmrec_inter(path, self.uid_field, self.iid_field)
        self._feature_rows = int(table[self.iid_field].max()) + 1  # MMRec: n_items = max id + 1
        if self.config["cold_start_items"]:
            valid_fraction = self.config["cold_start_valid_items"]
            table, groups = protocol.cold_start_split(
                table, self.iid_field, float(self.config["cold_start_items"]),
                protocol.COLD_VALID_DEFAULT if valid_fraction is None else float(valid_fraction),
                int(self.config["cold_start_seed"] or 2024))
            files.check_splits(table, path, reason=" after the cold-start split")
            self._cold_start_tokens = {name: [str(item) for item in items] for name, items in groups.items()}
        if self.config["filter_cold_start_users"]:
            table = files.drop_cold_start_users(table, self.uid_field)
            files.check_splits(table, path, reason=" once users without training rows are dropped")
        parts = [table[table[files.SPLIT_LABEL] == label] for label in range(len(files.SPLITS))]
        ordered = pd.concat(parts, ignore_index=True)
        self.inter_feat = pd.DataFrame(
            {field: ordered[field].astype(str) for field in (self.uid_field, self.iid_field)}
        )
        for field in (self.uid_field, self.iid_field):
            self.set_field_property(field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        # RecBole's benchmark mechanism: build() cuts inter_feat into these consecutive parts.
        self.file_size_list = [len(part) for part in parts]
        self.benchmark_filename_list = list(files.SPLITS)
        # The config dump should show the split used: the file's x_label split, not RecBole's default
        # RS ratios (which build() never reads once a benchmark split is set).
        eval_args = dict(self.config["eval_args"] or {})
        eval_args["split"] = {"x_label": dict(zip(files.SPLITS, self.file_size_list))}
        self.config["eval_args"] = eval_args
        self.logger.debug(f"MMRec interactions loaded from [{path}]: {self.file_size_list}")

    @property
    def cold_start_item_ids(self) -> dict[str, np.ndarray] | None:
        """Under the cold-start protocol, the internal ids of the items held out as ``valid`` and
        ``test`` (those still in the data after user filtering); None otherwise."""
        tokens = getattr(self, "_cold_start_tokens", None)
        if tokens is None:
            return None
        ids = self.field2token_id[self.iid_field]
        return {name: np.asarray(sorted(ids[t] for t in group if t in ids), dtype=np.int64)
                for name, group in tokens.items()}

    # ---- item features --------------------------------------------------------------------------
    @property
    def modalities(self) -> dict[str, str]:
        """Declared modalities: name → feature file path."""
        declared = self.config["modalities"] or {}
        if not isinstance(declared, dict):
            raise DataError("modalities: must map a modality name to a .npy file, e.g. {image: image_feat.npy}")
        return {name: os.path.join(self.dataset_path, str(file)) for name, file in declared.items()}

    @property
    def item_features(self) -> dict[str, torch.Tensor]:
        """Per modality, a float32 ``[item_num, dim]`` tensor aligned to internal item ids (row 0 = padding).

        Loaded on first use, so models that need no features never touch the files.
        """
        if not self._feature_store:
            self._feature_store.update(self._load_item_features())
        return self._feature_store

    def _load_item_features(self) -> dict[str, torch.Tensor]:
        modalities = self.modalities
        if not modalities:
            raise DataError(
                f"model {self.config['model']} needs item features, but the config of dataset "
                f"'{self.dataset_name}' declares no modalities; add e.g. modalities: {{image: image_feat.npy}}"
            )
        absent = [path for path in modalities.values() if not os.path.isfile(path)]
        if absent:
            names = " and ".join(os.path.basename(p) for p in absent)
            source = self.config["feature_source"]
            raise DataError(
                f"model {self.config['model']} needs the item feature file(s) {names}, missing from "
                f"{os.path.abspath(self.dataset_path)}; "
                + (f"{source}; " if source else "")
                + f"put them in that folder (or set data_path to a folder with '{self.dataset_name}/' holding them)"
            )
        tokens = self.field2id_token[self.iid_field][1:]
        n_rows = self._feature_rows
        features = {}
        for name, path in modalities.items():
            rows = files.item_rows(tokens, path)
            expected = n_rows if n_rows is not None else int(rows.max(initial=-1)) + 1
            array, missing = files.open_feature_file(path, name, expected)
            policy = self.config["missing_feature"] or "error"
            features[name] = files.align_features(array, rows, missing, policy, path)
        if self.config["shuffle_features"]:
            # The content control: item i gets the features of item perm[i] in every modality; row 0
            # (padding) stays. Seeded apart from the run's seed, so seeds vary training, not the shuffle.
            rng = np.random.default_rng(int(self.config["shuffle_features_seed"] or 2024))
            perm = torch.from_numpy(rng.permutation(len(tokens)) + 1)
            features = {name: torch.cat([t[:1], t[perm]]) for name, t in features.items()}
        return features

    def release_item_features(self) -> None:
        """Forget the loaded features, in every view of this dataset (a model that trains its own copies
        calls this once it has built from them: :meth:`MultiModalRecommender.release_fixed_features`); the next
        read of :attr:`item_features` loads the files again (the same values, shuffle included)."""
        self._feature_store.clear()

    def feature_dims(self) -> dict[str, int]:
        """Width of each modality's features."""
        return {name: int(t.shape[1]) for name, t in self.item_features.items()}

    def __str__(self) -> str:
        info = super().__str__()
        if self._feature_store:
            dims = ", ".join(f"{name} {dim}" for name, dim in self.feature_dims().items())
            info += f"\nItem features: {dims}"
        return info



def _samples_negatives(config) -> bool:
    """Whether RecBole's data preparation builds a negative sampler (train, valid or test)."""
    for key in ("train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args"):
        args = config[key]
        if isinstance(args, dict) and str(args.get("distribution") or "none").lower() != "none":
            return True
    return False


def check_trainable(config, dataset: Dataset) -> None:
    """Checks of a loaded dataset against the run's settings that RecBole makes only later, with a
    traceback: a user who has interacted with every item (a dataset of one item, or of one user who saw
    them all) leaves nothing to sample as a negative (RecBole's ValueError in its sampler), and a
    ``topk`` above the number of items fails in the first evaluation (torch's ``topk`` out of range)."""
    n_items = dataset.item_num - 1  # RecBole's item_num counts the padding id 0
    inter_file = getattr(dataset, "_inter_file", None)
    where = (inter_file(dataset.dataset_name, dataset.dataset_path) if inter_file
             else f"dataset '{config['dataset']}' ({dataset.dataset_path})")
    if _samples_negatives(config) and len(dataset.inter_feat):
        users = np.asarray(dataset.inter_feat[dataset.uid_field], dtype=np.int64)  # pandas before build()
        items = np.asarray(dataset.inter_feat[dataset.iid_field], dtype=np.int64)
        pairs = np.unique(users * dataset.item_num + items)
        seen = np.bincount(pairs // dataset.item_num, minlength=dataset.user_num)
        saturated = np.flatnonzero(seen >= n_items)
        if n_items <= 1:
            raise DataError(f"{where}: a single item, so training has no negative item to sample; a recommender "
                            "needs at least two items: add items")
        if saturated.size:
            token = dataset.field2id_token[dataset.uid_field][saturated[0]]
            more = f" and {saturated.size - 1} other user(s)" if saturated.size > 1 else ""
            raise DataError(f"{where}: {dataset.uid_field} {token}{more} interacted with all {n_items} items, so "
                            "training has no negative item to sample for them; add items, or remove those "
                            "users' rows")
    topk = config["topk"]
    topk = [topk] if isinstance(topk, int) else list(topk or [])
    if topk and max(topk) > n_items:
        raise DataError(f"topk: {config['topk']} asks for more items than the {n_items} of {where}; give "
                        f"topk values up to {n_items}, e.g. --topk=[{min(n_items, 10)}]")
