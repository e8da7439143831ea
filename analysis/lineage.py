"""`esgd lineage`: where an individual came from, and what `esgd replay` (esgd.analysis.replay)
re-trains.

Everything is read from the run's history (one row per individual per generation, see
esgd.core.records.HistoryRow). An individual keeps its member id for as long as it survives: `init-003` is
the same network in every generation it is trained in (role `parent` rows), until selection drops
it. An offspring (`g0004-r0-o002`: generation 4, round 0, offspring 2) is born from the ρ parents
listed in its birth row, fittest first, as their mean plus N(0, σ²) noise; a reference member
(`g0004-r0-ref`) is the run's reference checkpoint, inserted unchanged. In mode pbt a copy
(`g0004-c002`: made at the end of generation 4 in population slot 2) is born from one parent, the
donor whose weights it copies exactly (esgd.core.pbt), and trains on with the donor's
hyper-parameters, explored: its birth row holds them.

Definitions (docs/recipes.md, "Lineage and replay"):
- ancestry of X: X and, recursively, every parent of every offspring in it. Of each ancestor
  only its part of the story up to the birth of its last child in the ancestry is kept.
- line of X: X, its fittest parent, that one's fittest parent, ..., back to an initial member or
  a reference member. X's weights descend mostly from this line: between two births on the line
  the network was only trained (SGD), never mixed with another.
- schedule of X: the SGD steps along the line in order, one per generation it went through (and
  the fine-tuning, if any): the member trained, its optimizer and hyper-parameters, epochs,
  back-offs, fitness before and after.
- replay of X: one network, built as the line's first member was (same init seed, or the
  reference checkpoint), trained by the schedule: every step with the recorded optimizer and
  hyper-parameters and the same seeds for data order and back-off coins (the member and
  generation of that step), and no recombination or mutation in between. Where X's line never
  recombined (every run without evolution, or an initial member that won) the replay repeats the
  run exactly: each step's fitness equals the history's. After the first birth on the line the
  replayed network differs from X (it skipped the averaging with the other parents and the
  mutation), so it answers: what would this optimizer schedule alone have reached? A PBT copy is
  exact, so a pbt line replays like a line that never recombined.
"""

import io
import json
import math
from dataclasses import dataclass, field, fields

import pyarrow as pa
import pyarrow.parquet as pq

from esgd.analysis.report import read_final, read_history
from esgd.core import optimizers
from esgd.core.errors import InputError
from esgd.core.hparams import DRAWN, HParams
from esgd.core.pbt import COPY
from esgd.core.records import FinalSummary, HistoryRow
from esgd.core.tables import SCHEMA_KEY, schema
from esgd.store.run import frozen_spec

HP = tuple(f.name for f in fields(HParams))  # the hyper-parameter columns of the history
BORN = ("offspring", COPY)  # births from parents: the line and the ancestry go through them
ENTRANTS = (*BORN, "reference")  # rows of a birth (the others: an SGD step)
LINEAGE = pa.schema([*schema(HistoryRow), ("on_line", pa.bool_())], metadata={SCHEMA_KEY: b"lineage/1"})


class LineageError(InputError):
    """An unknown member or an unreadable run."""


@dataclass
class Lineage:
    member: str
    line: list[str]  # from the line's first member to `member`
    ancestors: set[str]
    rows: list[dict]  # history rows of the ancestry, in time order
    edges: list[dict]  # {parent, child, generation, round, sigma, first}
    schedule: list[dict]  # SGD steps along the line, in order
    births: dict[str, dict] = field(default_factory=dict)  # member -> its offspring or reference row


def _when(row: dict) -> tuple[int, int]:
    """Time of a row: training in generation g comes before evolution round 0, 1, ... of g."""
    return row["generation"], row["round"]


def winner(final: FinalSummary | None, rows: list[dict]) -> str:
    """The run's answer (its final summary), else the best survivor of the last generation."""
    if final is not None:
        return final.best_member
    last = max(r["generation"] for r in rows)
    return min((r for r in rows if r["generation"] == last and r["selected"]), key=lambda r: r["fitness"])["member"]


