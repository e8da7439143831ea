"""An Argo Workflows emulator for fault-injection tests: the controller's Kubernetes calls
(esgd.controller.argo.Workflows: `create`, `get`, `installed`) in memory, and every created
Workflow executed as Argo would execute it, with real pods: each is a subprocess running the
container's command and args (whatever the compiled Workflow says), with the environment its
`envFrom` Secret would give it.

    argo = ArgoEmulator(pod_env=server.env, on_pod=hook)   # hook(workflow, task, try_number, popen)
    ArgoEngine(argo, settings, "esgd").run_phase(...)      # or a Driver, as `esgd controller` builds it
    argo.commands                                          # every pod's argv, in the order they started
    argo.close()                                           # kill what still runs, join every thread

What it does as Argo does (what esgd.controller.argo reads back):
- the DAG's tasks in dependency order (`depends: "a && b"`), the ready ones at once, at most
  `capacity` pods at a time (the cluster's size) and at most the Workflow's `parallelism`; after a
  task has failed for good nothing new starts (failFast), the running ones finish;
- `{{workflow.parameters.X}}`, `{{inputs.parameters.X}}` and `{{retries}}` substituted;
- the template's `retryStrategy`: `limit`, `retryPolicy`, `expression` (`||` and `&&` of
  `lastRetry.<field> ==|!=|matches "<text>"`), `backoff` (duration, factor, cap);
- the template's `activeDeadlineSeconds` (the pod is killed: "Pod was active on the node longer
  than the specified deadline") and the Workflow's (running pods are killed, the Workflow fails);
- status: `phase` Pending -> Running -> Succeeded/Failed, `message`, and `nodes`: a "Retry" node
  per task (children: its tries) and a "Pod" node per try, phase Succeeded/Failed/Error, message
  `Error (exit code N): <last lines of output>` (terminationMessagePolicy FallbackToLogsOnError)
  and `outputs.exitCode`; a pod killed from outside (`on_pod` may kill it: preemption) is phase
  Error with message "pod deleted", and is retried like any other try.
Faults: `on_pod` (called as each pod starts), `delete(name)` (the Workflow vanishes, its pods are
killed), `close()` (everything stops). `deadline_s` bounds everything: past it `get` raises, so a
controller waiting on a Workflow that never ends fails instead of hanging the test run.
"""

import copy
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from esgd.controller.argo import AlreadyExists, duration

POLL = 0.2  # seconds between looks at a running pod or DAG
TERMINATION_LINES, TERMINATION_BYTES = 80, 2048  # what Kubernetes keeps of a log as termination message
POD_DEADLINE = "Pod was active on the node longer than the specified deadline"
WORKFLOW_DEADLINE = "Max duration limit exceeded"
POLICIES = {"Always": ("Failed", "Error"), "OnFailure": ("Failed",), "OnError": ("Error",)}
COMPARISON = re.compile(r'^lastRetry\.(\w+)\s*(==|!=|matches)\s*"((?:[^"\\]|\\.)*)"$')


def holds(expression: str | None, last: dict[str, str]) -> bool:
    """A retryStrategy expression about the last try (`lastRetry.status`, `.exitCode`, `.message`):
    `||` of `&&` of comparisons; `matches` is a regular-expression search. No expression: true."""

    def compare(term: str) -> bool:
        found = COMPARISON.match(term.strip())
        assert found, f"the emulator cannot evaluate {term.strip()!r} of the retry expression {expression!r}"
        field, op, text = found.group(1), found.group(2), found.group(3).replace('\\"', '"')
        value = last[field]
        return bool(re.search(text, value)) if op == "matches" else (value == text) == (op == "==")

    return not expression or any(all(map(compare, clause.split("&&"))) for clause in expression.split("||"))


