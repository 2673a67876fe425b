"""`recbole-mm download` (recbole_mm.download): verified, atomic installs, tested against a local HTTP server.

Small generated files and their digests stand in for MMRec's table; the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_mm import download
from recbole_mm.download import DownloadError, HttpTransport, LocalTransport, RemoteDataset, RemoteFile, install

from conftest import REPO, write_planted_dataset


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A folder 'baby/' as MMRec publishes it (inter with rating/timestamp, float64 image features), and
    the table of its files' sizes and digests."""
    root = tmp_path_factory.mktemp("published")
    made = write_planted_dataset(root / "made", name="planted")
    folder = root / "baby"
    folder.mkdir()
    inter = pd.read_csv(made / "planted.inter", sep="\t")
    inter.insert(2, "rating", 5)
    inter.insert(3, "timestamp", np.arange(len(inter)))
    inter.to_csv(folder / "baby.inter", sep="\t", index=False)
    np.save(folder / "image_feat.npy", np.load(made / "image_feat.npy").astype(np.float64) / 3)
    shutil.copy(made / "text_feat.npy", folder / "text_feat.npy")
    n_items = int(inter.itemID.max()) + 1
    files = (
        RemoteFile("baby.inter", (folder / "baby.inter").stat().st_size, digest(folder / "baby.inter")),
        RemoteFile("image_feat.npy", (folder / "image_feat.npy").stat().st_size, digest(folder / "image_feat.npy"),
                   "float32", (n_items, 8)),
        RemoteFile("text_feat.npy", (folder / "text_feat.npy").stat().st_size, digest(folder / "text_feat.npy"),
                   "copy", (n_items, 6)),
    )
    return root, {"amazon-baby": RemoteDataset("baby", files)}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the published folder; paths under /cut/ send the full Content-Length but half the bytes."""

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        body = (Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True


@pytest.fixture(scope="module")
def server(published):
    root, _ = published
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def quiet(*_):
    pass


def leftovers(data_path: Path) -> list[str]:
    return sorted(str(p.relative_to(data_path)) for p in data_path.rglob("*"))


def test_right_digests_install_verified_converted_files(published, server, tmp_path):
    root, table = published
    dest = install("amazon-baby", str(tmp_path), HttpTransport(server), table=table, log=quiet)
    assert dest == tmp_path / "amazon-baby"
    assert leftovers(tmp_path) == ["amazon-baby", "amazon-baby/baby.inter", "amazon-baby/image_feat.npy",
                                   "amazon-baby/text_feat.npy"]  # no staging folder left
    assert (dest / "baby.inter").read_bytes() == (root / "baby" / "baby.inter").read_bytes()
    image = np.load(dest / "image_feat.npy")
    assert image.dtype == np.float32
    assert np.array_equal(image, np.load(root / "baby" / "image_feat.npy").astype(np.float32))
    assert digest(dest / "text_feat.npy") == digest(root / "baby" / "text_feat.npy")


def test_installed_folder_trains_gume_with_the_shipped_amazon_baby_config(published, server, tmp_path):
    from recbole_mm.quick_start import run_recbole

    _, table = published
    install("amazon-baby", str(tmp_path), HttpTransport(server), table=table, log=quiet)
    result = run_recbole(model="GUME", dataset="amazon-baby", config_dict={
        "data_path": str(tmp_path), "epochs": 1, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
        "state": "WARNING", "knn_k": 5, "eval_batch_size": 100000})
    assert 0 <= result["test_result"]["recall@20"] <= 1


def test_wrong_digest_is_one_line_and_nothing_is_used(published, server, tmp_path):
    _, table = published
    files = list(table["amazon-baby"].files)
    files[1] = RemoteFile(files[1].name, files[1].size, "0" * 64, "float32", files[1].shape)
    with pytest.raises(DownloadError, match=r"image_feat.npy from .*sha256 [0-9a-f]{64} does not match the published "
                       r"0{64}; it was not used") as caught:
        install("amazon-baby", str(tmp_path), HttpTransport(server),
                table={"amazon-baby": RemoteDataset("baby", tuple(files))}, log=quiet)
    assert "\n" not in str(caught.value)
    assert leftovers(tmp_path) == []  # not even the inter, which had passed: the install is all or nothing


def test_truncated_transfer_is_reported_and_nothing_is_installed(published, server, tmp_path):
    _, table = published
    with pytest.raises(DownloadError, match=r"baby.inter from .*/cut/baby/: \d[\d,]* bytes, the published file has "
                       r"[\d,]+ \(the transfer was cut short\)"):
        install("amazon-baby", str(tmp_path), HttpTransport(server + "/cut"), table=table, log=quiet)
    assert leftovers(tmp_path) == []


def test_no_network_fails_fast_saying_where_the_files_are_and_where_to_put_them(published, tmp_path):
    _, table = published
    with socket.socket() as probe:  # a port that nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError) as caught:
        install("amazon-baby", str(tmp_path), HttpTransport(f"http://127.0.0.1:{port}", timeout=5), table=table,
                log=quiet)
    message = str(caught.value)
    assert "\n" not in message and "Connection refused" in message
    assert download.MMREC_FOLDER in message and "subfolder baby" in message
    assert f"--from DIR --data-path {tmp_path}" in message and str(tmp_path / "amazon-baby") in message
    assert leftovers(tmp_path) == []


def test_files_put_by_hand_are_verified_and_installed(published, tmp_path):
    root, table = published
    dest = install("amazon-baby", str(tmp_path / "data"), LocalTransport(str(root)), table=table, log=quiet)
    assert np.load(dest / "image_feat.npy").dtype == np.float32
    with pytest.raises(DownloadError, match="cannot fetch baby/ from .*FileNotFoundError"):
        install("amazon-baby", str(tmp_path / "other"), LocalTransport(str(tmp_path / "empty")), table=table, log=quiet)


def test_an_interrupted_install_leaves_nothing_that_looks_complete(published, server, tmp_path):
    _, table = published

    class Interrupted(HttpTransport):
        def fetch(self, folder, name, dest):
            if name == "text_feat.npy":  # two files already fetched and verified
                assert leftovers(tmp_path / "data")[0].startswith(".amazon-baby.partial-")
                assert not (tmp_path / "data" / "amazon-baby").exists()
                raise KeyboardInterrupt
            super().fetch(folder, name, dest)

    with pytest.raises(KeyboardInterrupt):
        install("amazon-baby", str(tmp_path / "data"), Interrupted(server), table=table, log=quiet)
    assert leftovers(tmp_path / "data") == []


@pytest.mark.slow
def test_command_line_checks_the_real_table(server, tmp_path):
    # The local files are not MMRec's: against the real digests the command stops with exit status 2, one line.
    done = subprocess.run([sys.executable, "-m", "recbole_mm", "download", "amazon-baby", "--url", server,
                           "--data-path", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "recbole_mm: error: baby.inter from" in done.stderr and "the published file has 4,362,239" in done.stderr
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["amazon-baby", "amazon-sports"])
def test_missing_features_message_names_the_download_command(name, tmp_path):
    from recbole_mm.errors import DataError
    from recbole_mm.quick_start import create_dataset, make_config

    cfg = make_config(model="VBPR", dataset=name, config_dict={"checkpoint_dir": str(tmp_path), "show_progress": False})
    dataset = create_dataset(cfg)
    with pytest.raises(DataError, match=f"python -m recbole_mm download {name} .*--data_path it prints"):
        _ = dataset.item_features
