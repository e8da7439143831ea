"""What can be checked of the image without Docker: the base, the variants, the non-root user the
pods expect, the entrypoint, the build context, and that the wheel it installs holds every
subpackage of the source tree."""

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from esgd.workflows.pods import USER_ID

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip()
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def args() -> dict[str, str]:
    return dict(a.split("=", 1) for op, a in instructions() if op == "ARG" and "=" in a)


def test_base_is_a_slim_python_matching_the_package():
    base = args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base), base
    minimum = re.search(r"3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    assert int(re.search(r"3\.(\d+)", base).group(1)) >= int(minimum)
    assert [a for op, a in instructions() if op == "FROM"] == ["${PYTHON_IMAGE} AS wheel", "${PYTHON_IMAGE}"]


def test_gpu_by_default_and_a_cpu_variant():
    assert args()["VARIANT"] == "gpu"
    run = " ".join(a for op, a in final_stage() if op == "RUN")
    assert re.search(r'gpu\) pip install "torch==\$\{TORCH_VERSION\}"', run)  # PyPI's Linux wheel: CUDA
    assert re.search(r'cpu\) pip install --index-url "\$\{TORCH_CPU_INDEX\}" "torch==\$\{TORCH_VERSION\}"', run)
    assert args()["TORCH_CPU_INDEX"].endswith("/whl/cpu")
    assert "exit 1" in run  # any other variant is an error


def test_runs_as_the_non_root_user_the_pods_expect():
    users = [a for op, a in final_stage() if op == "USER"]
    assert users == [f"{USER_ID}:{USER_ID}"]  # numeric, so runAsNonRoot can be verified by the kubelet
    run = " ".join(a for op, a in final_stage() if op == "RUN")
    assert f"useradd --uid {USER_ID} --gid {USER_ID}" in run
    env = " ".join(a for op, a in final_stage() if op == "ENV")
    assert "HOME=/tmp" in env and "MPLCONFIGDIR=/tmp/" in env  # writable with a read-only root filesystem


def test_entrypoint_and_the_commands_the_pods_run():
    assert [a for op, a in final_stage() if op == "ENTRYPOINT"] == ['["esgd"]']
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts["esgd"] == "esgd.cli.main:entry" and scripts["esgd-worker"] == "esgd.cli.worker:entry"


def test_installs_the_wheel_built_from_the_source():
    steps = instructions()
    assert ("RUN", "python -m build --wheel --outdir /dist") in steps
    assert ("COPY", "--from=wheel /dist/ /tmp/dist/") in final_stage()
    assert any(op == "RUN" and a.startswith("pip install /tmp/dist/esgd-*.whl") for op, a in final_stage())


def ignored(path: str) -> bool:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


def source_packages() -> dict[str, Path]:
    """Every package of the source tree: esgd.<x> for each package-dir and each folder below it with an __init__.py."""
    out = {}
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                rel = init.parent.relative_to(ROOT / folder).parts
                out[".".join((package, *rel))] = init.parent
    return out


def test_build_context_holds_what_the_wheel_is_built_from():
    assert not ignored("pyproject.toml") and not ignored(PYPROJECT["project"]["readme"])
    assert (ROOT / PYPROJECT["project"]["readme"]).is_file()
    for package, folder in source_packages().items():
        assert not ignored(folder.relative_to(ROOT).as_posix()), package
    for noise in (".venv", ".git", "tests", "esgd-runs"):
        assert ignored(noise)


def test_the_wheel_contains_every_subpackage(tmp_path):
    """Built like the image builds it (from the files the build context sends), the wheel holds
    every package folder of the source tree and every module in it."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ROOT.iterdir():
        if not ignored(item.name) and item.name not in (".git", ".venv"):
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, src / item.name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("esgd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in source_packages().items():
        for module in folder.glob("*.py"):
            assert f"{package.replace('.', '/')}/{module.name}" in names, f"{module} is not in the wheel"


def test_kind_smoke_script_says_what_is_missing(tmp_path):
    """scripts/kind-smoke.sh is valid bash and, without its tools, names them and exits 2."""
    script = ROOT / "scripts" / "kind-smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    (tmp_path / "dirname").symlink_to(shutil.which("dirname"))
    done = subprocess.run(
        [shutil.which("bash"), str(script)], capture_output=True, text=True, env={"PATH": str(tmp_path)}
    )
    assert done.returncode == 2
    assert "not on PATH: docker kind kubectl helm argo" in done.stderr and "CI machines" in done.stderr
