"""The run spec: every knob of a run, typed, with a docstring per field (the user's documentation).

`esgd spec --schema` prints the JSON schema built from these classes; examples/ holds documented specs.
Specs are read with a strict YAML loader (load_yaml): a key given twice, an anchor or alias (`&a`,
`*a`: a billion-laughs bomb) or a value nested absurdly deep is one line naming its line and column.
Counts and batch sizes have sanity limits (MAX_COUNT, MAX_BATCH) and every float must be finite
(docs/method.md, Limits).
"""

import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from esgd.core import optimizers, selection
from esgd.core.errors import InputError

Mode = Literal["esgd", "population", "no-evolution", "single", "pbt"]
Family = Annotated[str, AfterValidator(lambda name: optimizers.check_name(name))]
"""An optimizer family's name, checked against esgd.core.optimizers when the spec is read."""


MAX_COUNT = 10_000
"""Sanity limit on µ, λ, K (generations), epochs, evolution rounds and pack.size: far above any run
we know of (store keys and Workflow names number generations with 4 digits), low enough that a
typo (mu=1000000000) is refused before it writes millions of files."""
MAX_BATCH = 2**20
"""Sanity limit on a batch size (1,048,576); whether one fits the training set is the preflight's to check
(it knows the data)."""
MAX_SEED = 2**64 - 1
"""Largest seed: random draws use the seed's low 64 bits, so a larger one would repeat a smaller one's run."""
MAX_DEPTH = 100
"""Deepest nesting of YAML collections in a spec (task_args included)."""
_LIMITS = {MAX_COUNT, MAX_BATCH, MAX_SEED}


class SpecError(InputError):
    """Bad input in a run spec; the message names the field."""


class _Model(BaseModel):
    # allow_inf_nan=False: every float of a spec is finite (`lr: .inf`, `.nan` are refused)
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False)


class Schedule(_Model):
    """A value annealed over the generations, from `start` (generation 0) to `end` (the last one)."""

    start: float = Field(ge=0)
    """Value at generation 0."""
    end: float | None = Field(default=None, ge=0)
    """Value at the last generation; omitted means constant."""
    kind: Literal["constant", "linear", "exponential", "cosine"] = "exponential"
    """Shape of the path from start to end (exponential: geometric interpolation, needs start, end > 0)."""

    @model_validator(mode="after")
    def _exponential_needs_positive(self) -> "Schedule":
        if self.kind == "exponential" and self.end is not None and (self.start <= 0 or self.end <= 0):
            raise ValueError("an exponential schedule needs start > 0 and end > 0")
        return self


class Range(_Model):
    """A closed interval to draw a hyper-parameter from: [low, high], {low: ..., high: ...}, or one
    number (low = high)."""

    low: float = Field(ge=0)
    """Lower bound (inclusive)."""
    high: float = Field(ge=0)
    """Upper bound (inclusive)."""

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return {"low": value[0], "high": value[1]}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"low": value, "high": value}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        """The three forms _from_pair accepts: the mapping, [low, high] and one number. properties,
        required and additionalProperties constrain only mappings, items only arrays, minimum only
        numbers, so one schema holds all three (and its fields stay documented where tools look)."""
        reference = handler(core_schema)
        schema = handler.resolve_ref_schema(reference)
        number = {"type": "number", "minimum": 0}
        schema.update(type=["object", "array", "number"], items=number, minItems=2, maxItems=2, minimum=0)
        return reference


class OptimizerRange(_Model):
    """Where an individual's hyper-parameters are drawn from when it picks this optimizer."""

    lr: Range
    """Learning-rate range [low, high], drawn log-uniformly (low > 0), then scaled by sgd.lr_anneal."""
    momentum: Range = Range(low=0.0, high=0.0)
    """Momentum range (sgd, nesterov, rmsprop), drawn uniformly."""
    weight_decay: Range = Range(low=0.0, high=0.0)
    """Weight-decay range, drawn uniformly."""
    beta1: Range = Range(low=0.9, high=0.9)
    """Adam/AdamW beta1 range, drawn uniformly."""
    beta2: Range = Range(low=0.999, high=0.999)
    """Adam/AdamW beta2 range, drawn uniformly."""

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: Range) -> Range:
        if value.low <= 0:
            raise ValueError("lr must be > 0")
        return value

    @field_validator("momentum", "beta1", "beta2")
    @classmethod
    def _below_one(cls, value: Range) -> Range:
        if value.high >= 1:
            raise ValueError("must be < 1")
        return value


