"""The cluster controller against an in-process fake of the two Kubernetes calls it makes.

The fake records the exact request bodies (validated against Argo's schema and Hera's models) and
"runs" a submitted Workflow the way Argo would: it walks the DAG, fills in the parameters and runs
each pod's command (`esgd-worker ...`) in this process against the run's store. So these tests
prove that the controller's Workflows, executed, produce the committed state it advances on.
"""

import contextlib
import copy
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from esgd.cli import worker as worker_cli
from esgd.controller.argo import (
    AlreadyExists,
    ArgoEngine,
    ClusterRunError,
    ClusterUnavailable,
    KubernetesWorkflows,
    cluster_check,
    failure_reason,
)
from esgd.controller.driver import Driver, RunStopped, committed_generations
from esgd.controller.runs import create_or_resume
from esgd.core import keys, plan
from esgd.core.spec import load_spec
from esgd.store.run import RunRef
from esgd.store.uri import open_store
from esgd.workflows import names
from esgd.workflows.check import hera_problems
from esgd.workflows.generation import device_args
from esgd.workflows.settings import parse_settings

from argo_schema import schema_problems

NAMESPACE = "esgd"
SPEC = """
name: tiny
task: esgd.worker.tasks.digits:task
task_args: {hidden: 8}
generations: 2
population: {mu: 3, offspring: 2, rho: 2, elite: 2}
finetune: {epochs: 1}
device: cpu
"""


class FakeWorkflows:
    """create/get on workflows.argoproj.io, in memory. A created Workflow is Pending, then Running
    on the next get, then, on the get after, it runs: its DAG is executed in-process (or the
    outcome scripted in `outcomes` is reported without running anything). A failed pod is reported
    as Argo reports one whose container has terminationMessagePolicy FallbackToLogsOnError: a Pod
    node with its exit code and the command's last output line in its message."""

    def __init__(self, outcomes: dict | None = None):
        self.objects: dict[tuple[str, str], dict] = {}
        self.created: list[tuple[str, dict]] = []  # exact request bodies, in order
        self.commands: list[list[str]] = []  # every pod command run, in order
        self.outcomes = outcomes or {}  # name -> (phase, message) reported instead of running
        self.hidden_once: set[str] = set()  # names a first get does not see (a racing submitter)
        self.dry_runs: list[dict] = []  # bodies of dry-run creates (cluster_check)

    def installed(self, namespace: str) -> None:
        pass  # Argo is installed

    def create(self, namespace: str, body: dict, dry_run: bool = False) -> dict:
        if dry_run:
            self.dry_runs.append(copy.deepcopy(body))
            return copy.deepcopy(body)
        self.created.append((namespace, copy.deepcopy(body)))
        assert body["metadata"].get("namespace") in (None, namespace)
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise AlreadyExists(key[1])
        self.objects[key] = dict(copy.deepcopy(body), status={"phase": "Pending"})
        return copy.deepcopy(self.objects[key])

    def get(self, namespace: str, name: str) -> dict | None:
        if name in self.hidden_once:
            self.hidden_once.discard(name)
            return None
        obj = self.objects.get((namespace, name))
        if obj is None:
            return None
        status = obj["status"]
        if status["phase"] == "Pending":
            status["phase"] = "Running"
        elif status["phase"] == "Running":
            phase, message, *nodes = self.outcomes.get(name) or self.execute(obj)
            status.update(phase=phase, message=message, nodes=nodes[0] if nodes else {})
        return copy.deepcopy(obj)

    def execute(self, workflow: dict) -> tuple[str, str, dict]:
        """Run the DAG's pods in dependency order, as Argo would (no retries)."""
        spec = workflow["spec"]
        params = {p["name"]: p["value"] for p in spec["arguments"]["parameters"]}
        templates = {t["name"]: t for t in spec["templates"]}
        tasks = templates[spec["entrypoint"]]["dag"]["tasks"]
        done: set[str] = set()
        while len(done) < len(tasks):
            ready = [
                t
                for t in tasks
                if t["name"] not in done and set(filter(None, (t.get("depends") or "").split(" && "))) <= done
            ]
            assert ready, "the DAG has a cycle or an unknown dependency"
            for task in ready:
                inputs = {p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])}
                container = templates[task["template"]]["container"]
                argv = [
                    re.sub(
                        r"\{\{(workflow|inputs)\.parameters\.([\w-]+)\}\}",
                        lambda m, inputs=inputs: (params if m.group(1) == "workflow" else inputs)[m.group(2)],
                        a,
                    )
                    for a in container["command"] + container["args"]
                ]
                self.commands.append(argv)
                assert argv[0] == "esgd-worker"
                output = io.StringIO()
                with contextlib.redirect_stderr(output):
                    code = worker_cli.main(argv[1:] + ["--device", "cpu"])
                if code != 0:
                    last = (output.getvalue().strip().splitlines() or [""])[-1]
                    node = {
                        "type": "Pod",
                        "phase": "Failed",
                        "displayName": task["name"],
                        "message": f"Error (exit code {code}): {last}",
                        "outputs": {"exitCode": str(code)},
                    }
                    return "Failed", f"child '{task['name']}' failed", {"pod": node}
                done.add(task["name"])
        return "Succeeded", "", {}


