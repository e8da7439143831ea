"""The Argo Workflows built with Hera: golden YAML, Argo's schema, Hera's models, and the DAG being
exactly the plan's worker commands.

Golden files are rewritten only on request: `ESGD_REGEN_GOLDEN=1 pytest tests/test_workflows.py`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esgd.cli.main import main as esgd_main
from esgd.cli.main import parser as esgd_parser
from esgd.core import plan
from esgd.core.errors import InputError
from esgd.core.plan import DEVICE_COMMANDS
from esgd.core.spec import SpecError, load_spec
from esgd.workflows import names
from esgd.workflows.check import hera_problems
from esgd.workflows.generation import device_args, phase_workflow
from esgd.workflows.launcher import SETTINGS_PATH, SPEC_PATH, launcher_workflow
from esgd.workflows.settings import ClusterSettings, load_settings, parse_settings

from argo_schema import schema_problems

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
REGEN = os.environ.get("ESGD_REGEN_GOLDEN") == "1"
STORE = "s3://esgd-bucket/runs-prefix"
RUN_ID = "golden-run"
RUN_URI = f"{STORE}/runs/{RUN_ID}"


def golden_spec():
    return load_spec((GOLDEN / "spec.yaml").read_text())


def golden_settings():
    return load_settings(GOLDEN / "settings.yaml")


def check(workflow: dict) -> None:
    """A generated Workflow passes Hera's models (every key known) and Argo's schema."""
    assert hera_problems(workflow) == []
    assert schema_problems(workflow) == []


def substituted(workflow: dict) -> list[tuple[str, list[str], list[str]]]:
    """(task, command + args with every parameter filled in, dependencies) for each DAG task."""
    spec = workflow["spec"]
    params = {p["name"]: p["value"] for p in spec["arguments"]["parameters"]}
    templates = {t["name"]: t for t in spec["templates"]}
    dag = templates[spec["entrypoint"]]["dag"]["tasks"]
    out = []
    for task in dag:
        container = templates[task["template"]]["container"]
        inputs = {p["name"]: p["value"] for p in task.get("arguments", {}).get("parameters", [])}
        declared = [p["name"] for p in templates[task["template"]].get("inputs", {}).get("parameters", [])]
        assert sorted(declared) == sorted(inputs)

        def fill(arg: str, inputs: dict = inputs) -> str:
            arg = re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda mm: params[mm.group(1)], arg)
            return re.sub(r"\{\{inputs\.parameters\.([\w-]+)\}\}", lambda mm: inputs[mm.group(1)], arg)

        argv = [fill(a) for a in container["command"] + container["args"]]
        assert not any("{{" in a for a in argv), argv
        deps = task["depends"].split(" && ") if task.get("depends") else []
        out.append((task["name"], argv, deps))
    return out


CASES = {"generation-0": 0, "generation-1": 1, "final": None}


def phase_of(spec, settings, generation: int | None) -> plan.Phase:
    """A phase of the plan, cut into steps as these cluster settings say (pack, shard)."""
    if generation is None:
        return plan.final(spec, settings.pack)
    return plan.generation(spec, generation, settings.pack, settings.shard)


@pytest.mark.parametrize("case", [*CASES, "launcher"])
def test_golden_yaml(case):
    spec, settings = golden_spec(), golden_settings()
    if case == "launcher":
        workflow = launcher_workflow((GOLDEN / "spec.yaml").read_text(), settings, STORE, RUN_ID)
    else:
        workflow = phase_workflow(phase_of(spec, settings, CASES[case]), settings, RUN_URI, RUN_ID)
    text = workflow.to_yaml()
    path = GOLDEN / f"{case}.yaml"
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(f"{path.name} is missing: run ESGD_REGEN_GOLDEN=1 pytest {Path(__file__).name}")
        path.write_text(text)
    assert text == path.read_text(), (
        f"{path.name} changed: review, then ESGD_REGEN_GOLDEN=1 pytest {Path(__file__).name}"
    )
    check(yaml.safe_load(text))


def test_golden_files_pass_the_checks():
    """The committed golden YAML itself is valid, not only what the builder makes today."""
    for path in sorted(GOLDEN.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and data.get("kind") == "Workflow":
            check(data)


SPEC_VARIANTS = [
    [],
    ["mode=population"],
    ["mode=single"],
    ["mode=no-evolution", "finetune.epochs=2"],
    ["mode=pbt", "pbt.quantile=0.5", "finetune.epochs=1"],  # PBT's exploit and explore live in the select step
    ["evolution.rounds=3", "population.mu=5", "population.offspring=7"],
]
SETTINGS_VARIANTS = [
    {},
    {
        "pack": 3,
        "shard": 1,
        "gpu": {"gpus": 0},
        "podGcStrategy": None,
        "ttlAfterSuccess": None,
        "ttlAfterFailure": None,
    },
    {"pack": 100, "shard": 100, "gpu": {"gpus": 2, "runtimeClassName": "nvidia"}, "gpuResource": "amd.com/gpu"},
]


def every_workflow(spec, settings):
    for phase in plan.phases(spec, settings.pack, settings.shard):
        yield phase, phase_workflow(phase, settings, RUN_URI, RUN_ID).to_dict()


@pytest.mark.parametrize("overrides", SPEC_VARIANTS, ids=lambda o: ",".join(o) or "golden")
@pytest.mark.parametrize("raw", SETTINGS_VARIANTS, ids=["defaults", "cpu-only", "big-packs"])
def test_dag_runs_exactly_the_plan(overrides, raw):
    """Every task's pod runs `esgd-worker <Step.argv>` of the plan's step, stages in order (each
    task depends on every task of the stage before), init first in generation 0, the final stages
    in the final Workflow; every Workflow passes both checks."""
    spec = load_spec((GOLDEN / "spec.yaml").read_text(), overrides)
    settings = parse_settings(raw)
    seen = []
    for phase, workflow in every_workflow(spec, settings):
        check(workflow)
        seen.append(phase.generation)
        tasks = substituted(workflow)
        expected, previous, i = [], [], 0
        for stage in phase.stages:
            names_now = [t[0] for t in tasks[i : i + len(stage)]]
            for step, (name, _, deps) in zip(stage, tasks[i : i + len(stage)]):
                expected.append(["esgd-worker", *step.argv(RUN_URI), *device_args(settings, step)])
                assert sorted(deps) == sorted(previous), name
            previous, i = names_now, i + len(stage)
        assert [argv for _, argv, _ in tasks] == expected
        assert workflow["metadata"]["name"] == names.workflow_name(RUN_ID, phase.tag, 0)
        assert (phase.steps()[0].command == "init") == (phase.generation == 0)
    assert seen == [*range(spec.generations), None]


def test_only_ids_and_uris_pass_through_argo():
    """The run URI is the only Workflow parameter, task parameters are Step.options() values (numbers
    and ranges), and no artifacts or outputs exist: no blobs pass through Argo."""
    spec, settings = golden_spec(), golden_settings()
    for _, workflow in every_workflow(spec, settings):
        assert [p["name"] for p in workflow["spec"]["arguments"]["parameters"]] == ["run"]
        for template in workflow["spec"]["templates"]:
            assert "outputs" not in template and "artifacts" not in template.get("inputs", {})
            for param in template.get("inputs", {}).get("parameters", []):
                assert param["name"] in ("gen", "round", "members", "offspring")
        for _, argv, _ in substituted(workflow):
            for value in argv[4:-2][1::2]:  # the options' values; the last two: --device cpu|cuda
                assert re.fullmatch(r"\d+(\.\.\d+)?", value), value


def test_pods_follow_the_settings():
    spec, settings = golden_spec(), golden_settings()
    workflow = phase_workflow(phase_of(spec, settings, 0), settings, RUN_URI, RUN_ID).to_dict()
    wspec = workflow["spec"]
    assert workflow["metadata"]["namespace"] == "esgd"
    assert workflow["metadata"]["labels"]["team"] == "research"
    assert wspec["serviceAccountName"] == "esgd-workflow"
    assert wspec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert wspec["activeDeadlineSeconds"] == 21600 and wspec["parallelism"] == 8
    assert wspec["podGC"] == {"strategy": "OnPodSuccess", "deleteDelayDuration": "30m"}
    assert wspec["ttlStrategy"] == {"secondsAfterSuccess": 600, "secondsAfterFailure": 86400}
    assert wspec["securityContext"]["runAsNonRoot"] is True
    assert wspec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for template in (t for t in wspec["templates"] if "container" in t):
        container = template["container"]
        gpu = template["name"] in DEVICE_COMMANDS
        assert container["image"] == "registry.example.com/esgd:0.1.0"
        assert container["imagePullPolicy"] == "Always"
        assert container["envFrom"] == [{"secretRef": {"name": "esgd-s3"}}]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) == gpu
        assert template["nodeSelector"] == ({"pool": "gpu-spot"} if gpu else {"pool": "cpu"})
        assert ("priorityClassName" in template) == gpu
        assert template["activeDeadlineSeconds"] == "7200"  # settings.stepDeadlineSeconds
        assert container["args"][-2:] == ["--device", "cuda" if gpu else "cpu"]
        patch = json.loads(template["podSpecPatch"])
        assert ("runtimeClassName" in patch) == gpu
        (main,) = patch["containers"]  # the memory limit grows with each retry, up to twice the request
        most, base = (65536, 32768) if gpu else (16384, 8192)
        memory = "{{=sprig.min(" + f"{most}, (sprig.int(retries) + 1) * {base}" + ")}}Mi"
        assert main == {"name": "main", "resources": {"limits": {"memory": memory}}}
        retry = template["retryStrategy"]
        assert retry["limit"] == "4" and retry["retryPolicy"] == "Always"  # int-or-string: a string
        assert "node shutdown" in retry["expression"] and "pod deleted" in retry["expression"]
        assert retry["backoff"] == {"duration": "1m", "factor": "2", "cap": "15m"}


def test_cpu_only_pods_request_no_gpu():
    settings = parse_settings({"gpu": {"gpus": 0, "tolerations": []}})
    workflow = phase_workflow(phase_of(golden_spec(), settings, 1), settings, RUN_URI, RUN_ID).to_dict()
    for template in (t for t in workflow["spec"]["templates"] if "container" in t):
        assert set(template["container"]["resources"]["requests"]) == {"cpu", "memory"}
        assert "tolerations" not in template


def test_launcher_runs_the_controller_with_the_spec_and_settings():
    spec_text, settings = (GOLDEN / "spec.yaml").read_text(), golden_settings()
    workflow = launcher_workflow(spec_text, settings, STORE, RUN_ID).to_dict()
    check(workflow)
    assert workflow["metadata"]["generateName"].startswith(RUN_ID)
    (template,) = workflow["spec"]["templates"]
    assert workflow["spec"]["serviceAccountName"] == "esgd-controller"
    artifacts = {a["path"]: a["raw"]["data"] for a in template["inputs"]["artifacts"]}
    assert artifacts[SPEC_PATH] == spec_text
    assert load_settings_text(artifacts[SETTINGS_PATH]) == settings
    container = template["container"]
    args = esgd_parser().parse_args(container["args"])
    assert container["command"] == ["esgd"] and args.command == "controller"
    assert (args.target, args.settings, args.store, args.run_id) == (SPEC_PATH, SETTINGS_PATH, STORE, RUN_ID)
    assert "nvidia.com/gpu" not in container["resources"]["requests"]


def load_settings_text(text: str) -> ClusterSettings:
    return parse_settings(yaml.safe_load(text))


def test_launcher_refuses_argo_template_braces():
    with pytest.raises(ValueError, match="template expression"):
        launcher_workflow("name: x\ntask_args: {a: '{{x}}'}\n", ClusterSettings(), STORE, RUN_ID)


@pytest.mark.parametrize("run_id", ["golden-run", "Some_Run.With.Dots", "x" * 80, "digits-0123abcd"])
def test_workflow_names_are_deterministic_dns_labels(run_id):
    seen = set()
    for tag in ("g0000", "g0007", "g1234", "final"):
        for attempt in (0, 1, 12):
            name = names.workflow_name(run_id, tag, attempt)
            assert name == names.workflow_name(run_id, tag, attempt)
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
            seen.add(name)
    assert len(seen) == 12
    assert names.workflow_name("a" * 80, "g0000") != names.workflow_name("a" * 81, "g0000")
    prefix = names.launcher_prefix(run_id)
    assert len(prefix) + 5 <= 63 and prefix.endswith("-launcher-")


def test_settings_file_and_errors(tmp_path):
    assert golden_settings().gpu.runtime_class_name == "nvidia"
    partial = parse_settings({"gpu": {"runtimeClassName": "nvidia"}})
    assert partial.gpu.gpus == 1 and partial.gpu.memory == "16Gi"  # the GPU defaults are kept
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpu:\n  gpuz: 2\n")
    with pytest.raises(SpecError, match=r"gpu\.gpuz"):
        load_settings(bad)
    with pytest.raises(SpecError, match="memory"):
        parse_settings({"cpu": {"memory": "lots"}})
    with pytest.raises(SpecError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")
    bad.write_text("pack: 4\nshard: 2\npack: 8\n")  # a duplicate key does not silently win
    with pytest.raises(SpecError, match=r"settings .*bad.yaml: duplicate key 'pack' at line 3 \(first at line 1\)"):
        load_settings(bad)


def test_every_setting_has_a_docstring():
    from pydantic import BaseModel

    todo, seen = [ClusterSettings], set()
    while todo:
        model = todo.pop()
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            for arg in getattr(field.annotation, "__args__", ()) + (field.annotation,):
                inner = getattr(arg, "__args__", (arg,))
                todo += [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel) and a not in seen]


def test_compile_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ESGD_STORE", raising=False)
    out = tmp_path / "g1.yaml"
    spec, settings = GOLDEN / "spec.yaml", GOLDEN / "settings.yaml"
    common = [str(spec), "--settings", str(settings), "--store", STORE, "--run-id", RUN_ID]
    assert esgd_main(["compile", *common, "--generation", "1", "-o", str(out)]) == 0
    assert out.read_text() == (GOLDEN / "generation-1.yaml").read_text()
    assert esgd_main(["compile", *common, "--launcher"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "launcher.yaml").read_text()
    assert esgd_main(["compile", *common, "--generation", "final", "--attempt", "2"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == f"{RUN_ID}-final-a2"
    # The final stages of a run extended to the spec's generations (3 in the golden spec) have a name of their own.
    assert esgd_main(["compile", *common, "--generation", "final-k0003"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == f"{RUN_ID}-final-k0003-a0"
    assert esgd_main(["compile", *common, "--generation", "final-k0009"]) == 2
    assert "expected a generation number, 'final' or 'final-k0003'" in capsys.readouterr().err
    assert esgd_main(["compile", *common, "--generation", "3"]) == 2
    assert "outside 0..2" in capsys.readouterr().err
    assert esgd_main(["compile", *common, "--generation", "last"]) == 2
    assert esgd_main(["compile", str(spec), "--launcher"]) == 2
    assert "--store is required" in capsys.readouterr().err


def test_compile_without_a_store_leaves_the_run_uri_to_argo_submit(capsys, monkeypatch):
    """`esgd compile SPEC --generation K` alone: the `run` parameter has no value, so Argo refuses
    the Workflow unless `argo submit -p run=URI` gives it."""
    monkeypatch.delenv("ESGD_STORE", raising=False)
    assert esgd_main(["compile", str(GOLDEN / "spec.yaml"), "--generation", "2", "--run-id", RUN_ID]) == 0
    captured = capsys.readouterr()
    workflow = yaml.safe_load(captured.out)
    assert workflow["spec"]["arguments"]["parameters"] == [{"name": "run"}]
    assert f"-p run=<store>/runs/{RUN_ID}" in captured.err
    check(workflow)


def test_workflows_package_imports_no_engine():
    """esgd.workflows is Hera plus the plan: no torch, no worker code, no store, no Kubernetes client."""
    code = (
        "import sys, esgd.workflows.generation, esgd.workflows.launcher, esgd.workflows.check; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'kubernetes', 'boto3') "
        "or m.startswith(('esgd.worker', 'esgd.store', 'esgd.controller'))]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_list_every_setting():
    """docs/kubernetes.md carries the settings reference generated from the docstrings."""
    from esgd.workflows.settings import reference_markdown

    path = ROOT / "docs" / "kubernetes.md"
    text = path.read_text()
    start, end = "<!-- settings-reference:start -->\n", "<!-- settings-reference:end -->"
    head, _, rest = text.partition(start)
    block, _, tail = rest.partition(end)
    if REGEN:
        path.write_text(head + start + reference_markdown() + end + tail)
        block = reference_markdown()
    assert block == reference_markdown(), (
        "docs/kubernetes.md is stale: ESGD_REGEN_GOLDEN=1 pytest tests/test_workflows.py"
    )


def test_generation_workflows_are_owned_by_the_launcher():
    """With an owner, deleting it (the launcher Workflow, or the chart's run Job) deletes the
    generation Workflows: Kubernetes' garbage collector follows the ownerReference."""
    from esgd.workflows.owner import Owner

    spec, settings = golden_spec(), golden_settings()
    owner = Owner.parse("workflow/golden-run-launcher-x7k2p/0b6e1f7c-1111-2222-3333-444455556666")
    workflow = phase_workflow(phase_of(spec, settings, 0), settings, RUN_URI, RUN_ID, owner=owner).to_dict()
    check(workflow)
    assert workflow["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "name": "golden-run-launcher-x7k2p",
            "uid": "0b6e1f7c-1111-2222-3333-444455556666",
        }
    ]
    job = Owner.parse("job/esgd-run-1a2b3c4d/9f9f").reference()
    assert (job.api_version, job.kind) == ("batch/v1", "Job")
    for bad in ("workflow/name", "pod/a/b", "workflow//uid", "job/a/b/c"):
        with pytest.raises(InputError, match="expected workflow/NAME/UID"):
            Owner.parse(bad)


