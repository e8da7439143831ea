"""scripts/kind-smoke.sh without a cluster: valid bash, names the tools it lacks, and, run against
stand-ins for docker, kind, kubectl, helm and argo that record their arguments, bounds the run by
SMOKE_TIMEOUT, prints what a failure leaves (pods, Workflows, descriptions, logs) before the
cluster is deleted, and uses a run id of its own on every invocation."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "kind-smoke.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(not (BASH and shutil.which("timeout")), reason="needs bash and timeout (GNU coreutils)")

# One stand-in for every tool: it appends its name and arguments (and what it reads on stdin, for
# `kubectl apply -f -`) to $STUB_LOG and answers just enough for the script to go on.
# STUB_ARGO=fail makes `argo submit` fail, STUB_ARGO=hang makes it run past any timeout.
STUB = r"""#!/usr/bin/env bash
tool=$(basename "$0")
echo "$tool $*" >>"$STUB_LOG"
case "$tool $*" in
  "kind get clusters"*) [ -f "$STUB_STATE/cluster" ] && echo esgd-smoke ;;
  "kind create cluster"*) touch "$STUB_STATE/cluster" ;;
  "kind delete cluster"*) rm -f "$STUB_STATE/cluster" ;;
  "kubectl create namespace"*) echo "kind: Namespace" ;;
  "kubectl apply"*"-f -"*) { echo "--- stdin"; cat; } >>"$STUB_LOG" ;;
  "kubectl get configmap"*) echo "image: esgd:smoke" ;;
  "kubectl "*"get pods"*"-o name"*) echo pod/esgd-smoke-g0000-a0-train-1 ;;
  "kubectl "*"logs"*"--previous"*) exit 1 ;;
  "kubectl "*"logs"*) echo "a log line" ;;
  "argo submit"*)
    case "${STUB_ARGO:-}" in
      fail) echo "Workflow failed" >&2; exit 1 ;;
      hang) exec sleep 120 ;;
    esac ;;
esac
exit 0
"""


@pytest.fixture
def stubs(tmp_path):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    stub = bin_dir / "stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    for tool in ("docker", "kind", "kubectl", "helm", "argo"):
        (bin_dir / tool).symlink_to(stub)
    log = tmp_path / "calls.log"
    log.touch()

    def run(**env) -> tuple[subprocess.CompletedProcess, str]:
        full = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "STUB_LOG": str(log),
            "STUB_STATE": str(state),
            **env,
        }
        before = log.read_text()
        done = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env=full, timeout=60)
        return done, log.read_text()[len(before) :]

    return run


def test_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_says_what_is_missing(tmp_path):
    """Without its tools, it names them and exits 2."""
    (tmp_path / "dirname").symlink_to(shutil.which("dirname"))
    done = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env={"PATH": str(tmp_path)})
    assert done.returncode == 2
    assert "not on PATH: docker kind kubectl helm argo timeout" in done.stderr and "CI machines" in done.stderr


def test_builds_the_cpu_flavour_of_the_image():
    assert "docker build --build-arg TORCH_FLAVOUR=cpu" in SCRIPT.read_text()


def run_ids(calls: str) -> list[str]:
    return re.findall(r"^docker run .* --run-id (\S+) ", calls, re.M)


def test_a_passing_run_deletes_the_cluster_and_dumps_nothing(stubs):
    done, calls = stubs()
    assert done.returncode == 0, done.stderr
    assert "kind-smoke: OK" in done.stdout
    assert "get pods,workflows -A" not in calls and "describe" not in calls
    assert calls.rstrip().splitlines()[-1] == "kind delete cluster --name esgd-smoke"


def test_every_invocation_has_a_run_id_of_its_own(stubs):
    """A kept cluster's store holds the earlier runs: the same id would resume a finished run."""
    first, calls1 = stubs(KEEP_CLUSTER="1")
    second, calls2 = stubs(KEEP_CLUSTER="1")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    (id1,), (id2,) = run_ids(calls1), run_ids(calls2)
    assert re.fullmatch(r"smoke-\d+-\d+", id1) and re.fullmatch(r"smoke-\d+-\d+", id2)
    assert id1 != id2
    assert f"runs/{id2}" in calls2.split("--- stdin")[-1]  # the check pod reads the new run
    assert "kind delete cluster" not in calls1 + calls2  # KEEP_CLUSTER=1 keeps it
    assert "kind create cluster" in calls1 and "kind create cluster" not in calls2  # the kept one is reused


def assert_dumped_before_delete(calls: str) -> None:
    lines = calls.splitlines()
    delete = lines.index("kind delete cluster --name esgd-smoke")
    dump = [i for i, line in enumerate(lines) if line.startswith("kubectl --context kind-esgd-smoke")]
    assert dump and max(dump) < delete
    text = "\n".join(lines[i] for i in dump)
    assert "get pods,workflows -A -o wide" in text
    for ns in ("esgd", "argo"):
        assert f"describe -n {ns} pod/esgd-smoke-g0000-a0-train-1" in text
        assert re.search(rf"logs -n {ns} pod/esgd-smoke-g0000-a0-train-1 --all-containers", text)


def test_a_failed_run_dumps_the_cluster_before_deleting_it(stubs):
    done, calls = stubs(STUB_ARGO="fail")
    assert done.returncode == 1
    assert "kind-smoke: FAILED" in done.stderr and "a log line" in done.stderr
    assert "exit status 1 from: argo submit --wait" in done.stderr  # the failed command is named
    assert_dumped_before_delete(calls)


def test_smoke_timeout_bounds_argo_submit_wait(stubs):
    done, calls = stubs(STUB_ARGO="hang", SMOKE_TIMEOUT="3s")
    assert done.returncode == 124, done.stderr
    assert "SMOKE_TIMEOUT (3s) passed during: argo submit --wait" in done.stderr
    assert_dumped_before_delete(calls)


@pytest.mark.parametrize("value", ["0", "ten", "5d", "-1", "1.5m"])
def test_a_bad_smoke_timeout_is_refused(stubs, value):
    done, calls = stubs(SMOKE_TIMEOUT=value)
    assert done.returncode == 2 and "SMOKE_TIMEOUT must be" in done.stderr
    assert "kind create" not in calls