def lineage(rows: list[dict], member: str) -> Lineage:
    births = {r["member"]: r for r in rows if r["role"] in ENTRANTS}
    if member not in births and not any(r["member"] == member for r in rows):
        raise LineageError(f"member {member!r} is not in the run's history")
    # ancestry, and how long each ancestor matters: up to the birth of its last child in it
    until: dict[str, tuple[int, int]] = {member: (math.inf, math.inf)}
    todo, edges = [member], []
    while todo:
        child = todo.pop()
        birth = births.get(child)
        if birth is None or birth["role"] not in BORN:
            continue
        for index, parent in enumerate(birth["parents"]):
            edges.append(
                {
                    "parent": parent,
                    "child": child,
                    "generation": birth["generation"],
                    "round": birth["round"],
                    "sigma": birth["sigma"],
                    "first": index == 0,
                }
            )
            if parent not in until:
                todo.append(parent)
            until[parent] = max(until.get(parent, (-1, -1)), _when(birth))
    kept = [r for r in rows if r["member"] in until and (r["role"] in ENTRANTS or _when(r)[0] <= until[r["member"]][0])]
    kept.sort(key=lambda r: (_when(r), r["member"]))
    edges.sort(key=lambda e: (e["generation"], e["round"], e["child"], not e["first"]))
    line = [member]
    while line[-1] in births and births[line[-1]]["role"] in BORN:
        line.append(births[line[-1]]["parents"][0])
    line.reverse()
    steps = []
    for index, m in enumerate(line):
        born = births[m]["generation"] if m in births else -1
        stop = births[line[index + 1]]["generation"] if index + 1 < len(line) else math.inf
        steps += [
            r
            for r in rows
            if r["member"] == m and r["role"] in ("parent", "finetune") and born < r["generation"] <= stop
        ]
    steps.sort(key=lambda r: r["generation"])
    return Lineage(member, line, set(until), kept, edges, steps, births)


def hp_text(row: dict) -> str:
    """The hyper-parameters of a history row, those its optimizer family reads (all of them for a
    family this process does not know)."""
    family = optimizers.FAMILIES.get(row["optimizer"])
    reads = family.reads if family else DRAWN
    text = f"{row['optimizer']:<8} lr {row['lr']:.4g}"
    if "momentum" in reads:
        text += f" momentum {row['momentum']:.3g}"
    if "beta1" in reads:
        text += f" betas ({row['beta1']:.3g}, {row['beta2']:.4g})"
    if row["weight_decay"] and "weight_decay" in reads:
        text += f" wd {row['weight_decay']:.3g}"
    return text + f" batch {row['batch_size']}"


def events(lin: Lineage) -> list[dict]:
    """The line as events: where it starts, every SGD step, every birth on it."""
    out = []
    first = lin.line[0]
    if first in lin.births:  # a reference member
        b = lin.births[first]
        out.append(
            {
                "generation": b["generation"],
                "round": b["round"],
                "member": first,
                "event": "reference",
                "text": "the run's reference checkpoint, inserted unchanged",
                "fitness": b["fitness"],
            }
        )
    else:
        start = next((r["fitness_before"] for r in lin.schedule if r["member"] == first), None)
        out.append(
            {
                "generation": 0,
                "round": -1,
                "member": first,
                "event": "init",
                "text": "initialised (generation 0)",
                "fitness": start,
            }
        )
    for row in lin.schedule:
        out.append(
            {
                "generation": row["generation"],
                "round": -1,
                "member": row["member"],
                "event": "finetune" if row["role"] == "finetune" else "train",
                "text": f"{'fine-tuned' if row['role'] == 'finetune' else 'trained'} {hp_text(row)}, "
                f"{row['epochs']} epoch(s), {row['backoffs']} back-off(s), from {row['fitness_before']:.4f}",
                "fitness": row["fitness"],
            }
        )
    for m in lin.line[1:]:
        b = lin.births[m]
        parents = ", ".join(b["parents"])
        if b["role"] == COPY:
            made = f"copied {parents}'s weights (PBT exploit), explored its hyper-parameters to {hp_text(b)}"
        else:
            made = f"born: mean({parents}) + N(0, {b['sigma']:.4g}²)"
        out.append(
            {
                "generation": b["generation"],
                "round": b["round"],
                "member": m,
                "event": "born",
                "text": made,
                "fitness": b["fitness"],
            }
        )
    order = {"reference": 0, "init": 0, "train": 1, "born": 2, "finetune": 3}
    out.sort(key=lambda e: (e["generation"], order[e["event"]], e["round"]))
    return out