class Retries:
    """A template's retryStrategy (none: one try)."""

    def __init__(self, strategy: dict | None):
        self.present = strategy is not None
        strategy = strategy or {"limit": "0"}
        self.limit = int(strategy["limit"]) if "limit" in strategy else None  # absent: retry forever
        self.phases = POLICIES[strategy.get("retryPolicy", "OnFailure")]
        self.expression = strategy.get("expression")
        backoff = strategy.get("backoff") or {}
        self.first = duration(str(backoff.get("duration", "0")))
        self.factor = float(backoff.get("factor", 1))
        self.cap = duration(str(backoff["cap"])) if "cap" in backoff else float("inf")

    def again(self, tries: int, last: dict) -> bool:
        """Whether to try again after `tries` tries, the last of them the Pod node `last`."""
        if self.limit is not None and tries > self.limit:
            return False
        exit_code = (last.get("outputs") or {}).get("exitCode", "-1")  # Argo's value when there is none
        fields = {"status": last["phase"], "exitCode": exit_code, "message": last.get("message", "")}
        return last["phase"] in self.phases and holds(self.expression, fields)

    def delay(self, tries: int) -> float:
        """Seconds before the next try, after `tries` failed ones."""
        return min(self.first * self.factor ** (tries - 1), self.cap)


class Execution:
    """One Workflow being run: its stored object, its stop signal, its running pods."""

    def __init__(self, body: dict, capacity: int):
        self.object = body
        self.name = body["metadata"]["name"]
        self.stopped = threading.Event()  # deleted, past its deadline, or the emulator closed
        self.why = ""  # the message of pods killed by the stop
        self.pods: set[subprocess.Popen] = set()
        parallelism = body["spec"].get("parallelism") or capacity
        self.slots = threading.BoundedSemaphore(min(capacity, int(parallelism)))
        deadline = body["spec"].get("activeDeadlineSeconds")
        self.ends = time.monotonic() + duration(str(deadline)) if deadline else float("inf")
        self.thread: threading.Thread | None = None

    @property
    def nodes(self) -> dict:
        return self.object["status"]["nodes"]

    def stop(self, why: str) -> None:
        self.why = self.why or why
        self.stopped.set()
        for pod in list(self.pods):
            pod.kill()