@pytest.fixture
def run(tmp_path) -> RunRef:
    run, _ = create_or_resume(open_store(str(tmp_path / "store")), load_spec(SPEC), "tiny-run")
    return run


def controller(fake, run, log=None, patience=0.0, **settings) -> Driver:
    """The driver with the Argo engine, as `esgd controller` makes them (but no patience with
    transient trouble unless given: outageSeconds); `.sleeps` records the polls and waits."""
    sleeps, log = [], log if log is not None else (lambda line: None)
    engine = ArgoEngine(fake, parse_settings({"pollSeconds": 5, **settings}), NAMESPACE, sleep=sleeps.append, log=log)
    driver = Driver(run, engine, log, sleep=sleeps.append, patience=patience)
    driver.sleeps = sleeps
    return driver


def phase(run: RunRef, generation: int | None) -> plan.Phase:
    """A phase as the Argo engine's default settings cut it (pack 1, shard 4)."""
    return plan.final(run.spec, 1) if generation is None else plan.generation(run.spec, generation, 1, 4)


def next_phase(run: RunRef) -> int | str | None:
    """The next phase to run: a generation, "final", or None when the run is complete."""
    pending = Driver(run, ArgoEngine(None, parse_settings({}), NAMESPACE)).remaining(committed_generations(run))
    return None if not pending else "final" if pending[0].generation is None else pending[0].generation


def expected_commands(run: RunRef, generations) -> list[list[str]]:
    """The worker commands of the plan for these phases (None: the final one)."""
    settings = parse_settings({})
    return [
        ["esgd-worker", *s.argv(run.uri), *device_args(settings, s)] for g in generations for s in phase(run, g).steps()
    ]


def created_names(fake) -> list[str]:
    return [body["metadata"]["name"] for _, body in fake.created]


def test_runs_every_phase_with_the_plans_commands(run):
    fake, lines = FakeWorkflows(), []
    ctl = controller(fake, run, log=lines.append)
    ctl.drive()
    assert created_names(fake) == ["tiny-run-g0000-a0", "tiny-run-g0001-a0", "tiny-run-final-a0"]
    assert fake.commands == expected_commands(run, [0, 1, None])
    assert run.store.exists(keys.final_manifest(run.id)) and next_phase(run) is None
    assert ctl.sleeps == [5.0] * 3  # per phase: seen Running once (one poll interval), then finished
    assert any(line.startswith("gen 1 of 0..1") for line in lines) and lines[-1] == "run tiny-run is complete"


def test_request_bodies_are_valid_argo_workflows(run):
    """The fake is honest: what the controller sends is what Argo accepts (schema + Hera models)."""
    fake = FakeWorkflows()
    controller(fake, run, **{"gpu": {"gpus": 0}}).drive()
    assert len(fake.created) == 3
    for namespace, body in fake.created:
        assert body["metadata"]["namespace"] == namespace == NAMESPACE
        assert body["apiVersion"] == "argoproj.io/v1alpha1" and body["kind"] == "Workflow"
        assert hera_problems(body) == []
        assert schema_problems(body) == []


def test_a_failed_generation_is_submitted_again(run):
    fake, lines = FakeWorkflows({"tiny-run-g0001-a0": ("Failed", "pod deleted")}), []
    controller(fake, run, log=lines.append).drive()
    assert created_names(fake) == ["tiny-run-g0000-a0", "tiny-run-g0001-a0", "tiny-run-g0001-a1", "tiny-run-final-a0"]
    assert any("tiny-run-g0001-a0 Failed: pod deleted; on to the next attempt (2 left)" in line for line in lines)
    assert next_phase(run) is None


