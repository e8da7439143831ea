"""`make constraints`: rewrite constraints.txt, the image's pinned runtime dependencies (read by
the Dockerfile), from the venv this runs in."""

import importlib.metadata as metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"


def runtime_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(r) for r in pyproject["project"]["dependencies"]]


def runtime_closure() -> dict[str, str]:
    """{name: installed version} of pyproject's runtime dependencies and everything they need
    (markers evaluated here, extras followed), torch and what only torch needs left out: what
    `make constraints` writes to constraints.txt."""
    seen: dict[str, set[str]] = {}  # name: extras already followed
    todo = [r for r in runtime_requirements() if canonicalize_name(r.name) != "torch"]
    versions = {}
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen and set(requirement.extras) <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | set(requirement.extras)
        dist = metadata.distribution(requirement.name)
        versions[name] = dist.version
        for raw in dist.requires or []:
            needed = Requirement(raw)
            environments = [{"extra": extra} for extra in ("", *seen[name])]
            if needed.marker is None or any(needed.marker.evaluate(env) for env in environments):
                todo.append(needed)
    return dict(sorted(versions.items()))


def write_constraints(path: Path = CONSTRAINTS) -> None:
    lines = [
        "# The image's runtime dependencies (Dockerfile), pinned: pyproject.toml's dependencies and what they",
        "# need, at the versions of the development venv. torch is not here: the Dockerfile pins it",
        "# (TORCH_VERSION) and takes it from the index of its TORCH_FLAVOUR, with the CUDA libraries its",
        "# wheel pins. Regenerate with `make constraints` after changing dependencies or upgrading the venv.",
        *(f"{name}=={version}" for name, version in runtime_closure().items()),
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_constraints()