def test_the_launcher_passes_itself_as_owner_and_has_a_deadline():
    settings = golden_settings()
    workflow = launcher_workflow((GOLDEN / "spec.yaml").read_text(), settings, STORE, RUN_ID).to_dict()
    args = esgd_parser().parse_args(workflow["spec"]["templates"][0]["container"]["args"])
    assert args.owner == "workflow/{{workflow.name}}/{{workflow.uid}}"
    assert workflow["spec"]["activeDeadlineSeconds"] == settings.launcher_deadline_seconds == 7 * 86400


def test_without_an_s3_secret_pods_use_their_service_accounts_credentials():
    """IRSA / workload identity: `s3Secret: null` leaves envFrom out of every pod."""
    settings = parse_settings({"s3Secret": None})
    for _, workflow in every_workflow(golden_spec(), settings):
        check(workflow)
        assert all("envFrom" not in t["container"] for t in workflow["spec"]["templates"] if "container" in t)
    launcher = launcher_workflow("name: x\n", settings, STORE, RUN_ID).to_dict()
    assert "envFrom" not in launcher["spec"]["templates"][0]["container"]


def test_threads_and_memory_growth_follow_the_settings():
    settings = parse_settings({"gpu": {"threads": 6, "memory": "10Gi", "memoryMax": "10Gi"}, "cpu": {"threads": 2}})
    workflow = phase_workflow(phase_of(golden_spec(), settings, 0), settings, RUN_URI, RUN_ID).to_dict()
    for template in (t for t in workflow["spec"]["templates"] if "container" in t):
        gpu = template["name"] in DEVICE_COMMANDS
        assert template["container"]["args"][-4:] == [
            "--device",
            "cuda" if gpu else "cpu",
            "--threads",
            "6" if gpu else "2",
        ]
        assert ("podSpecPatch" in template) != gpu  # memoryMax equal to memory: no growth
    with pytest.raises(SpecError, match="memoryMax 1Gi is less than memory 2Gi"):
        parse_settings({"cpu": {"memory": "2Gi", "memoryMax": "1Gi"}})
