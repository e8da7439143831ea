"""What can be checked of the image without Docker: the base, the torch flavour, the pinned
dependencies in a layer of their own, the non-root user the pods expect, the entrypoint, the build
context, and that the wheel it installs holds every subpackage of the source tree.
(scripts/kind-smoke.sh, which builds it, is tested in test_smoke_script.py.)"""

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
CONSTRAINTS = ROOT / "constraints.txt"
DOCS = (ROOT / "docs" / "kubernetes.md").read_text()


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


def test_torch_flavour_is_a_build_argument():
    """TORCH_FLAVOUR (cu128 by default, cpu for a CPU-only image) picks the folder of PyTorch's index
    the pinned torch comes from; anything but cpu or cuXYZ is an error."""
    assert args()["TORCH_FLAVOUR"] == "cu128"
    assert args()["TORCH_INDEX"] == "https://download.pytorch.org/whl"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args()["TORCH_VERSION"])
    installs = [a for op, a in final_stage() if op == "RUN" and "torch==" in a]
    assert len(installs) == 1, installs
    assert 'pip install --index-url "${TORCH_INDEX}/${TORCH_FLAVOUR}" "torch==${TORCH_VERSION}"' in installs[0]
    assert "cpu|cu[0-9][0-9]*) ;;" in installs[0] and "exit 1" in installs[0]
    for flavour in ("cpu", "cu118", "cu126", "cu128"):  # the flavours docs/kubernetes.md documents
        assert f"`{flavour}`" in DOCS, flavour
    assert "TORCH_FLAVOUR" in DOCKERFILE.split("ARG PYTHON_IMAGE")[0]  # documented in the header comment


def test_torch_version_matches_the_makefile():
    """The image and `make install` (CPU machines) install the same torch."""
    pinned = re.search(r"^TORCH_CPU\s*\?=\s*torch==(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned and pinned.group(1) == args()["TORCH_VERSION"]


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
    assert any(
        op == "RUN" and a.startswith("pip install --constraint /opt/esgd/constraints.txt /tmp/dist/esgd-*.whl")
        for op, a in final_stage()
    )


def test_dependencies_are_a_layer_of_their_own_before_the_source():
    """constraints.txt is copied and installed after torch and before the wheel built from the
    source arrives, so a source change reuses the dependency layers from the build cache."""
    steps = final_stage()
    copy = steps.index(("COPY", "constraints.txt /opt/esgd/constraints.txt"))
    install = steps.index(("RUN", "pip install --no-deps -r /opt/esgd/constraints.txt && pip check"))
    torch = next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "torch==" in a)
    source = steps.index(("COPY", "--from=wheel /dist/ /tmp/dist/"))
    assert torch < copy < install < source
    assert all(op != "COPY" or i in (copy, source) for i, (op, _) in enumerate(steps))  # nothing else copied


def constraint_pins() -> dict[str, str]:
    """{canonical name: version} of constraints.txt; every line that is not a comment is name==version."""
    utils = pytest.importorskip("packaging.utils")
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
            assert match, f"constraints.txt: not name==version: {line!r}"
            name = utils.canonicalize_name(match.group(1))
            assert name not in pins, f"constraints.txt: {name} pinned twice"
            pins[name] = match.group(2)
    return pins


def runtime_requirements():
    requirements = pytest.importorskip("packaging.requirements")
    return [requirements.Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def test_constraints_pin_every_runtime_dependency_within_pyproject_ranges():
    utils = pytest.importorskip("packaging.utils")
    pins = constraint_pins()
    for requirement in runtime_requirements():
        name = utils.canonicalize_name(requirement.name)
        if name == "torch":
            continue  # the Dockerfile's TORCH_VERSION, from the TORCH_FLAVOUR index
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt (make constraints)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement}"
        )


def test_constraints_leave_torch_to_the_flavour():
    """torch, its CUDA libraries and triton differ per flavour: the torch wheel pins them itself."""
    pins = constraint_pins()
    assert not [n for n in pins if n == "torch" or n.startswith(("nvidia-", "triton"))], sorted(pins)


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
    assert not ignored(CONSTRAINTS.name)
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