def test_stops_with_the_reason_after_the_last_attempt(run):
    failing = {names.workflow_name(run.id, "g0000", a): ("Failed", "node shutdown") for a in range(2)}
    fake = FakeWorkflows(failing)
    with pytest.raises(
        RunStopped, match=r"generation 0 failed 2 time\(s\); last: tiny-run-g0000-a1 Failed: node shutdown"
    ):
        controller(fake, run, generationAttempts=2).drive()
    assert created_names(fake) == ["tiny-run-g0000-a0", "tiny-run-g0000-a1"]


def test_a_worker_that_refuses_its_input_stops_the_run_at_once(run):
    """A pod that exits 2 (here: a spec in the store that no longer parses) fails its Workflow, and
    the run stops at once with the pod's message: no further attempt would do better."""
    fake = FakeWorkflows()
    ctl = controller(fake, run)  # three attempts allowed
    run.store.put(keys.spec(run.id), b"not: [a valid spec")  # every worker now exits 2
    with pytest.raises(
        RunStopped, match=r"child 'init' failed; init: Error \(exit code 2\): esgd-worker: error: .*not retried"
    ):
        ctl.drive()
    assert created_names(fake) == ["tiny-run-g0000-a0"]


def test_the_pods_that_failed_for_good_are_read_from_outputs_and_messages():
    from esgd.controller.argo import exit_code, failed_pods, failure_reason

    def pod(**node):
        return {"type": "Pod", "phase": "Failed", **node}

    assert exit_code(pod(message="pod deleted")) is None
    assert exit_code(pod(phase="Error", outputs={"exitCode": "1"})) == "1"
    assert exit_code(pod(message="Error (exit code 75): esgd-worker: error: cannot reach ...")) == "75"
    # a step retried after exit 75 that then ran out of memory failed for good on its last try only
    retried = {
        "status": {
            "phase": "Failed",
            "nodes": {
                "r": {"type": "Retry", "phase": "Failed", "children": ["a", "b"]},
                "a": pod(displayName="train(0)", outputs={"exitCode": "75"}, message="Error (exit code 75): x"),
                "b": pod(displayName="train(1)", outputs={"exitCode": "137"}, message="OOMKilled (exit code 137)"),
            },
        }
    }
    assert [exit_code(p) for p in failed_pods(retried)] == ["137"]
    assert failure_reason(retried) == "train(1): OOMKilled (exit code 137)"
    # a log tail as termination message is one line: Argo's reason and the worker's last line
    tail = pod(displayName="init", message="Error (exit code 2): warning: slow\nesgd-worker: error: task refused\n")
    assert (
        failure_reason({"status": {"nodes": {"p": tail}}})
        == "init: Error (exit code 2): esgd-worker: error: task refused"
    )


def test_restart_continues_from_the_committed_state(run):
    """A new controller (after a crash) never resubmits a committed generation and waits for the
    attempt an earlier controller left running instead of submitting it twice."""
    fake = FakeWorkflows()
    first = controller(fake, run)
    first.complete(phase(run, 0))
    fake.create(NAMESPACE, first.engine.body(run, phase(run, 1), 0))  # submitted, then the controller died
    fresh = RunRef.open(run.uri)
    lines = []
    controller(fake, fresh, log=lines.append).drive()
    assert created_names(fake) == ["tiny-run-g0000-a0", "tiny-run-g0001-a0", "tiny-run-final-a0"]
    assert "found tiny-run-g0001-a0 from an earlier start; waiting for it" in lines
    assert fake.commands == expected_commands(run, [0, 1, None])


def test_a_finished_run_submits_nothing(run):
    fake = FakeWorkflows()
    controller(fake, run).drive()
    again = FakeWorkflows()
    controller(again, RunRef.open(run.uri)).drive()
    assert again.created == []


