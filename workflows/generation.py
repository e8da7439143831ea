"""The Workflow of one phase of a run's plan (a generation, or the final stages), built with Hera.

The DAG is the phase's stages (esgd.core.plan), one task per Step: every task of a stage depends
on every task of the stage before. Each pod runs `esgd-worker <Step.argv>`, the very command of
the local engines. The run URI is the Workflow's only parameter; a task's parameters are its
Step.options() (generation, round, member or offspring range). No data passes through Argo: every
step reads its inputs from the store and commits its outputs there. Steps that train or evaluate
networks (Step.on_device) run on GPU pods, the others on CPU pods.
"""

from hera.workflows import DAG, Container, Parameter, Workflow

from esgd.core.plan import Phase, Step
from esgd.workflows import names
from esgd.workflows.owner import Owner
from esgd.workflows.pods import container_options, workflow_options
from esgd.workflows.settings import ClusterSettings

RUN_PARAMETER = "run"


def parameter(scope: str, name: str) -> str:
    """An Argo parameter reference, `{{workflow.parameters.run}}` or `{{inputs.parameters.gen}}`."""
    return "{{" + f"{scope}.parameters.{name}" + "}}"


TASK_TAGS = {"round": "r", "members": "m", "offspring": "o"}  # the generation is the Workflow's


def task_name(step: Step) -> str:
    """The DAG task's name, from the step's options: `train-m0-4`, `evaluate-r0-o4-8`, `select-r1`."""
    options = step.options()
    return "-".join(
        [step.command] + [TASK_TAGS[name] + options[name].replace("..", "-") for name in TASK_TAGS if name in options]
    )


def template_args(step: Step) -> list[str]:
    """Step.argv with Argo parameters in place of the values: the run URI, then each option with
    its value taken from the task's input parameter of the same name."""
    return step.argv(parameter("workflow", RUN_PARAMETER), {name: parameter("inputs", name) for name in step.options()})


def deadline(seconds: int | None) -> str | None:
    """A template's activeDeadlineSeconds: an int-or-string field, which Argo's schema wants as a string."""
    return None if seconds is None else str(seconds)


def device_args(settings: ClusterSettings, step: Step) -> list[str]:
    """The device a pod says out loud: `cuda` on a GPU pod (a pod without a visible GPU then exits 2
    instead of training on its CPU), `cpu` elsewhere; and its threads when the settings fix them."""
    pods = settings.gpu if step.on_device else settings.cpu
    args = ["--device", "cuda" if step.on_device and pods.gpus else "cpu"]
    return args + (["--threads", str(pods.threads)] if pods.threads else [])


def run_labels(settings: ClusterSettings, run_id: str, component: str, **extra: str) -> dict[str, str]:
    return {
        **settings.labels,
        "app.kubernetes.io/name": "esgd",
        "app.kubernetes.io/component": component,
        "esgd.io/run": names.label_value(run_id),
        **extra,
    }


def phase_workflow(
    phase: Phase,
    settings: ClusterSettings,
    run_uri: str | None,
    run_id: str,
    attempt: int = 0,
    owner: Owner | None = None,
) -> Workflow:
    """Attempt `attempt` of the phase's Workflow. Without a run URI the `run` parameter has no
    value: `argo submit -p run=URI` supplies it. With an owner (the launcher Workflow or the run
    Job that runs the controller), deleting the owner deletes this Workflow and its pods."""
    labels = run_labels(settings, run_id, "generation", **{"esgd.io/phase": phase.tag, "esgd.io/attempt": str(attempt)})
    with Workflow(
        name=names.workflow_name(run_id, phase.tag, attempt),
        entrypoint="main",
        arguments=[
            Parameter(name=RUN_PARAMETER, value=run_uri) if run_uri else Parameter(name=RUN_PARAMETER)
        ],  # value=None is "null"
        active_deadline_seconds=settings.active_deadline_seconds,
        parallelism=settings.parallelism,
        owner_references=[owner.reference()] if owner else None,
        **workflow_options(settings, labels, settings.service_account_name),
    ) as workflow:
        templates: dict[str, Container] = {}  # one per command
        for step in phase.steps():
            params = list(step.options())
            if step.command in templates and params != [p.name for p in templates[step.command].inputs]:
                raise ValueError(f"{step.command} steps with different options: {params}")
            if step.command not in templates:
                templates[step.command] = Container(
                    name=step.command,
                    command=["esgd-worker"],
                    args=template_args(step) + device_args(settings, step),
                    inputs=[Parameter(name=param) for param in params],
                    active_deadline_seconds=deadline(settings.step_deadline_seconds),
                    **container_options(settings, settings.gpu if step.on_device else settings.cpu),
                )
        with DAG(name="main"):
            before: list = []
            for stage in phase.stages:
                tasks = [templates[step.command](name=task_name(step), arguments=step.options()) for step in stage]
                for task in tasks:
                    if before:
                        before >> task
                before = tasks
    return workflow
