"""``recbole-mm download amazon-baby``: MMRec's published Amazon files, verified.

MMRec (github enoche/MMRec) publishes, per Amazon dataset, a Google Drive folder with ``<name>.inter``
(its official ``x_label`` split), ``image_feat.npy`` (4096-d, float64) and ``text_feat.npy`` (384-d
float32). This command fetches the files of one dataset, checks each against the SHA-256 digest
published alongside copies of them (``DATASETS``) before using it, converts the float64 image
features to float32, and installs them as ``<data_path>/<dataset>/`` so that

    python run_recbole_mm.py --model=GUME --dataset=amazon-baby --data_path=<data_path>

trains on MMRec's own split and features (the dataset config, ``dataset_configs/amazon-baby.yaml``,
is the shipped one; only the folder differs). Everything is staged in a hidden folder next to the
destination and renamed into place only once every file has passed its check: an interrupted or
failed run leaves no file that looks complete, and nothing of a file that failed its check is kept.

The transport is pluggable (:class:`Transport`): Google Drive through ``gdown`` (the ``download``
extra) by default, any HTTP mirror laid out as ``<url>/<folder>/<file>`` (``--url``), or a local
folder of files downloaded by hand (``--from``). The tests use the HTTP one against a local server.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from recbole_mm import storage
from recbole_mm.errors import RecBoleMMError

MMREC_FOLDER = "https://drive.google.com/drive/folders/13cBy1EA_saTUuXxVllKgtfci2A09jyaG"
_CHUNK = 1 << 20  # bytes read (and hashed) at a time
_CONVERT_ROWS = 1024  # rows converted to float32 at a time: memory stays a small block, not the whole file


class DownloadError(RecBoleMMError):
    """A file could not be fetched, or failed its check: nothing was installed from it."""


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name in MMRec's folder, size, SHA-256, and how it is installed."""

    name: str
    size: int
    sha256: str
    convert: str = "copy"  # "copy": installed as fetched; "float32": a 2-D float .npy saved as float32
    shape: tuple[int, int] | None = None  # expected array shape, for .npy files


@dataclass(frozen=True)
class RemoteDataset:
    """A dataset's folder in MMRec's release (``folder``) and the files installed from it."""

    folder: str
    files: tuple[RemoteFile, ...]
    unverified: tuple[str, ...] = ()  # files the dataset config declares but no digest is published for


# Digests as given in issue 10 (published alongside copies of MMRec's files).
DATASETS: dict[str, RemoteDataset] = {
    "amazon-baby": RemoteDataset("baby", (
        RemoteFile("baby.inter", 4_362_239, "e0abb033ea5cc538bb2becd8c3dc50b619f28f7974ba61f5ed11ce27cf405940"),
        RemoteFile("image_feat.npy", 231_014_528, "36c3be592b98506189a7d5de71b21577cf626f0293b539d861534673b3e9fd70",
                   "float32", (7050, 4096)),
        RemoteFile("text_feat.npy", 10_828_928, "6667f2ad655c9ecc97cb3383f58988864ef51ec0b39c158b15986c66769f2dc4",
                   "copy", (7050, 384)),
    )),
    "amazon-sports": RemoteDataset("sports", (
        RemoteFile("sports.inter", 8_278_383, "b8a43979c7984a01a8ab9713ea29a3cf13a65b1784dbadc2162fa932daf1c6a0"),
        RemoteFile("image_feat.npy", 601_522_304, "222f924a0694b6c7e2bc26ea4bc2ef4ec89f7045aa5105ef463af8455c7a7695",
                   "float32", (18357, 4096)),
        RemoteFile("text_feat.npy", 28_196_480, "27d6087f0d8644b8245c60052425530c6446dffe61024b8126db0009ad94de84",
                   "copy", (18357, 384)),
    )),
    "amazon-clothing": RemoteDataset("clothing", (
        RemoteFile("clothing.inter", 7_840_508, "1d142e4d14079cc509ac2003978eb945f7759d8875d003345cbc863dc303235a"),
        RemoteFile("image_feat.npy", 754_745_472, "050ea2d0d05bdd441053cc4d9ac38fd570c9611cc49357f442c1c7b8c9943fbc",
                   "float32", (23033, 4096)),
    ), unverified=("text_feat.npy",)),
}


# ---- transports ---------------------------------------------------------------------------------
class Transport(Protocol):
    """Fetches one file of a dataset's folder to a local path; raises ``OSError`` when it cannot."""

    def describe(self, folder: str) -> str:
        """Where the files come from, for messages."""

    def fetch(self, folder: str, name: str, dest: str) -> None:
        """Write ``folder/name`` to ``dest`` (which the caller verifies)."""