def test_a_double_submission_is_detected_not_duplicated(run):
    """Another controller submits the same attempt between our get and our create: the API server
    answers 409 (same deterministic name) and we wait for that Workflow."""
    fake, lines = FakeWorkflows(), []
    other = controller(fake, run)
    fake.create(NAMESPACE, other.engine.body(run, phase(run, 0), 0))
    fake.hidden_once.add("tiny-run-g0000-a0")
    controller(fake, run, log=lines.append).complete(phase(run, 0))
    assert created_names(fake) == ["tiny-run-g0000-a0", "tiny-run-g0000-a0"]  # the second got 409
    assert len([c for c in fake.commands if c[1] == "init"]) == 1
    assert any("submitted by someone else" in line for line in lines)


def test_success_without_a_commit_is_an_error(run):
    fake = FakeWorkflows({"tiny-run-g0000-a0": ("Succeeded", "")})
    with pytest.raises(RunStopped, match="not committed"):
        controller(fake, run).drive()


def test_a_deleted_workflow_counts_as_a_failed_attempt(run):
    class Deleting(FakeWorkflows):
        def get(self, namespace, name):
            obj = super().get(namespace, name)
            if name == "tiny-run-g0000-a0" and obj and obj["status"]["phase"] == "Running":
                del self.objects[(namespace, name)]
                return None
            return obj

    fake, lines = Deleting(), []
    controller(fake, run, log=lines.append).complete(phase(run, 0))
    assert "tiny-run-g0000-a0 Error: the Workflow was deleted; on to the next attempt (2 left) in 30 s" in lines
    assert next_phase(run) == 1


def test_a_successful_workflow_deleted_before_it_was_seen_counts_as_success(run):
    """ttlStrategy may delete a Succeeded Workflow before the next poll: the store decides."""

    class DeletingOnSuccess(FakeWorkflows):
        def get(self, namespace, name):
            obj = super().get(namespace, name)
            if obj and obj["status"]["phase"] == "Succeeded":
                del self.objects[(namespace, name)]
                return None
            return obj

    fake, lines = DeletingOnSuccess(), []
    controller(fake, run, log=lines.append).complete(phase(run, 0))
    assert created_names(fake) == ["tiny-run-g0000-a0"] and next_phase(run) == 1


def test_failure_reason_names_the_failed_pod():
    workflow = {
        "status": {
            "phase": "Failed",
            "message": "child 'train-m0-1' failed",
            "nodes": {
                "a": {"type": "DAG", "phase": "Failed", "message": "x"},
                "b": {
                    "type": "Pod",
                    "phase": "Failed",
                    "displayName": "train-m0-1(1)",
                    "message": "OOMKilled (exit code 137)",
                },
            },
        }
    }
    assert failure_reason(workflow) == "child 'train-m0-1' failed; train-m0-1(1): OOMKilled (exit code 137)"
    assert failure_reason({}) == "no message"


