"""A cluster run under faults ends with the history of an undisturbed one.

Each scenario drives a tiny run the way `esgd controller` does (esgd.cli.cluster: the driver with
the Argo engine) against the Argo emulator (tests/argo_emulator.py), which executes the compiled
Workflows with real `esgd-worker` subprocesses against a real S3 server (SeaweedFS), honouring
their retry strategies. Then something goes wrong: the store goes away, pods are preempted, a
Workflow is deleted, the controller dies. Every scenario ends with the same history, row for row,
as the same spec run undisturbed by the in-process engine.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from esgd.controller.argo import ArgoEngine, exit_code, failed_pods, failure_reason
from esgd.controller.driver import Driver, RunStopped
from esgd.controller.local import InProcess
from esgd.controller.runs import create_or_resume
from esgd.core import keys
from esgd.core.plan import phases
from esgd.core.records import HistoryRow
from esgd.core.spec import parse_spec
from esgd.core.tables import read_table
from esgd.store.run import RunRef
from esgd.store.uri import open_store
from esgd.workflows import names
from esgd.workflows.generation import phase_workflow
from esgd.workflows.settings import parse_settings

from argo_emulator import POD_DEADLINE, ArgoEmulator
from helpers import small
from seaweed import Seaweed

NAMESPACE = "esgd"
RUN_ID = "cluster-faults"
SPEC = parse_spec(
    small(name="cluster-faults", seed=5, population={"mu": 3, "offspring": 2}, finetune={"epochs": 1}, device="cpu")
)
PACK, SHARD = 3, 1  # one training pod per generation, two evaluate pods at once
SETTINGS = parse_settings(
    {
        "gpu": {"gpus": 0},
        "pack": PACK,
        "shard": SHARD,
        "pollSeconds": 0.5,
        # Back-offs 2, 4, 8, 8, ... s: 8 retries of a step outlast a 40 s outage by far.
        "retry": {"limit": 8, "backoff": "2s", "factor": 2, "cap": "8s"},
    }
)
POD_S3 = {"ESGD_S3_RETRIES": "2", "AWS_MAX_ATTEMPTS": "2", "ESGD_S3_CONNECT_TIMEOUT": "1"}
"""What the pods' Secret adds to the server's credentials: a store that cannot be reached makes a
worker give up within seconds (exit 75), leaving the waiting to Argo's retries."""
OUTAGE = 40.0
DEADLINE = 300.0  # the longest a scenario may take: past it the emulator stops answering


def workflow(tag: str, attempt: int = 0) -> str:
    return names.workflow_name(RUN_ID, tag, attempt)


def history(run: RunRef) -> list[dict]:
    return read_table(run.store.get(keys.history(run.id)), HistoryRow).to_pylist()