class HttpTransport:
    """An HTTP(S) mirror laid out as ``<base_url>/<folder>/<file>``."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def describe(self, folder: str) -> str:
        return f"{self.base_url}/{folder}/"

    def fetch(self, folder: str, name: str, dest: str) -> None:
        url = f"{self.base_url}/{folder}/{name}"
        with urllib.request.urlopen(url, timeout=self.timeout) as response, open(dest, "wb") as out:
            while True:
                try:
                    block = response.read(_CHUNK)
                except http.client.IncompleteRead as exc:
                    # the connection closed before Content-Length bytes: keep what came, and the
                    # caller's size check reports the short file as a transfer cut short
                    out.write(exc.partial)
                    break
                if not block:
                    break
                out.write(block)


class LocalTransport:
    """Files downloaded by hand into ``root`` (either ``root/<file>`` or ``root/<folder>/<file>``)."""

    def __init__(self, root: str):
        self.root = root

    def describe(self, folder: str) -> str:
        return os.path.abspath(self.root)

    def fetch(self, folder: str, name: str, dest: str) -> None:
        for candidate in (os.path.join(self.root, name), os.path.join(self.root, folder, name)):
            if os.path.isfile(candidate):
                shutil.copyfile(candidate, dest)
                return
        raise FileNotFoundError(f"{name} is neither in {os.path.abspath(self.root)} nor in its {folder}/ subfolder")


class DriveTransport:
    """MMRec's Google Drive folder, through ``gdown`` (``pip install recbole_mm[download]``).

    Untested here (these machines have no internet): the tests cover every other transport.
    """

    def __init__(self, folder_url: str = MMREC_FOLDER, timeout: float = 30.0):
        self.folder_url = folder_url
        self.timeout = timeout
        self._ids: dict[str, str] | None = None

    def describe(self, folder: str) -> str:
        return f"{self.folder_url} (subfolder {folder})"

    def _file_ids(self) -> dict[str, str]:
        if self._ids is None:
            gdown = _import_gdown()
            try:
                listing = gdown.download_folder(url=self.folder_url, skip_download=True, quiet=True,
                                                timeout=self.timeout)
            except gdown.exceptions.DownloadError as exc:
                raise OSError(f"listing the folder failed: {exc}") from exc
            self._ids = {entry.path.replace(os.sep, "/"): entry.id for entry in listing or []}
        return self._ids

    def fetch(self, folder: str, name: str, dest: str) -> None:
        ids = self._file_ids()
        key = next((path for path in ids if path == f"{folder}/{name}" or path.endswith(f"/{folder}/{name}")), None)
        if key is None:
            raise FileNotFoundError(f"{folder}/{name} is not in the folder's listing")
        gdown = _import_gdown()
        try:
            gdown.download(id=ids[key], output=dest, quiet=False, timeout=self.timeout)
        except gdown.exceptions.DownloadError as exc:
            raise OSError(str(exc)) from exc


def _import_gdown():
    try:
        import gdown
    except ImportError as exc:
        from recbole_mm.resources import install_command

        raise DownloadError(f"downloading from Google Drive needs gdown: {install_command('download')} "
                            "(or pip install gdown), or fetch the files by hand and use --from DIR") from exc
    return gdown


# ---- verify, convert, install -------------------------------------------------------------------
def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str, expected: RemoteFile, source: str) -> None:
    """Size, then SHA-256, of a fetched file against the published ones; ``DownloadError`` if not."""
    size = os.path.getsize(path)
    if size != expected.size:
        cut = " (the transfer was cut short)" if size < expected.size else ""
        raise DownloadError(f"{expected.name} from {source}: {size:,} bytes, the published file has "
                            f"{expected.size:,}{cut}; it was not used and nothing was installed: run the command again")
    digest = sha256_of(path)
    if digest != expected.sha256:
        raise DownloadError(f"{expected.name} from {source}: sha256 {digest} does not match the published "
                            f"{expected.sha256}; it was not used and nothing was installed: check the source")


def to_float32(src: str, dest: str, shape: tuple[int, int] | None, name: str) -> None:
    """Copy a 2-D float ``.npy`` into a float32 ``.npy`` at ``dest``, a block of rows at a time."""
    array = np.load(src, mmap_mode="r", allow_pickle=False)
    if array.ndim != 2 or (shape is not None and tuple(array.shape) != shape) or array.dtype.kind != "f":
        raise DownloadError(f"{name}: array of shape {array.shape} and dtype {array.dtype}, expected float "
                            f"{shape}; it was not used")
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=np.float32, shape=array.shape)
    with open(dest, "r+b") as f:  # blocks on disk now: a full disk is an OSError here, not a SIGBUS below
        os.posix_fallocate(f.fileno(), 0, os.path.getsize(dest))
    for start in range(0, array.shape[0], _CONVERT_ROWS):
        out[start:start + _CONVERT_ROWS] = array[start:start + _CONVERT_ROWS]
    out.flush()
    del out


def default_data_path() -> str:
    """Where downloads go unless ``--data-path`` says otherwise: a per-user folder, never the shipped one."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "recbole_mm", "dataset")


def _no_network_message(name: str, spec: RemoteDataset, transport: Transport, dest: Path, exc: BaseException) -> str:
    files = ", ".join(f.name for f in spec.files)
    reason = str(getattr(exc, "reason", None) or exc).replace("\n", " ")
    return (f"cannot fetch {spec.folder}/ from {transport.describe(spec.folder)} ({type(exc).__name__}: {reason}); "
            f"MMRec publishes {files} at {MMREC_FOLDER} (subfolder {spec.folder}): download them by hand into a "
            f"folder DIR and run python -m recbole_mm download {name} --from DIR --data-path {dest.parent}, "
            f"which verifies them and installs them into {dest}")


