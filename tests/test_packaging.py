"""One import namespace `esgd`, built from the top-level folders; no generic top-level names."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "core": "core",
    "store": "store",
    "worker": "worker",
    "worker/tasks": "worker.tasks",
    "controller": "controller",
    "workflows": "workflows",
}


def test_wheel_contains_every_module_under_esgd_only(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("esgd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"esgd", next(t for t in tops if t.endswith(".dist-info"))}
    for folder, package in FOLDERS.items():
        for source in (ROOT / folder).glob("*.py"):
            assert f"esgd/{package.replace('.', '/')}/{source.name}" in names, source
    assert "esgd/__init__.py" in names  # api/__init__.py: the Python API, `import esgd`
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "esgd = esgd.cli.main:entry" in entry_points and "esgd-worker = esgd.cli.worker:entry" in entry_points
