"""A non-editable install from a built wheel finds properties/, dataset_configs/ and the shipped data."""

from __future__ import annotations

import os
import site
import subprocess
import sys

from conftest import REPO


def test_wheel_install_runs_from_another_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(REPO)], check=True, cwd=tmp_path, timeout=600)
    wheel = next(dist.glob("recbole_mm-*.whl"))
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
    run = subprocess.run([str(python), "-m", "recbole_mm", "--model=VBPR", "--dataset=tiktok", "--epochs=1",
                          "--show_progress=False"], capture_output=True, text=True, cwd=workdir, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "VBPR on tiktok" in run.stdout and "recall@20" in run.stdout