_DATA_PATH_FIX = "give --data-path a folder you can write to"


def prepare_destination(name: str, data_path: str) -> Path:
    """``<data_path>/<name>``, its parent created and checked writable, and the staging folders of killed
    installs of ``name`` removed; nothing is created when the folder cannot be used."""
    dest = Path(data_path) / name
    storage.make_folder(dest.parent, "--data-path", _DATA_PATH_FIX)
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} is a file, so {name} cannot be installed there; move it away or "
                            f"{_DATA_PATH_FIX}")
    storage.remove_stale(dest.parent, [f".{name}.partial-*"])
    return dest


def install(name: str, data_path: str, transport: Transport,
            table: Mapping[str, RemoteDataset] = DATASETS, log=print) -> Path:
    """Fetch, verify and install dataset ``name`` into ``<data_path>/<name>/``; return that folder."""
    if name not in table:
        raise DownloadError(f"dataset {name!r}: downloadable ones are {', '.join(table)}")
    spec = table[name]
    dest = prepare_destination(name, data_path)
    with storage.locked_temp_folder(dest.parent, f".{name}.partial-") as staging:
        ready = []
        for remote in spec.files:
            fetched = staging / f"{remote.name}.fetched"
            source = transport.describe(spec.folder)
            log(f"fetching {spec.folder}/{remote.name} ({remote.size:,} bytes) from {source}")
            try:
                transport.fetch(spec.folder, remote.name, str(fetched))
            except OSError as exc:  # connection refused, DNS, timeout, HTTP errors, a missing local file
                if exc.errno in storage.LOCAL_WRITE_ERRORS:  # the fetch could not write here: not the network
                    raise storage.write_error(exc, f"{name} file", dest / remote.name, _DATA_PATH_FIX) from exc
                raise DownloadError(_no_network_message(name, spec, transport, dest, exc)) from exc
            verify(str(fetched), remote, source)
            final = staging / remote.name
            try:
                if remote.convert == "float32":
                    to_float32(str(fetched), str(final), remote.shape, remote.name)
                    fetched.unlink()
                else:
                    fetched.rename(final)
            except OSError as exc:
                raise storage.write_error(exc, f"{name} file", dest / remote.name, _DATA_PATH_FIX) from exc
            ready.append(final)
            log(f"  verified sha256 {remote.sha256[:16]}…" + (", converted to float32" if remote.convert == "float32" else ""))
        try:
            dest.mkdir(exist_ok=True)
            # The .inter goes last: once it is in place, so is every feature file it needs.
            for path in sorted(ready, key=lambda p: p.suffix == ".inter"):
                os.replace(path, dest / path.name)
        except OSError as exc:
            raise storage.write_error(exc, "dataset folder", dest, _DATA_PATH_FIX) from exc
    log(f"installed {', '.join(f.name for f in spec.files)} into {dest}")
    if spec.unverified:
        log(f"not installed: {', '.join(spec.unverified)} (no published digest to check it against); put it in "
            f"{dest} by hand if you have it")
    log(f"train with: python run_recbole_mm.py --model=GUME --dataset={name} --data_path={dest.parent}")
    return dest


# ---- command line -------------------------------------------------------------------------------
def build_parser(prog: str = "python -m recbole_mm.download") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Fetch and verify MMRec's published Amazon datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    download = sub.add_parser("download", help="fetch, verify (SHA-256) and install one dataset",
                              description=f"Installs MMRec's files into <data-path>/<dataset>/ (default data path "
                              f"{default_data_path()}); then train with --data_path=<data-path>.")
    download.add_argument("dataset", choices=sorted(DATASETS))
    download.add_argument("--data-path", default=None, help="folder that receives <dataset>/ (default: per-user data folder)")
    source = download.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_dir", default=None, metavar="DIR",
                        help="use files downloaded by hand into DIR (or DIR/<baby|sports|clothing>/) instead of fetching")
    source.add_argument("--url", default=None, help="an HTTP mirror laid out as URL/<baby|sports|clothing>/<file>")
    download.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    sub.add_parser("list", help="the downloadable datasets and their files")
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m recbole_mm.download") -> Path | None:
    """Entry point of ``recbole-mm download`` and ``python -m recbole_mm.download download`` (and of the old
    name, ``python -m recbole_mm.datasets download``); ``prog`` names the command in usage lines."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        for name, spec in DATASETS.items():
            print(f"{name}: " + ", ".join(f"{f.name} ({f.size:,} bytes)" for f in spec.files))
        return None
    if args.from_dir:
        transport: Transport = LocalTransport(args.from_dir)
    elif args.url:
        transport = HttpTransport(args.url, timeout=args.timeout)
    else:
        _import_gdown()
        transport = DriveTransport(timeout=args.timeout)
    return install(args.dataset, args.data_path or default_data_path(), transport)


if __name__ == "__main__":
    from recbole_mm.errors import exit_on_user_error

    exit_on_user_error(main)