class FakeCustomObjectsApi:
    """The kubernetes client's CustomObjectsApi surface KubernetesWorkflows uses."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), []

    def _answer(self, *args, _request_timeout=None, **kwargs):
        assert _request_timeout is not None  # every request has a timeout
        self.calls.append(args + tuple(kwargs.items()))
        error = self.errors.pop(0) if self.errors else None
        if error:
            raise ApiException(status=error, reason="scripted")
        return {"metadata": {"name": args[-1] if isinstance(args[-1], str) else args[-1]["metadata"]["name"]}}

    create_namespaced_custom_object = get_namespaced_custom_object = list_namespaced_custom_object = _answer


def test_kubernetes_client_adapter():
    body = {"metadata": {"name": "w"}}
    api = FakeCustomObjectsApi([503, None])
    k8s = KubernetesWorkflows(api, sleep=lambda s: None)
    assert k8s.create("ns", body)["metadata"]["name"] == "w"  # a 503 is retried
    assert api.calls[-1] == ("argoproj.io", "v1alpha1", "ns", "workflows", body)
    k8s.api = FakeCustomObjectsApi([409])
    with pytest.raises(AlreadyExists):
        k8s.create("ns", body)
    k8s.api = FakeCustomObjectsApi([404])
    assert k8s.get("ns", "w") is None
    k8s.api = FakeCustomObjectsApi([None])
    assert k8s.get("ns", "w") == {"metadata": {"name": "w"}}
    assert k8s.api.calls == [("argoproj.io", "v1alpha1", "ns", "workflows", "w")]
    k8s.api = FakeCustomObjectsApi([403])
    with pytest.raises(ClusterRunError, match="403"):
        k8s.get("ns", "w")


def test_cluster_check(run):
    """What `helm test` runs: a get answered 404 means the Workflows can be read; a 403 stops it."""
    lines = []
    fake = FakeWorkflows()
    cluster_check(fake, NAMESPACE, run.store, lines.append)
    assert lines == [
        f"ok: Argo Workflows is installed; Workflows in namespace {NAMESPACE} can be listed",
        f"ok: Workflows in namespace {NAMESPACE} can be read",
        f"ok: Workflows in namespace {NAMESPACE} can be created (dry run)",
        f"ok: store {run.store.uri} is reachable with these credentials "
        "(write permission is checked by the first write)",
    ]
    assert [b["metadata"]["generateName"] for b in fake.dry_runs] == ["esgd-cluster-check-"] and not fake.created
    assert schema_problems(fake.dry_runs[0]) == []
    for errors, message in (
        ([404], "Argo Workflows is not installed"),  # the list: no CRD
        ([403], "cannot list Workflows in namespace esgd: 403"),
        ([None, None, 403], "cannot create Workflow esgd-cluster-check-: 403"),  # may read, may not create
    ):
        api = FakeCustomObjectsApi(errors)
        with pytest.raises(ClusterRunError, match=message):
            cluster_check(KubernetesWorkflows(api, sleep=lambda s: None, log=lines.append), NAMESPACE)
    assert api.calls[-1][-1] == ("dry_run", "All")  # the create was a dry run: nothing was made


def test_controller_cli_creates_then_resumes_a_run(tmp_path, monkeypatch, capsys):
    """`esgd controller SPEC --store ... --settings ...` drives the run to its end and prints its
    URI; `esgd controller RUN_URI` later finds it complete and submits nothing."""
    import esgd.controller.argo as argo
    from esgd.cli.main import main

    fakes = []
    monkeypatch.setattr(argo, "KubernetesWorkflows", lambda **_: fakes.append(FakeWorkflows()) or fakes[-1])
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "settings.yaml").write_text(f"namespace: {NAMESPACE}\npollSeconds: 0.01\n")
    common = ["--settings", str(tmp_path / "settings.yaml")]
    assert (
        main(
            ["controller", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "store"), "--run-id", "cli", *common]
        )
        == 0
    )
    uri = capsys.readouterr().out.strip()
    assert uri.endswith("/runs/cli") and created_names(fakes[0]) == ["cli-g0000-a0", "cli-g0001-a0", "cli-final-a0"]
    assert main(["controller", uri, *common]) == 0
    assert fakes[1].created == [] and "run cli is complete" in capsys.readouterr().err


RESUME_WITHOUT_TORCH = """
import sys
import esgd.controller.argo as argo

class NothingToSubmit:
    def __init__(self, **settings):
        pass

    def installed(self, namespace):
        pass

    def get(self, namespace, name):
        return None

    def create(self, namespace, body, dry_run=False):
        raise AssertionError("a finished run submits nothing")