class FixedOptimizer(_Model):
    """One optimizer with fixed hyper-parameters (the `single` mode and fine-tuning)."""

    optimizer: Family = Field(
        default="nesterov", json_schema_extra=lambda schema: schema.update(enum=sorted(optimizers.FAMILIES))
    )
    """Optimizer family (sgd, nesterov, adam, adamw, rmsprop, or one registered by a plug-in)."""
    lr: float = Field(default=0.05, gt=0)
    """Learning rate."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """Momentum (sgd, nesterov, rmsprop)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """Weight decay."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    """Adam/AdamW beta1."""
    beta2: float = Field(default=0.999, ge=0, lt=1)
    """Adam/AdamW beta2."""
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH)
    """Mini-batch size (at most 2**20)."""


class InitSpec(_Model):
    """How generation 0 is made."""

    checkpoint: str | None = None
    """Path of an ESGD checkpoint (Arrow IPC) to start every individual from; omitted: random init."""
    sigma: float = Field(default=0.0, ge=0)
    """Std of the Gaussian noise added to the checkpoint's parameters for each individual."""


class PopulationSpec(_Model):
    """Population sizes (the paper's µ, λ, ρ, m)."""

    mu: int = Field(default=8, ge=1, le=MAX_COUNT)
    """µ: number of parents, each trained on its own in the SGD step (at most 10,000)."""
    offspring: int = Field(default=8, ge=1, le=MAX_COUNT)
    """λ: offspring made in each evolution round (at most 10,000)."""
    rho: int = Field(default=2, ge=1)
    """ρ: parents per offspring, picked by roulette wheel, distinct."""
    elite: int | None = Field(default=None, ge=1)
    """m: the best m of µ+λ always survive; default 60 % of µ (rounded, at least 1)."""
    init: InitSpec = InitSpec()
    """Initialisation of generation 0."""

    @model_validator(mode="after")
    def _sizes(self) -> "PopulationSpec":
        if self.elite is not None and self.elite > self.mu:
            raise ValueError(f"population.elite (m={self.elite}) must not exceed population.mu ({self.mu})")
        if self.rho > self.mu:
            raise ValueError(f"population.rho ({self.rho}) must not exceed population.mu ({self.mu})")
        return self

    @property
    def m(self) -> int:
        return self.elite if self.elite is not None else max(1, math.floor(0.6 * self.mu + 0.5))


def _count_or_word(value: Any, word: str, low: int) -> Any:
    """A field that is a count from `low` to MAX_COUNT or one word (pack.size: auto, sgd.patience:
    generation): the value, or one error line that names both choices (a union's own error lists
    each member's complaint)."""
    if value == word or (isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_COUNT):
        return value
    raise ValueError(f"must be {word} or a whole number from {low} to {MAX_COUNT}, got {value!r}")


def _default_optimizers() -> dict:
    return {
        "sgd": OptimizerRange(lr=Range(low=0.02, high=0.2), momentum=Range(low=0.0, high=0.9)),
        "nesterov": OptimizerRange(lr=Range(low=0.02, high=0.2), momentum=Range(low=0.8, high=0.95)),
        "adam": OptimizerRange(lr=Range(low=3e-4, high=3e-3)),
    }


