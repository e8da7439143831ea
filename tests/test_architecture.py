"""The layers (docs/architecture.md), enforced: which package may import which, read from the source
(every import, also those inside functions), and which heavy frameworks an import really pulls in."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "store", "worker", "workflows", "controller", "analysis", "api", "cli")
"""The layers, bottom to top; `api` is the folder of the package `esgd` itself (the Python API)."""
HEAVY = ("torch", "boto3", "botocore", "hera", "kubernetes")

# What each layer may import of esgd, and which third-party frameworks it may not import.
MAY_IMPORT = {
    "core": {"core"},
    "store": {"core", "store"},
    "worker": {"core", "store", "worker"},
    "workflows": {"core", "workflows"},
    "controller": {"core", "store", "workflows", "controller", "worker"},  # worker: the local engines only (below)
    "analysis": {"core", "store", "controller", "worker", "analysis"},
    "api": {"core", "store", "controller", "worker", "analysis", "api"},
    "cli": set(PACKAGES),
}
MAY_NOT_USE = {
    "core": {"torch", "boto3", "botocore", "hera", "kubernetes"},
    "store": {"torch", "hera", "kubernetes"},
    "worker": {"hera", "kubernetes"},
    "workflows": {"torch", "boto3", "botocore", "kubernetes"},
    "controller": {"hera"},  # Workflows are built by esgd.workflows
}
# Modules that must not import worker code, not even lazily: the driver and the engines that do
# not run steps themselves, run creation, reports, and the cluster command line (the controller:
# the run's first pod checks the task, where the data is).
NO_WORKER = {
    "esgd.controller.driver",
    "esgd.controller.argo",
    "esgd.controller.runs",
    "esgd.analysis.report",
    "esgd.analysis.lineage",
    "esgd.analysis.verify",
    "esgd.analysis.export",
    "esgd.cli.cluster",
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            parts = parts[1:] if package == "api" else parts  # api/ is the package esgd
            out[".".join(["esgd", *parts]).removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if node.module == "esgd" or node.module.startswith("esgd.")
            }
    return found


def layer(module: str) -> str:
    """The layer of a module, or of a name imported from one (`esgd.run`: the API's)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES and parts[1] != "api" else "api"


def test_every_module_belongs_to_a_layer_and_the_layers_are_the_folders():
    found = modules()
    assert len(found) > 40 and {layer(m) for m in found} == set(PACKAGES)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_follow_the_layers(module):
    own = layer(module)
    for name in imports(modules()[module]):
        top = name.split(".")[0]
        if top == "esgd":
            assert layer(name) in MAY_IMPORT[own], f"{module} imports {name}"
        assert top not in MAY_NOT_USE.get(own, set()), f"{module} imports {name}"
    if module in NO_WORKER:
        assert not any(n.startswith("esgd.worker") for n in imports(modules()[module])), f"{module} imports worker code"
    if own == "controller" and module != "esgd.controller.local":
        assert not any(n.startswith("esgd.worker") for n in imports(modules()[module])), module


def _imported(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def test_core_imports_no_heavy_framework():
    core = [m for m in modules() if layer(m) == "core"]
    assert len(core) >= 10
    assert not _imported(core) & set(HEAVY)


def test_the_driver_the_argo_engine_and_the_command_lines_import_no_torch():
    assert "torch" not in _imported(
        [
            "esgd.controller.driver",
            "esgd.controller.argo",
            "esgd.controller.runs",
            "esgd",
            "esgd.cli.main",
            "esgd.cli.cluster",
            "esgd.analysis.report",
            "esgd.analysis.lineage",
            "esgd.analysis.verify",
            "esgd.analysis.export",
        ]
    )


def test_workers_import_no_cluster_framework():
    worker = [m for m in modules() if layer(m) == "worker"]
    assert not _imported(worker) & {"hera", "kubernetes"}


@pytest.mark.parametrize(
    "module", ["esgd.worker.evolve", "esgd.store.checkpoint", "esgd.store.local", "esgd.worker.data.imports"]
)
def test_vector_storage_and_import_code_needs_no_torch(module):
    assert "torch" not in _imported([module])