argo.KubernetesWorkflows = NothingToSubmit
from esgd.cli.main import main
code = main(["controller", sys.argv[1], "--namespace", "esgd"])
print("torch" in sys.modules, code)
"""


def test_the_controller_resumes_a_run_by_uri_without_torch(run):
    """`esgd controller RUN_URI` (what a restarted launcher runs) needs neither torch nor the task."""
    controller(FakeWorkflows(), run).drive()
    done = subprocess.run(
        [sys.executable, "-c", RESUME_WITHOUT_TORCH, run.uri], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split()[-2:] == ["False", "0"], done.stdout + done.stderr
    assert "run tiny-run is complete" in done.stderr


def test_the_controller_starts_a_run_from_a_spec_without_torch_or_its_task(tmp_path):
    """`esgd controller SPEC` creates the run without loading the task (on CIFAR-10 that would load
    the training set into the controller pod): the first pod checks it, and its refusal stops the run.
    The controller runs as bench/controller_memory.py runs it: a fresh process, a stub Kubernetes API
    whose Workflows fail in their first pod with exit code 2."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from controller_memory import CONTROLLER

    (tmp_path / "spec.yaml").write_text(SPEC)
    store = tmp_path / "store"
    args = ["controller", str(tmp_path / "spec.yaml"), "--store", str(store), "--run-id", "r"]
    done = subprocess.run([sys.executable, "-c", CONTROLLER, *args], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("torch imported: False"), done.stdout + done.stderr
    assert "esgd: run stopped: r-g0000-a0 Failed: init: Error (exit code 2) (bad input: not retried)" in done.stderr
    assert (store / "runs" / "r" / "spec.yaml").is_file()  # created, frozen: the same command resumes it


def test_a_task_the_first_pod_refuses_stops_the_run_with_its_message(tmp_path, monkeypatch, capsys):
    """Through the Argo emulator: the init pod checks the task (esgd.worker.preflight), exits 2
    naming what is wrong, and the controller stops the run with that line after one attempt."""
    import esgd.controller.argo as argo
    from esgd.cli.main import main

    fakes = []
    monkeypatch.setattr(argo, "KubernetesWorkflows", lambda **_: fakes.append(FakeWorkflows()) or fakes[-1])
    (tmp_path / "spec.yaml").write_text(SPEC.replace("task_args: {hidden: 8}", "task_args: {hidden: 8, width: 3}"))
    (tmp_path / "settings.yaml").write_text(f"namespace: {NAMESPACE}\npollSeconds: 0.01\n")
    args = ["controller", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "store")]
    args += ["--settings", str(tmp_path / "settings.yaml")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "esgd: run stopped:" in err
        and "refused its task_args: task() got an unexpected keyword argument 'width'" in err
    )
    assert created_names(fakes[0]) == [created_names(fakes[0])[0]] and fakes[0].commands[0][1] == "init"


def failed_pod(code: str, message: str) -> tuple[str, str, dict]:
    """A scripted outcome: the Workflow failed because one pod exited with `code`."""
    node = {
        "type": "Pod",
        "phase": "Failed",
        "displayName": "train-m0-1",
        "message": message,
        "outputs": {"exitCode": code},
    }
    return "Failed", "child 'train-m0-1' failed", {"p": node}


def test_a_transient_failure_is_tried_again_after_the_pods_back_off(run):
    """Pods that exited 75 (a store that could not be reached, past their own retries) fail the
    Workflow without stopping the run: the next attempt comes after retry.backoff, then doubled."""
    unreachable = failed_pod("75", "Error (exit code 75): esgd-worker: error: cannot reach the S3 endpoint (transient)")
    fake, lines = FakeWorkflows({names.workflow_name(run.id, "g0000", a): unreachable for a in (0, 1)}), []
    ctl = controller(fake, run, log=lines.append)
    ctl.drive()
    assert created_names(fake)[:3] == ["tiny-run-g0000-a0", "tiny-run-g0000-a1", "tiny-run-g0000-a2"]
    assert [s for s in ctl.sleeps if s != 5.0] == [30.0, 60.0]  # between the attempts (the rest: polls)
    assert any(line.endswith("on to the next attempt (2 left) in 30 s") for line in lines)
    assert run.store.exists(keys.final_manifest(run.id))


def test_attempts_that_failed_on_transient_trouble_alone_are_not_counted(run):
    """With outageSeconds of patience, five Workflows in a row whose pods all exited 75 (a store
    outage longer than the pods' own retries) use up none of the three attempts; the waits between
    them follow the pods' back-off, and the run ends as if nothing had happened."""
    unreachable = failed_pod("75", "Error (exit code 75): esgd-worker: error: cannot reach the S3 endpoint (transient)")
    fake, lines = FakeWorkflows({names.workflow_name(run.id, "g0001", a): unreachable for a in range(5)}), []
    ctl = controller(fake, run, log=lines.append, patience=1800)
    ctl.drive()
    assert [n for n in created_names(fake) if "g0001" in n][-1] == "tiny-run-g0001-a5"
    assert [s for s in ctl.sleeps if s != 5.0] == [30.0, 60.0, 120.0, 240.0, 480.0]
    assert sum("not counted as a failed attempt" in line for line in lines) == 5
    assert run.store.exists(keys.final_manifest(run.id))


