# %% [markdown]
# # ESGD from Python, cell by cell
# Run it as a script (`python examples/notebook.py`) or open it in Jupyter/VS Code as a notebook
# (the `# %%` markers are cells). It evolves a small population on scikit-learn's digits, looks at
# the history, and takes the winner as an ordinary PyTorch model. About a minute on a laptop CPU.

# %%
import torch

import esgd
from esgd.worker.tasks.digits import task as digits

# %% A task of your own: any function returning an esgd.worker.task.Task (docs/tasks.md).
# Defined here, it runs on this machine; a cluster needs it in a module the image installs.


def my_digits(**task_args):
    return digits(**task_args)  # the spec's task_args (hidden, fitness, ...) as keyword arguments


# %% The spec: the bundled example, shortened; any field can be overridden like `--set`.
spec = esgd.Spec.from_yaml("examples/digits.yaml", ["generations=4"])
run = esgd.run(spec, store="esgd-runs", run_id="notebook", task=my_digits)  # run again: resumes
print(run)

# %% The history: one row per individual and generation (pyarrow; `run.history(pandas=True)` with pandas).
table = run.history()
print(table.num_rows, "rows;", table.column_names)
for summary in run.summaries():
    print(f"gen {summary['generation']}: best {summary['best']:.4f}  elite mean {summary['elite_mean']:.4f}")

# %% The winner, as the task's model with the weights the run stored.
model = run.best().eval()
x, y = my_digits(**spec.task_args).fitness
with torch.no_grad():
    error = (model(x).argmax(1) != y).float().mean().item()
print(f"winner {run.final().best_member}: validation error {error:.2%}")

# %% Plots, as `esgd report` writes them.
print(run.report("esgd-report-notebook"))
