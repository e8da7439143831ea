"""The Workflow of one generation (or of the final stages), built with Hera from the plan.

The DAG is `esgd.core.plan.generation_stages` (with `init` first in generation 0) or
`final_stages`, one task per Step: every task of a stage depends on every task of the stage before.
Each pod runs `esgd-worker <command> --run <run-uri> <Step.args()>`, the very command of the local
executor. The run URI is the Workflow's only parameter; a task's parameters are the values of its
Step.args() flags (generation, round, member or offspring range). No data passes through Argo:
every step reads its inputs from the store and commits its outputs there.
"""

from hera.workflows import DAG, Container, Parameter, Workflow

from esgd.core.plan import Step, final_stages, generation_stages
from esgd.core.spec import RunSpec
from esgd.workflows import names
from esgd.workflows.pods import container_options, workflow_options
from esgd.workflows.settings import ClusterSettings

RUN_PARAMETER = "run"
GPU_COMMANDS = ("init", "train", "evaluate", "finetune")  # the rest (evolve, select, finish) run on CPU pods


def step_parameters(step: Step) -> list[tuple[str, str]]:
    """Step.args() as (parameter name, value) pairs: `--gen 3` -> ("gen", "3")."""
    args = step.args()
    return [(flag.removeprefix("--"), value) for flag, value in zip(args[::2], args[1::2])]


def task_name(step: Step) -> str:
    parts = [step.command]
    if step.round is not None:
        parts.append(f"r{step.round}")
    for tag, span in (("m", step.members), ("o", step.offspring)):
        if span is not None:
            parts.append(f"{tag}{span[0]}-{span[1]}")
    return "-".join(parts)


def template_args(step: Step) -> list[str]:
    """The worker's arguments with Argo parameters in place of the values: the run URI, then each
    flag of Step.args() with its value taken from the task's input parameter of the same name."""
    out = [step.command, "--run", "{{workflow.parameters.%s}}" % RUN_PARAMETER]
    for name, _ in step_parameters(step):
        out += [f"--{name}", "{{inputs.parameters.%s}}" % name]
    return out


def phase_stages(spec: RunSpec, settings: ClusterSettings, phase: int | str) -> list[list[Step]]:
    """The stages of a generation (`init` first in generation 0) or of the final phase."""
    if phase == names.FINAL:
        return final_stages(spec, settings.pack)
    if not 0 <= int(phase) < spec.generations:
        raise ValueError(f"generation {phase} is outside 0..{spec.generations - 1}")
    stages = generation_stages(spec, int(phase), settings.pack, settings.shard)
    return [[Step("init")], *stages] if int(phase) == 0 else stages


def run_labels(settings: ClusterSettings, run_id: str, component: str, **extra: str) -> dict[str, str]:
    return {
        **settings.labels, "app.kubernetes.io/name": "esgd", "app.kubernetes.io/component": component,
        "esgd.io/run": names.label_value(run_id), **extra,
    }


def phase_workflow(
    spec: RunSpec, settings: ClusterSettings, run_uri: str | None, run_id: str, phase: int | str, attempt: int = 0
) -> Workflow:
    """Attempt `attempt` of generation `phase`'s Workflow (or of the final one, phase "final").
    Without a run URI the `run` parameter has no value: `argo submit -p run=URI` supplies it."""
    stages = phase_stages(spec, settings, phase)
    labels = run_labels(settings, run_id, "generation", **{"esgd.io/phase": names.phase_tag(phase), "esgd.io/attempt": str(attempt)})
    with Workflow(
        name=names.workflow_name(run_id, phase, attempt),
        entrypoint="main",
        arguments=[Parameter(name=RUN_PARAMETER, value=run_uri) if run_uri else Parameter(name=RUN_PARAMETER)],  # value=None is "null"
        active_deadline_seconds=settings.active_deadline_seconds,
        parallelism=settings.parallelism,
        **workflow_options(settings, labels, settings.service_account_name),
    ) as workflow:
        templates: dict[str, Container] = {}  # one per command
        for step in (s for stage in stages for s in stage):
            params = [param for param, _ in step_parameters(step)]
            if step.command in templates and params != [p.name for p in templates[step.command].inputs]:
                raise ValueError(f"{step.command} steps with different flags: {params}")
            if step.command not in templates:
                templates[step.command] = Container(
                    name=step.command,
                    command=["esgd-worker"],
                    args=template_args(step),
                    inputs=[Parameter(name=param) for param in params],
                    **container_options(settings, settings.gpu if step.command in GPU_COMMANDS else settings.cpu),
                )
        with DAG(name="main"):
            before: list = []
            for stage in stages:
                tasks = [
                    templates[step.command](name=task_name(step), arguments=dict(step_parameters(step)))
                    for step in stage
                ]
                for task in tasks:
                    if before:
                        before >> task
                before = tasks
    return workflow
