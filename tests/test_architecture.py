"""Layers: esgd.core holds pure decisions and must not pull in torch, boto3, hera or kubernetes;
the evolution step (a CPU pod) works on vectors without torch."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "boto3", "botocore", "hera", "kubernetes")


def _imported(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


def test_core_imports_no_heavy_framework():
    core = [f"esgd.core.{p.stem}" for p in sorted((ROOT / "core").glob("*.py")) if p.stem != "__init__"]
    assert len(core) >= 8
    assert not _imported(core) & set(HEAVY)


@pytest.mark.parametrize("module", ["esgd.worker.evolve", "esgd.store.checkpoint", "esgd.store.local"])
def test_vector_and_storage_code_needs_no_torch(module):
    assert "torch" not in _imported([module])