class SGDSpec(_Model):
    """The SGD step: every individual trains on its own."""

    epochs: int = Field(default=5, ge=1, le=MAX_COUNT)
    """Ks: epochs per generation (at most 10,000). Default 5, with back-off once per generation
    (`patience`): measured better on the suite than the paper's Ks = 1 at the same epochs per
    individual (docs/KNOBS.md)."""
    optimizers: dict[Family, OptimizerRange] = Field(
        default_factory=_default_optimizers,
        min_length=1,
        json_schema_extra=lambda schema: schema.update(propertyNames={"enum": sorted(optimizers.FAMILIES)}),
    )
    """Optimizer pool: each individual draws one family uniformly, then its hyper-parameters."""
    batch_size: list[Annotated[int, Field(ge=1, le=MAX_BATCH)]] = Field(
        default_factory=lambda: [32, 64, 128], min_length=1
    )
    """Mini-batch sizes to draw from uniformly (each at most 2**20)."""
    lr_anneal: Schedule = Schedule(start=1.0)
    """Factor applied to every lr range per generation. Default constant 1 (measured better than the
    paper's 1.0 → 0.1 exponential, which shrinks the range over the generations: docs/KNOBS.md)."""
    backoff: float = Field(default=1.0, ge=0, le=1)
    """p_backoff: probability of returning to the previous epoch's weights when fitness got worse (1: strict)."""
    patience: int | Literal["generation"] = "generation"
    """Back-off patience. generation (the default): the back-off is checked once per generation, at
    the SGD step's end: the step keeps every epoch and returns to its best weights (the start's or a
    later epoch's) when it ended worse than them, with probability `backoff`. A number P (0 to
    10,000): an epoch worse than the best of the step so far is kept, up to P in a row, and the next
    one or the step's last returns to that best; 0 is the paper's back-off after every epoch. All
    three are the same with Ks = 1, and the step never ends worse than it started with strict
    back-off (Theorem 1). Per generation, with Ks = 5, measured best on the suite (docs/KNOBS.md)."""

    @field_validator("patience", mode="before")
    @classmethod
    def _patience(cls, value):
        return _count_or_word(value, "generation", 0)

    def patience_in(self, epochs: int) -> int:
        """The patience of an SGD step of `epochs` epochs, in epochs (generation: the whole step)."""
        return epochs if self.patience == "generation" else self.patience

    hparams: Literal["redraw", "keep", "inherit"] = "keep"
    """Hyper-parameters in the esgd and no-evolution modes: keep (the default: an individual that trained
    keeps what it trained with, optimizer family included; an offspring draws afresh, with its
    generation's lr_anneal factor), inherit (as keep, but an offspring takes those of its fittest
    parent, as a PBT copy takes its donor's, unperturbed) or redraw (the paper's: every individual
    draws its optimizer and hyper-parameters afresh each generation). The other modes have their own
    rule (see `mode`)."""
    optimizer_state: Literal["reset", "carry"] = "reset"
    """Optimizer state between generations: reset (the paper's and the default: a fresh optimizer every
    generation) or carry (an individual that trained in the previous generation with the same optimizer
    family starts from the optimizer state it ended with: momentum buffers, Adam's and AdamW's moments
    and step count, RMSprop's averages; an offspring, a PBT copy, a family change and fine-tuning start
    fresh). Carrying measured no better on the benchmark suite (docs/KNOBS.md)."""


class EvolutionSpec(_Model):
    """The evolution step: recombination, mutation, m-elitist selection."""

    rounds: int = Field(default=1, ge=1, le=MAX_COUNT)
    """Kv: evolution rounds per generation (at most 10,000)."""
    sigma: Schedule = Schedule(start=0.01, end=0.001, kind="exponential")
    """σ_k: std of the Gaussian mutation added to the mean of the ρ parents."""
    sigma_scale: Literal["absolute", "rms"] = "absolute"
    """absolute: σ_k is the noise's std on every parameter (the paper's); rms: on each tensor it is σ_k
    times the tensor's root mean square in the fittest parent, so layers of small weights are not
    swamped and layers of large ones still move (a tensor of zeros gets no noise)."""
    roulette_floor: float = Field(default=0.05, ge=0)
    """Weight of the worst individual on the roulette wheel, as a share of the pool's loss spread."""
    # The operators are written into a spec's dump (the frozen spec, the run id's hash) only when they
    # are not the paper's, so that specs written before they could be chosen keep their run ids.
    parents: str = Field(
        default="roulette",
        exclude_if=lambda name: name == "roulette",
        json_schema_extra=lambda schema: schema.update(enum=sorted(selection.PARENTS)),
    )
    """How each offspring's ρ parents are picked (esgd.core.selection.PARENTS): roulette (the paper's)."""
    survivors: str = Field(
        default="elitist",
        exclude_if=lambda name: name == "elitist",
        json_schema_extra=lambda schema: schema.update(enum=sorted(selection.SURVIVORS)),
    )
    """How µ survivors are chosen from the pool (esgd.core.selection.SURVIVORS): elitist (the paper's
    m-elitist selection; Theorem 1 needs it)."""

    @field_validator("parents")
    @classmethod
    def _known_parents(cls, value: str) -> str:
        return selection.check(selection.PARENTS, "parent selection", value)

    @field_validator("survivors")
    @classmethod
    def _known_survivors(cls, value: str) -> str:
        return selection.check(selection.SURVIVORS, "survivor selection", value)


