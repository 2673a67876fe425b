"""A non-editable install from a built wheel finds properties/, dataset_configs/ and the shipped data, and
its recbole-mm command trains, recommends and shows the download help from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.mark.slow
def test_wheel_install_runs_from_another_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(REPO)], check=True, cwd=tmp_path, timeout=600)
    wheel = next(dist.glob("recbole_mm-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Project-URL: RecBole source, https://github.com/RUCAIBox/RecBole" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert "recbole-mm = recbole_mm.cli:console_main" in entry_points
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (torch, recbole, ...) come from this test's environment; recbole_mm itself
    # only from the wheel (a .pth-added directory gets no .pth processing, so an editable install
    # of recbole_mm there stays invisible).
    with open(os.path.join(site_dir, "deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    # Without PYTHONPATH: a checkout on it (with the egg-info the wheel build leaves there) would make
    # pip see recbole_mm as installed already and skip the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=600, env=env)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    probe = subprocess.run([str(python), "-c", "import recbole_mm, recbole_mm.resources as r; "
                            "print(recbole_mm.__file__); print(r.resource_root())"],
                           capture_output=True, text=True, cwd=workdir, env=env, check=True)
    package_file, root = probe.stdout.split()
    assert package_file.startswith(str(venv)) and root.startswith(str(venv))
    # The console script that pip wrote from the wheel's entry point, not the checkout's module.
    command = venv / "bin" / "recbole-mm"
    run = subprocess.run([str(command), "--model=VBPR", "--dataset=tiktok", "--epochs=1", "--show_progress=False"],
                         capture_output=True, text=True, cwd=workdir, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "VBPR on tiktok" in run.stdout and "recall@20" in run.stdout
    checkpoint = next(line.split(": ", 1)[1] for line in run.stdout.splitlines() if line.startswith("checkpoint: "))
    assert checkpoint.startswith("saved/") and (workdir / checkpoint).is_file()
    # TikTok's user 0 has training and validation rows but no test row: RecBole's full_sort_topk fails on it.
    recommend = subprocess.run([str(command), "recommend", checkpoint, "--users", "0", "1", "2", "--k", "10",
                                "--format", "csv"], capture_output=True, text=True, cwd=workdir, env=env, timeout=600)
    assert recommend.returncode == 0, recommend.stderr[-2000:]
    rows = recommend.stdout.splitlines()
    assert rows[0] == "user,rank,item,score" and [r.split(",")[0] for r in rows[1:]] == ["0"] * 10 + ["1"] * 10 + ["2"] * 10
    helped = subprocess.run([str(command), "download", "--help"], capture_output=True, text=True, cwd=workdir,
                            env=env, timeout=600)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: recbole-mm download "), helped.stderr[-2000:]
    assert "--data-path" in helped.stdout
    # The same console script, run in an interpreter that then lists what it imported: no torch, no RecBole.
    listed = subprocess.run([str(python), "-c", "import json, runpy, sys\n"
                             f"sys.argv = [{str(command)!r}, 'download', '--help']\n"
                             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
                             "print('IMPORTED', json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                             "('torch', 'recbole', 'recbole_mm'))))"],
                            capture_output=True, text=True, cwd=workdir, env=env, timeout=600)
    imported = json.loads(listed.stdout.rsplit("IMPORTED ", 1)[1]) if "IMPORTED " in listed.stdout else None
    assert imported and "recbole_mm.download" in imported, listed.stderr[-2000:]
    assert not [m for m in imported if m.split(".")[0] in ("torch", "recbole")], imported
    # An installed copy is told to install the extra by the package's name (a checkout, by its path).
    hint = subprocess.run([str(python), "-c", "from recbole_mm.resources import install_command; "
                           "print(install_command('download'))"], capture_output=True, text=True, cwd=workdir,
                          env=env, check=True)
    assert hint.stdout.strip() == "pip install 'recbole_mm[download]'"