def test_patience_with_transient_trouble_ends(run):
    """An outage longer than outageSeconds: the waits add up to it, then the attempts count, and
    the run stops with exit code 75 (transient: running it again later resumes it)."""
    from esgd.core.errors import RunUnavailable

    unreachable = failed_pod("75", "Error (exit code 75): esgd-worker: error: cannot reach the S3 endpoint (transient)")
    fake = FakeWorkflows({names.workflow_name(run.id, "g0000", a): unreachable for a in range(20)})
    ctl = controller(fake, run, patience=100)
    with pytest.raises(RunUnavailable, match=r"generation 0 failed 3 time\(s\)"):
        ctl.drive()
    assert [s for s in ctl.sleeps if s != 5.0] == [30.0, 60.0, 10.0, 30.0, 60.0]  # 100 s of patience, then 3 attempts


def test_a_run_stopped_by_transient_trouble_exits_75(run):
    from esgd.core.errors import RunUnavailable, TransientError

    unreachable = failed_pod("75", "Error (exit code 75): esgd-worker: error: cannot reach the S3 endpoint (transient)")
    fake = FakeWorkflows({names.workflow_name(run.id, "g0000", a): unreachable for a in range(3)})
    with pytest.raises(RunUnavailable, match=r"generation 0 failed 3 time\(s\)") as error:
        controller(fake, run).drive()
    assert isinstance(error.value, TransientError)  # the command lines exit 75 on it


def test_a_restarted_controller_tries_again_where_an_earlier_start_gave_up(run):
    """An earlier start used up its attempts on generation 0 (they failed, their Workflows are kept
    for days): a new start waits for none of them and submits the next attempt."""
    failing = {names.workflow_name(run.id, "g0000", a): ("Failed", "node shutdown") for a in range(3)}
    fake = FakeWorkflows(failing)
    with pytest.raises(RunStopped, match=r"failed 3 time\(s\)"):
        controller(fake, run).drive()
    lines = []
    controller(fake, RunRef.open(run.uri), log=lines.append).drive()  # the outage is over
    assert created_names(fake)[3] == "tiny-run-g0000-a3"
    assert "found tiny-run-g0000-a0 from an earlier start, Failed: node shutdown; trying again" in lines
    assert run.store.exists(keys.final_manifest(run.id))


def test_an_api_that_stays_unavailable_is_transient_trouble():
    from esgd.core.errors import TransientError

    sleeps, lines = [], []
    k8s = KubernetesWorkflows(
        FakeCustomObjectsApi([503] * 100), retry_seconds=100, sleep=sleeps.append, log=lines.append
    )
    with pytest.raises(ClusterUnavailable, match="the Kubernetes API answered 503 scripted, for 100 s") as error:
        k8s.get("ns", "w")
    assert isinstance(error.value, TransientError)
    assert sleeps == [1, 2, 4, 8, 16, 30, 30, 9]  # exponential back-off, capped, up to the deadline
    assert lines[0] == "the Kubernetes API answered 503 scripted; trying again in 1 s (0 of 100 s)"
    assert len(lines) == len(sleeps)  # one line per wait


def test_the_api_answering_503_for_a_minute_while_the_controller_waits(run):
    """The Kubernetes API answers 503 for 60 s (an API server restart) in the middle of a run:
    the controller waits it out, one line per wait, and the run ends as if nothing happened."""
    clock = {"now": 0.0}

    def sleep(seconds):
        clock["now"] += seconds

    class Api:  # the CustomObjectsApi surface, in front of the in-memory Argo
        def __init__(self, argo):
            self.argo, self.outage = argo, None

        def _unavailable(self):
            if self.outage is None and self.argo.created:  # starts once a Workflow runs
                self.outage = clock["now"]
            if self.outage is not None and clock["now"] - self.outage < 60:
                raise ApiException(status=503, reason="Service Unavailable")

        def get_namespaced_custom_object(self, group, version, namespace, plural, name, _request_timeout):
            self._unavailable()
            found = self.argo.get(namespace, name)
            if found is None:
                raise ApiException(status=404, reason="Not Found")
            return found

        def create_namespaced_custom_object(self, group, version, namespace, plural, body, _request_timeout):
            self._unavailable()
            return self.argo.create(namespace, body)

    argo, lines = FakeWorkflows(), []
    k8s = KubernetesWorkflows(Api(argo), retry_seconds=1800, sleep=sleep, log=lines.append)
    engine = ArgoEngine(k8s, parse_settings({"pollSeconds": 5}), NAMESPACE, sleep=sleep, log=lines.append)
    Driver(run, engine, lines.append, sleep=sleep).drive()
    waits = [line for line in lines if line.startswith("the Kubernetes API answered 503")]
    assert len(waits) >= 5 and "trying again" in waits[0]
    assert created_names(argo) == ["tiny-run-g0000-a0", "tiny-run-g0001-a0", "tiny-run-final-a0"]
    assert argo.commands == expected_commands(run, [0, 1, None])