class PBTSpec(_Model):
    """Population Based Training (mode pbt; docs/method.md, "PBT"): after each generation's SGD step
    the bottom quantile copies the weights and hyper-parameters of the top quantile, then explores."""

    quantile: float = Field(default=0.25, gt=0, le=0.5)
    """Share of the population in each of the bottom and top quantiles, in (0, 0.5] (they must not
    overlap): each individual of the bottom one copies one drawn uniformly from the top one. The count
    rounds up, as Ray Tune's does, to at most half of µ (rounded down): µ = 1 exploits nobody."""
    resample: float = Field(default=0.25, ge=0, le=1)
    """Probability of drawing a copied hyper-parameter (and the optimizer family) afresh from the spec's
    ranges instead of perturbing it."""
    factors: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [0.8, 1.2], min_length=1)
    """Perturbation factors (each > 0): a copied hyper-parameter is multiplied by one drawn uniformly from
    these, then clipped to its range; a batch size moves to the next allowed value up (factor > 1) or
    down (factor < 1)."""


class FinetuneSpec(FixedOptimizer):
    """Optional fine-tuning of every individual after the last generation."""

    epochs: int = Field(default=0, ge=0, le=MAX_COUNT)
    """Epochs of fine-tuning (0: none; at most 10,000)."""
    lr: float = Field(default=0.005, gt=0)
    """Learning rate (small)."""


class ReferenceSpec(_Model):
    """Optional reference model, inserted unchanged into every generation's selection pool."""

    checkpoint: str | None = None
    """Path of an ESGD checkpoint (Arrow IPC); omitted: no reference model."""


class PackSpec(_Model):
    """Packing: many individuals trained at once on one device (same algorithm, fewer kernels)."""

    size: int | Literal["auto"] = "auto"
    """Individuals per pack: a number (1: one at a time; at most 10,000), or auto: every individual
    of a train step that shares a batch size, at most 64 (on a GPU halved until it fits in memory)."""
    bf16: bool = False
    """bf16 autocast for the forward pass of packed training (CUDA; fitness stays in full precision)."""
    compile: bool = False
    """torch.compile the packed gradient (forward and backward), for long runs: torch compiles a
    variant per batch size, last batch and pack size, a few seconds each, in every process, which
    pays off only when the run trains long enough (measured gains and costs: docs/PERFORMANCE.md).
    The compiled step rounds differently, so its history matches the uncompiled one closely, not
    bit for bit."""

    @field_validator("size", mode="before")
    @classmethod
    def _positive(cls, value):
        return _count_or_word(value, "auto", 1)