class ArgoEmulator:
    """Argo Workflows on a small cluster of subprocesses (the module's docstring says what it does)."""

    def __init__(
        self,
        pod_env: dict[str, str],
        capacity: int = 2,
        time_scale: float = 1.0,
        on_pod: Callable[[str, str, int, subprocess.Popen], None] | None = None,
        deadline_s: float = 600,
    ):
        """`pod_env`: what the pods' envFrom Secret holds (AWS_*, ESGD_S3_*): the only store
        settings a pod gets, on top of this process's environment without its own AWS_* and
        ESGD_S3_* variables; the virtualenv's bin comes first on PATH (the image's `esgd-worker`).
        `capacity`: pods that run at once. `time_scale`: multiplies every retry back-off."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ESGD_S3_"))}
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        self.pod_env = {**inherited, **pod_env, "PATH": path}
        self.capacity, self.time_scale, self.on_pod = capacity, time_scale, on_pod
        self.deadline = time.monotonic() + deadline_s
        self.lock = threading.Lock()
        self.runs: dict[tuple[str, str], Execution] = {}  # the Workflows that exist, by (namespace, name)
        self.executions: list[Execution] = []  # every Workflow ever created, deleted ones too
        self.created: list[dict] = []  # every body given to create, in order (refused ones too)
        self.commands: list[list[str]] = []  # every pod's argv, in the order they started
        self.errors: list[str] = []  # failures of the emulator itself (raised again by close)
        self.closed = False

    # The calls of esgd.controller.argo.Workflows -----------------------------------------------

    def installed(self, namespace: str) -> None:
        """Argo is installed here."""

    def create(self, namespace: str, body: dict, dry_run: bool = False) -> dict:
        """Store the Workflow and start running it (dry run: only answer as the API server would)."""
        body = copy.deepcopy(body)
        if dry_run:
            return body
        name = body["metadata"]["name"]
        with self.lock:
            self.created.append(copy.deepcopy(body))
            if (namespace, name) in self.runs:
                raise AlreadyExists(name)
            assert not self.closed, "create after close"
            body["status"] = {"phase": "Pending", "nodes": {}}
            run = self.runs[namespace, name] = Execution(body, self.capacity)
            self.executions.append(run)
            run.thread = threading.Thread(target=self._execute, args=(run,), name=f"argo {name}", daemon=True)
            run.thread.start()
            return copy.deepcopy(body)

    def get(self, namespace: str, name: str) -> dict | None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"the Argo emulator's deadline passed while {name} was read")
        with self.lock:
            run = self.runs.get((namespace, name))
            return None if run is None else copy.deepcopy(run.object)

    # Faults and the end ------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        """The Workflow vanishes (`kubectl delete workflow`): its pods are killed, `get` says None."""
        with self.lock:
            runs = [self.runs.pop(key) for key in list(self.runs) if key[1] == name]
        for run in runs:
            run.stop("pod deleted")

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every Workflow has ended (at most until the emulator's deadline)."""
        ends = min(self.deadline, time.monotonic() + timeout) if timeout is not None else self.deadline
        for run in list(self.executions):
            run.thread.join(max(0.0, ends - time.monotonic()))
            assert not run.thread.is_alive(), f"{run.name} still runs"

    def close(self) -> None:
        """Stop every Workflow (its pods are killed), join the threads, raise the emulator's own errors."""
        with self.lock:
            self.closed = True
            runs = list(self.executions)
        for run in runs:
            run.stop("pod deleted")
        for run in runs:
            run.thread.join(60)
        alive = [run.name for run in runs if run.thread.is_alive()]
        assert not alive and not self.errors, f"the Argo emulator failed: {self.errors}; still running: {alive}"

    # Execution --------------------------------------------------------------------------------

    def _execute(self, run: Execution) -> None:
        try:
            phase, message = self._dag(run)
        except Exception as error:  # noqa: BLE001 - a bug or a Workflow the emulator cannot run: the test must see it
            self.errors.append(f"{run.name}: {type(error).__name__}: {error}")
            phase, message = "Error", f"emulator: {error}"
        with self.lock:
            run.object["status"].update(phase=phase, message=message)
            if run.name in run.nodes:
                run.nodes[run.name]["phase"] = phase

    def _dag(self, run: Execution) -> tuple[str, str]:
        """Run the entrypoint's DAG; (the Workflow's phase, its message)."""
        spec = run.object["spec"]
        templates = {t["name"]: t for t in spec["templates"]}
        workflow_parameters = {p["name"]: p.get("value") for p in spec.get("arguments", {}).get("parameters", [])}
        tasks = {t["name"]: t for t in templates[spec["entrypoint"]]["dag"]["tasks"]}
        with self.lock:
            run.object["status"]["phase"] = "Running"
            run.nodes[run.name] = {"id": run.name, "name": run.name, "displayName": run.name, "type": "DAG",
                                   "templateName": spec["entrypoint"], "phase": "Running", "children": []}  # fmt: skip
        succeeded, failed, running = set(), [], {}
        with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
            while True:
                if not failed and not run.stopped.is_set():  # failFast: nothing new after a failure
                    for name, task in tasks.items():
                        after = set(filter(None, map(str.strip, (task.get("depends") or "").split("&&"))))
                        assert after <= set(tasks), f"{name} depends on unknown tasks: {after - set(tasks)}"
                        if name not in succeeded and name not in running and after <= succeeded:
                            template = templates[task["template"]]
                            running[name] = pool.submit(self._task, run, task, template, workflow_parameters)
                if not running:
                    break
                done, _ = wait(running.values(), timeout=POLL, return_when=FIRST_COMPLETED)
                for name in [n for n, future in running.items() if future in done]:
                    (succeeded.add if running.pop(name).result() else failed.append)(name)
                if time.monotonic() > run.ends:
                    run.stop(WORKFLOW_DEADLINE)
        if run.stopped.is_set():
            return "Failed", run.why
        if failed:
            return "Failed", f"child '{run.name}.{failed[0]}' failed"
        return "Succeeded", ""

    def _task(self, run: Execution, task: dict, template: dict, workflow_parameters: dict) -> bool:
        """Every try of one task, as its retryStrategy says; whether it succeeded."""
        inputs = {p["name"]: p.get("value") for p in (template.get("inputs") or {}).get("parameters", [])}
        inputs.update({p["name"]: p["value"] for p in (task.get("arguments") or {}).get("parameters", [])})
        values = {f"workflow.parameters.{k}": v for k, v in workflow_parameters.items()}
        values.update({f"inputs.parameters.{k}": v for k, v in inputs.items()})
        retries = Retries(template.get("retryStrategy"))
        node_id = f"{run.name}.{task['name']}"
        if retries.present:
            self._node(run, node_id, task["name"], "Retry", template["name"], run.name)
        tries = 0
        while True:
            pod_id, parent = (f"{node_id}({tries})", node_id) if retries.present else (node_id, run.name)
            pod = self._pod(run, pod_id, parent, task["name"], template, {**values, "retries": str(tries)}, tries)
            tries += 1
            if pod["phase"] == "Succeeded" or run.stopped.is_set() or not retries.again(tries, pod):
                break
            if run.stopped.wait(retries.delay(tries) * self.time_scale):
                break
        if retries.present:
            exhausted = retries.limit is not None and tries > retries.limit
            message = "No more retries left" if exhausted else pod.get("message", "")
            with self.lock:
                run.nodes[node_id].update(phase=pod["phase"], message="" if pod["phase"] == "Succeeded" else message)
        return pod["phase"] == "Succeeded"

    def _node(self, run: Execution, node_id: str, display: str, kind: str, template: str, parent: str) -> None:
        with self.lock:
            run.nodes[node_id] = {"id": node_id, "name": node_id, "displayName": display, "type": kind,
                                  "templateName": template, "phase": "Running", "children": []}  # fmt: skip
            run.nodes[parent]["children"].append(node_id)

    def _pod(
        self, run: Execution, node_id: str, parent: str, task: str, template: dict, values: dict, try_number: int
    ) -> dict:
        """One try: the container's command as a subprocess; its Pod node once it has ended."""
        container = template.get("container")
        assert container is not None, f"the emulator runs container templates only, not {template['name']}"
        argv = [substitute(a, values) for a in container.get("command", []) + container.get("args", [])]
        deadline = template.get("activeDeadlineSeconds")
        limit = duration(substitute(str(deadline), values)) if deadline is not None else float("inf")
        display = f"{task}({try_number})" if parent != run.name else task
        with run.slots:
            if run.stopped.is_set():
                return {"phase": "Failed", "message": run.why}
            self._node(run, node_id, display, "Pod", template["name"], parent)
            with self.lock:
                self.commands.append(argv)
            pod = subprocess.Popen(argv, env=self.pod_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            run.pods.add(pod)
            killed = ""  # why the emulator killed it, if it did
            try:
                if self.on_pod is not None:
                    self.on_pod(run.name, task, try_number, pod)
                started = time.monotonic()
                while True:
                    try:
                        output = pod.communicate(timeout=POLL)[0]
                        break
                    except subprocess.TimeoutExpired:
                        if run.stopped.is_set() or time.monotonic() - started > limit:
                            killed = killed or (run.why if run.stopped.is_set() else POD_DEADLINE)
                            pod.kill()
            finally:
                run.pods.discard(pod)
                if pod.poll() is None:
                    pod.kill()
                    pod.wait()
            if not killed and pod.returncode < 0 and run.stopped.is_set():  # it died of the stop's kill
                killed = run.why
        node = ended(pod.returncode, output.decode(errors="replace"), killed)
        with self.lock:
            run.nodes[node_id].update(node)
            return dict(run.nodes[node_id])


def substitute(text: str, values: dict[str, str]) -> str:
    """`{{name}}` references replaced by their values; one the emulator does not know is an error."""

    def value(found: re.Match) -> str:
        name = found.group(1).strip()
        assert name in values, f"the emulator has no value for {found.group(0)} in {text!r}"
        return str(values[name])

    return re.sub(r"\{\{([^}]*)\}\}", value, text)


def ended(returncode: int, output: str, killed: str) -> dict:
    """A Pod node's outcome: killed by the emulator (`killed` says why), killed from outside (a
    signal the pod did not send itself: "pod deleted"), or its exit code and termination message."""
    if killed:
        return {"phase": "Failed", "message": killed}
    if returncode < 0:
        return {"phase": "Error", "message": "pod deleted"}
    if returncode == 0:
        return {"phase": "Succeeded", "message": "", "outputs": {"exitCode": "0"}}
    tail = "\n".join(output.encode()[-TERMINATION_BYTES:].decode(errors="replace").splitlines()[-TERMINATION_LINES:])
    message = f"Error (exit code {returncode})" + (f": {tail}" if tail.strip() else "")
    return {"phase": "Failed", "message": message, "outputs": {"exitCode": str(returncode)}}