def text(lin: Lineage, title: str) -> str:
    def num(value):
        return "-" if value is None else f"{value:.4f}"

    by_gen: dict[int, int] = {}
    for m in lin.ancestors:
        if m in lin.births:
            by_gen[lin.births[m]["generation"]] = by_gen.get(lin.births[m]["generation"], 0) + 1
    initial = sum(m not in lin.births for m in lin.ancestors)
    copied = sum(e["first"] and lin.births[e["child"]]["role"] == COPY for e in lin.edges)
    lines = [
        title,
        f"ancestry: {len(lin.ancestors)} individual(s): {initial} initial, "
        + "".join(f"{n} born in g{g}, " for g, n in sorted(by_gen.items()))
        + f"{sum(e['first'] for e in lin.edges) - copied} recombination(s)"
        + (f", {copied} PBT copies" if copied else ""),
        "line (fittest parent at each birth): " + " -> ".join(lin.line),
        "",
        f"{'gen':>4} {'round':>5}  {'member':<15} {'fitness':>8}  event",
    ]
    for e in events(lin):
        rnd = e["round"] if e["round"] >= 0 else "-"
        lines.append(f"{e['generation']:>4} {rnd:>5}  {e['member']:<15} {num(e['fitness']):>8}  {e['text']}")
    return "\n".join(lines)


def to_json(lin: Lineage) -> dict:
    return {
        "member": lin.member,
        "line": lin.line,
        "ancestors": sorted(lin.ancestors),
        "edges": lin.edges,
        "schedule": [
            {k: r[k] for k in ("generation", "member", "role", *HP, "epochs", "backoffs", "fitness_before", "fitness")}
            for r in lin.schedule
        ],
        "events": events(lin),
    }


def to_dot(lin: Lineage, title: str) -> str:
    """The genealogy as a GraphViz digraph: one node per individual, an edge from each parent to
    each offspring (bold: the fittest parent); the line is filled, the member itself doubled."""
    trained: dict[str, list[str]] = {}
    last: dict[str, float] = {}
    for r in lin.rows:
        if r["role"] in ("parent", "finetune"):
            trained.setdefault(r["member"], []).append(f"g{r['generation']} {r['optimizer']}")
        last[r["member"]] = r["fitness"]
    out = [f'digraph "{title}" {{', "  rankdir=LR;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for m in sorted(lin.ancestors, key=lambda m: (lin.births[m]["generation"] if m in lin.births else -1, m)):
        b = lin.births.get(m)
        if b is None or b["role"] == "reference":
            origin = "initial" if b is None else "reference"
        elif b["role"] == COPY:
            origin = f"copied g{b['generation']} from {b['parents'][0]}"
        else:
            origin = f"born g{b['generation']} r{b['round']} σ={b['sigma']:.3g}"
        label = [
            m,
            origin,
            *trained.get(m, [])[:6],
            *(["..."] if len(trained.get(m, [])) > 6 else []),
            f"fitness {last.get(m, float('nan')):.4f}",
        ]
        style = ', style="filled", fillcolor="#ffe9a8"' if m in lin.line else ""
        shape = ", peripheries=2" if m == lin.member else ""
        label_text = "\\n".join(part.replace('"', "'") for part in label)
        out.append(f'  "{m}" [label="{label_text}"{style}{shape}];')
    for e in lin.edges:
        attrs = f'label="g{e["generation"]} r{e["round"]}"' + (", penwidth=2" if e["first"] else ", style=dashed")
        out.append(f'  "{e["parent"]}" -> "{e["child"]}" [{attrs}];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_parquet(lin: Lineage) -> bytes:
    """The ancestry's history rows (HISTORY columns) plus `on_line`, schema `lineage/1`."""
    on_line = set(lin.line)
    rows = [dict(r, on_line=r["member"] in on_line) for r in lin.rows]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=LINEAGE), sink)
    return sink.getvalue()


def json_dump(obj) -> str:
    return json.dumps(obj, default=lambda v: sorted(v) if isinstance(v, set) else str(v))


def open_lineage(uri: str, member: str | None) -> tuple[Lineage, str, FinalSummary | None]:
    """(lineage, title, final summary or None) of a run URI."""
    from esgd.store.uri import open_run

    store, run_id = open_run(uri)
    rows, final = read_history(store, run_id), read_final(store, run_id)
    target = member or winner(final, rows)
    lin = lineage(rows, target)
    fit = [r["fitness"] for r in lin.rows if r["member"] == target]
    title = f"run {run_id}, member {target}" + (" (the winner)" if final and final.best_member == target else "")
    if fit:
        title += f": fitness {fit[-1]:.4f}"
    if final and final.best_member == target and final.metric is not None:
        title += f", {final.metric_name} {final.metric:.4f}"
    title += f"  [mode {frozen_spec(store, run_id).mode}]"
    return lin, title, final