def test_a_workflow_that_never_gets_a_status_stops_the_wait_with_a_question(run):
    """Argo not installed in a way that watches this namespace: the Workflow is created but never
    gets a status. The wait ends after statusTimeoutSeconds with a line that says what to check."""

    class Unwatched(FakeWorkflows):
        def get(self, namespace, name):
            found = self.objects.get((namespace, name))
            return None if found is None else {k: v for k, v in found.items() if k != "status"}

    driver = controller(Unwatched(), run, statusTimeoutSeconds=120)
    with pytest.raises(ClusterUnavailable, match=r"tiny-run-g0000-a0 has no status after 2 min: is Argo's workflow"):
        driver.drive()
    assert sum(driver.sleeps) == 120


def test_the_controller_cli_without_argo_says_so_and_creates_nothing(tmp_path, monkeypatch, capsys):
    """No workflows.argoproj.io CRD: one line, exit 2, no run in the store, nothing submitted."""
    import esgd.controller.argo as argo
    from esgd.cli.main import main

    api = FakeCustomObjectsApi([404])
    monkeypatch.setattr(argo, "KubernetesWorkflows", lambda **kw: KubernetesWorkflows(api, **kw))
    (tmp_path / "spec.yaml").write_text(SPEC)
    code = main(["controller", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "store"), "--namespace", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Argo Workflows is not installed" in err, err
    assert not (tmp_path / "store").exists()
    assert [call[0:4] for call in api.calls] == [("argoproj.io", "v1alpha1", "x", "workflows")]  # one list


def test_durations_are_read_as_argo_writes_them():
    from esgd.controller.argo import duration
    from esgd.core.errors import InputError

    assert [duration(d) for d in ("30s", "10m", "1h30m", "250ms", "45")] == [30, 600, 5400, 0.25, 45]
    with pytest.raises(InputError, match="not a duration"):
        duration("ten minutes")


def test_a_store_outage_between_phases_is_ridden_out_by_the_driver(run, monkeypatch):
    """The store cannot be reached just when the driver reads whether generation 0 is committed
    (after its Workflow succeeded): the driver waits it out, one line per wait, instead of exiting."""
    from esgd.store.base import StoreUnavailable

    exists, outage = run.store.exists, {"left": 3}

    def flaky(key):
        if key.endswith(plan.generation_marker(run.id, 0).rsplit("/", 1)[-1]) and outage["left"]:
            if exists(key):  # committed, but the read fails three times
                outage["left"] -= 1
                raise StoreUnavailable("cannot reach the S3 endpoint (scripted)")
        return exists(key)

    monkeypatch.setattr(run.store, "exists", flaky)
    lines = []
    ctl = controller(FakeWorkflows(), run, log=lines.append, patience=60)
    ctl.drive()
    waits = [line for line in lines if "cannot reach the S3 endpoint (scripted); trying again" in line]
    assert len(waits) == 3 and waits[0].startswith("reading generation 0: ")
    assert [s for s in ctl.sleeps if s != 5.0] == [1, 2, 4]
    assert run.store.exists(keys.final_manifest(run.id))
    outage["left"] = 3
    with pytest.raises(StoreUnavailable):  # no patience: the outage ends the command (exit 75)
        controller(FakeWorkflows(), run).drive()


def test_compressed_nodes_are_read_as_argo_writes_them():
    """A big Workflow's nodes come gzip-compressed and base64-encoded in status.compressedNodes: a
    pod that refused its input is still found there."""
    import base64
    import gzip
    import json

    from esgd.controller.argo import exit_code, failed_pods

    _, _, nodes = failed_pod("2", "Error (exit code 2): esgd-worker: error: bad")
    packed = base64.b64encode(gzip.compress(json.dumps(nodes).encode())).decode()
    workflow = {"status": {"phase": "Failed", "compressedNodes": packed}}
    assert [exit_code(pod) for pod in failed_pods(workflow)] == ["2"]
    assert failure_reason(workflow) == "train-m0-1: Error (exit code 2): esgd-worker: error: bad"