class SameCut(InProcess):
    """`esgd run`'s engine, with the stages cut into steps as the cluster settings cut them: a pack
    of one is trained and evaluated by other code than a pack of several, which in float32 differs
    in the last bits, so the reference cuts alike."""

    def split(self, spec):
        return PACK, SHARD


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The history of the spec run undisturbed, in this process, on a local store."""
    store = open_store(str(tmp_path_factory.mktemp("reference") / "store"))
    run, _ = create_or_resume(store, SPEC, RUN_ID)
    Driver(run, SameCut("cpu"), log=lambda line: None).drive()
    return history(run)


@pytest.fixture
def cluster():
    """Makes Argo emulators whose pods reach a server; closes them (pods killed, threads joined)."""
    made = []

    def make(server: Seaweed, on_pod=None) -> ArgoEmulator:
        made.append(ArgoEmulator({**server.env, **POD_S3}, on_pod=on_pod, deadline_s=DEADLINE))
        return made[-1]

    yield make
    for argo in made:
        argo.close()


def controller(argo: ArgoEmulator, run: RunRef, lines: list[str], workflows=None, settings=SETTINGS) -> Driver:
    """The driver and the Argo engine as `esgd controller` makes them (`workflows`: the API as this
    controller sees it, by default the emulator's)."""
    workflows = workflows or argo
    workflows.installed(NAMESPACE)
    engine = ArgoEngine(workflows, settings, NAMESPACE, log=lines.append)
    return Driver(run, engine, lines.append, patience=settings.outage_seconds)


def created(argo: ArgoEmulator) -> list[str]:
    return [body["metadata"]["name"] for body in argo.created]


def tries(argo: ArgoEmulator, name: str, command: str) -> list[dict]:
    """The Pod nodes of the tries of the Workflow's `command` task, in order."""
    nodes = argo.get(NAMESPACE, name)["status"]["nodes"]
    (retry,) = [n for n in nodes.values() if n["type"] == "Retry" and n["templateName"] == command]
    return [nodes[child] for child in retry["children"]]


# 1. The store goes away ---------------------------------------------------------------------------


def test_store_outages_in_training_and_in_evolve_are_ridden_out_by_argo_retries(own_server, cluster, reference):
    """The S3 server stops for 40 s as generation 0's training pod starts, and again as generation
    1's evolve pod starts. Every pod that cannot reach it gives up within seconds with exit code
    75 (transient); Argo tries it again after its back-off, and again, until the server is back.
    Each Workflow succeeds on its first attempt, and the history is the undisturbed one."""
    outages = {(workflow("g0000"), "train"), (workflow("g0001"), "evolve")}
    restarter, restarts = ThreadPoolExecutor(1), []

    def on_pod(name: str, task: str, try_number: int, pod) -> None:
        if try_number == 0 and (name, task.split("-")[0]) in outages:
            own_server.stop(kill=True)
            restarts.append(restarter.submit(lambda: time.sleep(OUTAGE) or own_server.start()))

    argo = cluster(own_server, on_pod)
    run, _ = create_or_resume(open_store("s3://faults/cluster-run"), SPEC, RUN_ID)
    lines: list[str] = []
    with restarter:
        controller(argo, run, lines).drive()
    assert [restart.result() for restart in restarts] == [own_server] * 2
    assert lines[-1] == f"run {RUN_ID} is complete"
    assert history(run) == reference
    assert created(argo) == [workflow("g0000"), workflow("g0001"), workflow("final")]
    for name, command in outages:
        *failed, last = tries(argo, name, command)
        assert last["phase"] == "Succeeded" and len(failed) >= 3  # 40 s of tries, back-offs 2, 4, 8, 8 s
        for pod in failed:
            assert pod["outputs"]["exitCode"] == "75", pod
            # down: "cannot reach the S3 endpoint"; coming back up, SeaweedFS may answer 500 for a moment
            trouble = ("cannot reach the S3 endpoint", "InternalError")
            assert any(t in pod["message"] for t in trouble) and pod["message"].endswith("(transient)"), pod


# 2. Pods and Workflows deleted --------------------------------------------------------------------


def test_preempted_training_pods_and_a_deleted_workflow_end_in_the_same_history(seaweed, s3_uri, cluster, reference):
    """The training pod of every generation is deleted as it starts (a spot node taken back):
    Argo reports it "pod deleted" and tries it again within the Workflow. The final stages'
    Workflow is deleted while its fine-tuning pod runs: the controller submits the next attempt."""
    final = workflow("final")

    def on_pod(name: str, task: str, try_number: int, pod) -> None:
        if task.startswith("train") and try_number == 0:
            pod.kill()
        if name == final and task.startswith("finetune"):
            argo.delete(final)

    argo = cluster(seaweed, on_pod)
    run, _ = create_or_resume(open_store(s3_uri), SPEC, RUN_ID)
    lines: list[str] = []
    controller(argo, run, lines).drive()
    assert history(run) == reference
    assert created(argo) == [workflow("g0000"), workflow("g0001"), final, workflow("final", 1)]
    for tag in ("g0000", "g0001"):
        preempted, retried = tries(argo, workflow(tag), "train")
        assert (preempted["phase"], preempted["message"], retried["phase"]) == ("Error", "pod deleted", "Succeeded")
    assert any(line.startswith(f"{final} Error: the Workflow was deleted; on to the next attempt") for line in lines)


# 3. The controller dies ---------------------------------------------------------------------------


class ControllerKilled(Exception):
    """The controller process ends here (as under `kill -9`: nothing of it runs any more)."""


class DiesWhileEvolving:
    """The Kubernetes API as a controller sees it that dies while it waits for Workflow `name`,
    once that Workflow's evolve pod has started."""

    def __init__(self, argo: ArgoEmulator, name: str):
        self.argo, self.name = argo, name

    def installed(self, namespace: str) -> None:
        self.argo.installed(namespace)

    def create(self, namespace: str, body: dict, dry_run: bool = False) -> dict:
        return self.argo.create(namespace, body, dry_run)

    def get(self, namespace: str, name: str) -> dict | None:
        found = self.argo.get(namespace, name)
        nodes = (found or {}).get("status", {}).get("nodes", {})
        if name == self.name and any(node["templateName"] == "evolve" for node in nodes.values()):
            raise ControllerKilled(f"while {name} was running")
        return found


def test_a_controller_restarted_mid_generation_waits_for_the_running_workflow(seaweed, s3_uri, cluster, reference):
    """The controller dies while generation 1's Workflow runs; that Workflow goes on without it. A
    new controller on the same run resumes after generation 0, finds generation 1's Workflow
    running and waits for it instead of submitting it again: every step runs exactly once."""
    argo = cluster(seaweed)
    run, _ = create_or_resume(open_store(s3_uri), SPEC, RUN_ID)
    running = workflow("g0001")
    with pytest.raises(ControllerKilled):
        controller(argo, run, [], DiesWhileEvolving(argo, running)).drive()
    assert argo.get(NAMESPACE, running)["status"]["phase"] == "Running"

    lines: list[str] = []
    controller(argo, RunRef.open(run.uri), lines).drive()
    assert lines[0] == "resuming after 1 committed generation(s)"
    assert f"found {running} from an earlier start; waiting for it" in lines
    assert created(argo) == [workflow("g0000"), running, workflow("final")]
    steps = [step for phase in phases(SPEC, PACK, SHARD) for step in phase.steps()]
    assert len(argo.commands) == len({tuple(argv) for argv in argo.commands}) == len(steps)
    assert history(run) == reference


# 4. A GPU template where there is no GPU ----------------------------------------------------------


def test_a_gpu_template_without_a_gpu_stops_the_run_naming_the_device(seaweed, s3_uri, cluster):
    """GPU templates run `--device cuda`: on a node without a GPU (here: this machine) the first pod
    exits 2 naming the device, instead of training on its CPU, and the controller stops the run at
    once (bad input: no retry, no second attempt)."""
    settings = SETTINGS.model_copy(update={"gpu": SETTINGS.gpu.model_copy(update={"gpus": 1})})
    argo = cluster(seaweed)
    run, _ = create_or_resume(open_store(s3_uri), SPEC, RUN_ID)
    refused = r"device: cuda requested, but this machine has 0 CUDA device\(s\) \(bad input: not retried\)"
    with pytest.raises(
        RunStopped, match=rf"{workflow('g0000')} Failed: .*init\(0\): Error \(exit code 2\): .*{refused}"
    ):
        controller(argo, run, [], settings=settings).drive()
    assert created(argo) == [workflow("g0000")]
    assert argo.commands == [["esgd-worker", "init", "--run", run.uri, "--device", "cuda"]]


# The emulator is honest ---------------------------------------------------------------------------


def one_step(name: str, script: str, retry: dict, deadline: str) -> dict:
    """A Workflow of one task whose pod runs `python -c script`, with this retry strategy and deadline."""
    stub = {"name": "stub", "container": {"image": "-", "command": ["python", "-c", script]}}
    dag = {"name": "main", "dag": {"tasks": [{"name": "step", "template": "stub"}]}}
    stub.update(retryStrategy=retry, activeDeadlineSeconds=deadline)
    return {"metadata": {"name": name}, "spec": {"entrypoint": "main", "templates": [dag, stub]}}


def test_the_emulator_retries_and_reports_as_argo_does():
    """What the scenarios rely on, with the retry strategy the settings compile to: transient exits
    are tried again (the earlier tries then count for nothing), exit 2 is not, a pod past its
    deadline is killed; and the controller reads from the status what failed."""
    compiled = phase_workflow(phases(SPEC, PACK, SHARD)[0], SETTINGS, "s3://bucket/runs/r", "r").to_dict()
    retry = next(t["retryStrategy"] for t in compiled["spec"]["templates"] if "retryStrategy" in t)
    steps = {  # name: (script, retry strategy, deadline)
        "flaky": ("import sys; print('down'); sys.exit([75, 75, 0][{{retries}}])", retry, "60"),
        "refused": ("import sys; print('esgd-worker: error: bad'); sys.exit(2)", retry, "60"),
        "hung": ("import time; time.sleep(60)", dict(retry, limit="1"), "1"),
    }
    argo = ArgoEmulator({}, time_scale=0.05, deadline_s=60)
    try:
        for name, (script, strategy, deadline) in steps.items():
            argo.create(NAMESPACE, one_step(name, script, strategy, deadline))
        argo.wait_idle(30)
    finally:
        argo.close()
    assert [pod["phase"] for pod in tries(argo, "flaky", "stub")] == ["Failed", "Failed", "Succeeded"]
    assert tries(argo, "flaky", "stub")[0]["message"] == "Error (exit code 75): down"
    assert argo.get(NAMESPACE, "flaky")["status"]["phase"] == "Succeeded"
    assert failed_pods(argo.get(NAMESPACE, "flaky")) == []
    refused = argo.get(NAMESPACE, "refused")
    assert [pod["phase"] for pod in tries(argo, "refused", "stub")] == ["Failed"]
    assert [exit_code(pod) for pod in failed_pods(refused)] == ["2"]
    reason = "child 'refused.step' failed; step(0): Error (exit code 2): esgd-worker: error: bad"
    assert failure_reason(refused) == reason
    assert [pod["message"] for pod in tries(argo, "hung", "stub")] == [POD_DEADLINE] * 2
    assert argo.get(NAMESPACE, "hung")["status"]["phase"] == "Failed"