class RunSpec(_Model):
    """An ESGD run."""

    name: str = Field(default="esgd", pattern=r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
    """Run name: lower-case letters, digits and dashes (it becomes part of Kubernetes names)."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed of every random draw: same spec and seed, same history (0 to 2**64 - 1)."""
    mode: Mode = "esgd"
    """esgd, population (hyper-parameters drawn once, no evolution), no-evolution, single (one model), or
    pbt (Population Based Training: the bottom quantile copies the top one and perturbs its
    hyper-parameters after every SGD step; section pbt)."""
    task: str = "esgd.worker.tasks.digits:task"
    """Import path `package.module:function` of the task (see docs/tasks.md)."""
    task_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the task function."""
    generations: int = Field(default=10, ge=1, le=MAX_COUNT)
    """K: number of generations (at most 10,000)."""
    population: PopulationSpec = PopulationSpec()
    """µ, λ, ρ, m and initialisation."""
    sgd: SGDSpec = SGDSpec()
    """The SGD step."""
    evolution: EvolutionSpec = EvolutionSpec()
    """The evolution step (esgd mode only)."""
    # Absent from a spec's dump unless the mode is pbt, so that the other modes keep their run ids.
    pbt: PBTSpec | None = Field(default=None, exclude_if=lambda section: section is None)
    """Population Based Training (pbt mode only; filled with its defaults when the mode is pbt)."""
    single: FixedOptimizer = FixedOptimizer()
    """Optimizer of the `single` mode; its lr is halved whenever fitness gets worse."""
    finetune: FinetuneSpec = FinetuneSpec()
    """Fine-tuning after the last generation."""
    reference: ReferenceSpec = ReferenceSpec()
    """Reference model (the paper's language-model variant)."""
    pack: PackSpec = PackSpec()
    """How many individuals a worker trains at once on one device."""
    device: str = "auto"
    """Device for the local backend: auto (every local GPU, else the CPU), cpu, cuda or cuda:N."""

    @model_validator(mode="before")
    @classmethod
    def _pbt_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") == "pbt" and data.get("pbt") is None:
            return {**data, "pbt": {}}
        return data

    @field_validator("pbt")
    @classmethod
    def _pbt_mode_only(cls, value: PBTSpec | None, info) -> PBTSpec | None:
        mode = info.data.get("mode")
        if value is not None and mode is not None and mode != "pbt":
            raise ValueError(f"only mode pbt reads this section (mode is {mode}): remove it, or set mode: pbt")
        return value

    @field_validator("task")
    @classmethod
    def _import_path(cls, value: str) -> str:
        module, _, function = value.partition(":")
        if not module or not function:
            raise ValueError(f"task must look like package.module:function, got {value!r}")
        return value

    @property
    def mu(self) -> int:
        """Population size actually trained: 1 in the single mode."""
        return 1 if self.mode == "single" else self.population.mu

    @property
    def m(self) -> int:
        return 1 if self.mode == "single" else self.population.m

    @property
    def evolves(self) -> bool:
        return self.mode == "esgd"


class _Refused(yaml.YAMLError):
    """YAML that parses but that a spec does not accept (a key given twice, an alias, deep nesting)."""

    def __init__(self, problem: str, mark: yaml.Mark, first: yaml.Mark | None = None):
        super().__init__(problem)
        self.problem, self.mark, self.first = problem, mark, first


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a mapping key given twice is an error (not silently the last
    one), anchors and aliases are refused (an alias bomb expands to billions of nodes when the spec
    is dumped or hashed), and collections nest at most MAX_DEPTH deep (not a RecursionError)."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                "anchors and aliases (&name, *name) are not allowed in a spec: write the value out", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"collections nested more than {MAX_DEPTH} deep", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: the safe loader's own error names it
                if first is not key_node.start_mark:
                    raise _Refused(f"duplicate key {key!r}", key_node.start_mark, first)
        return super().construct_mapping(node, deep)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes an object met twice out twice: what dump_spec writes, the strict loader reads back."""

    def ignore_aliases(self, data) -> bool:
        return True


def _position(line: int, column: int, lines: bool) -> str:
    return f"line {line + 1}, column {column + 1}" if lines else f"column {column + 1}"


def _yaml_problem(error: yaml.YAMLError, text: str, lines: bool) -> str:
    """One line for a YAML error, with where it is (line and column; column only when `lines` is
    false, for a one-line --set value)."""
    if isinstance(error, _Refused):
        if error.problem.startswith("duplicate key"):
            at, first = error.mark, error.first
            where = f"line {at.line + 1}" if lines else f"column {at.column + 1}"
            was = f"line {first.line + 1}" if lines else f"column {first.column + 1}"
            return f"{error.problem} at {where} (first at {was})"
        return f"{_position(error.mark.line, error.mark.column, lines)}: {error.problem}"
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"{_position(mark.line, mark.column, lines)}: " if mark else ""
        problem = error.problem or error.context or "cannot be parsed"
        if error.problem and error.context:
            context, started = error.context, error.context_mark
            if started is not None and (started.line, started.column) != (mark.line, mark.column):
                context += f" started at {_position(started.line, started.column, lines)}"
            problem += f" ({context})"
        return f"not valid YAML: {where}{problem}"
    if isinstance(error, yaml.reader.ReaderError) and isinstance(error.position, int):
        before = text[: error.position]
        line, column = before.count("\n"), error.position - (before.rfind("\n") + 1)
        character = f"#x{error.character:04x}" if isinstance(error.character, int) else repr(error.character)
        return f"not valid YAML: {_position(line, column, lines)}: unacceptable character {character}: {error.reason}"
    return "not valid YAML: " + " ".join(str(error).split())


def load_yaml(text: str, where: str = "spec", lines: bool = True) -> Any:
    """YAML text as Python values, read strictly (see _StrictLoader); SpecError, one line starting
    with `where` (e.g. "spec path.yaml", "settings s.yaml"), naming the line and column of a problem."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader, stricter
    except yaml.YAMLError as error:
        raise SpecError(f"{where}: {_yaml_problem(error, text, lines)}") from None


def _set_dotted(data: dict, dotted: str, value: Any, item: str) -> None:
    keys = dotted.split(".")
    if not all(key.strip() for key in keys):
        raise SpecError(f"--set {item}: empty key in {dotted!r}")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {item}: {key} is not a mapping")
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` overrides; values are parsed as YAML (so 0.1, true, [1, 2] work), as
    strictly as a spec file."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key=value")
        value = load_yaml(raw, f"--set {item}", lines="\n" in raw.strip())
        _set_dotted(data, key.strip(), value, item)
    return data


def _error_line(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or "spec"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "less_than_equal" and first.get("ctx", {}).get("le") in _LIMITS:
        msg += " (a sanity limit: docs/method.md, Limits)"
    more = len(error.errors()) - 1
    return f"{loc}: {msg}" + (f" (and {more} more)" if more else "")


def refuse_credentials(data: Any, where: str = "") -> None:
    """SpecError naming the field, never the value, if a string in the spec is a URI with
    credentials in it (`scheme://user:secret@…`): the spec is stored, printed and written into
    Workflows as it is. Credentials come from the environment (docs/security.md)."""
    if isinstance(data, dict):
        for key, value in data.items():
            refuse_credentials(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            refuse_credentials(value, f"{where}.{index}")
    elif isinstance(data, str) and "://" in data and "@" in data:
        raise SpecError(
            f"{where}: credentials in a URI are not supported (the spec is stored and written into Workflows "
            "as it is): use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a Secret"
        )


def parse_spec(data: Any) -> RunSpec:
    """Validate a spec mapping; raises SpecError with one line naming the field."""
    if not isinstance(data, dict):
        raise SpecError("spec: expected a mapping at the top level")
    refuse_credentials(data)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_error_line(error)) from None


def _mapping(text: str, where: str) -> dict:
    """The YAML mapping of a spec's text (empty text: no fields); SpecError if it is not one."""
    data = load_yaml(text, where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping at the top level")
    return data


def load_spec(text: str, overrides: list[str] = (), where: str = "spec") -> RunSpec:
    """A spec from YAML text with `--set` overrides applied; SpecError (one line) if invalid.
    `where` starts a YAML error's message (read_spec passes "spec <path>")."""
    return parse_spec(apply_overrides(_mapping(text, where), list(overrides)))


def read_spec_text(path: str) -> str:
    """A spec file's text; SpecError (exit 2) naming the file when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise SpecError(f"cannot read spec {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise SpecError(
            f"spec {path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x})"
        ) from None


def read_spec(path: str, overrides: list[str] | None = None) -> RunSpec:
    """A spec file with `--set` overrides applied; SpecError (exit 2) if unreadable or invalid."""
    return load_spec(read_spec_text(path), overrides or [], f"spec {path}")


def dump_spec(spec: RunSpec) -> str:
    return yaml.dump(spec.model_dump(mode="json"), Dumper=_NoAliasDumper, sort_keys=False)


ADDED = {
    ("sgd", "hparams"): "redraw",
    ("sgd", "optimizer_state"): "reset",
    ("sgd", "patience"): 0,
    ("evolution", "sigma_scale"): "absolute",
}
"""Fields added after runs existed, with the value that every run made before them had (the paper's).
A spec holding that value is hashed without the field (identity_text), so its run id is the one it
had; a frozen spec without the field has that value (load_frozen), so an older run resumes as made."""


def identity_text(spec: RunSpec) -> str:
    """The text a run id hashes: the dump, less the ADDED fields that hold their older runs' value."""
    data = spec.model_dump(mode="json")
    for (section, name), old in ADDED.items():
        if data[section][name] == old:
            del data[section][name]
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


def load_frozen(text: str, where: str) -> RunSpec:
    """A run's frozen spec (a dump): load_spec, where an ADDED field that is absent (the spec was
    frozen before the field existed) takes its older runs' value, not today's default."""
    data = _mapping(text, where)
    for (section, name), old in ADDED.items():
        if isinstance(data.get(section), dict):
            data[section].setdefault(name, old)
    return parse_spec(data)


def json_schema() -> dict:
    return RunSpec.model_json_schema()
