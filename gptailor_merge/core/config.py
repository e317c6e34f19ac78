"""Run config (YAML or flags): family, target, tasks, search and evaluation settings.

Pydantic models with `extra="forbid"`: a mistyped key fails at load with its field path, and the
cheap cross-field checks (target within range, known optimizer and methods) run before any weight
loads. The family `base: demo` means the embedded demo family.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gptailor_merge.core.errors import ConfigError
from gptailor_merge.core.merge_methods import MERGE_METHODS
from gptailor_merge.core.registry import did_you_mean

DEMO = "demo"
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
DTYPES = ("float32", "float16", "bfloat16")
DEMO_TASKS = ("prose_cloze", "code_next_line", "math_answer", "ppl_prose", "ppl_code", "ppl_math")

# nevergrad optimizers this project has run on the tailoring space (tests/test_search.py); any
# name in nevergrad's registry is accepted
OPTIMIZERS = ("NGOpt", "DiscreteLenglerOnePlusOne", "PortfolioDiscreteOnePlusOne", "TwoPointsDE",
              "RandomSearch", "CMA")


def optimizer_names() -> list[str]:
    """Every optimizer in nevergrad's registry."""
    import nevergrad as ng

    return sorted(ng.optimizers.registry)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FamilyConfig(_Strict):
    base: str = Field(DEMO, description="base model: local folder, Hub id, or 'demo' for the embedded demo family")
    candidates: tuple[str, ...] = Field((), description="fine-tunes of the base (folders or Hub ids)")
    names: tuple[str, ...] | None = Field(None, description="short names, base first")
    demo_preset: Literal["default", "tiny"] = Field("default", description="demo family size preset")

    @model_validator(mode="after")
    def _check(self) -> FamilyConfig:
        if self.base != DEMO and not self.candidates:
            raise ValueError("a family needs at least one candidate fine-tune besides the base")
        models = [self.base, *self.candidates]
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise ValueError(f"{twice[0]!r} is listed twice in the family (base and candidates must be "
                             "distinct models); drop the repeat")
        if self.names is not None and len(self.names) != 1 + len(self.candidates):
            raise ValueError(f"names has {len(self.names)} entries for {1 + len(self.candidates)} models")
        return self


class TargetConfig(_Strict):
    layers: int | None = Field(None, description="number of layers to keep", ge=1)
    remove_fraction: float | None = Field(None, description="fraction of layers to remove, e.g. 0.25", ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one(self) -> TargetConfig:
        if (self.layers is None) == (self.remove_fraction is None):
            raise ValueError("give exactly one of target.layers or target.remove_fraction")
        return self


class SearchConfig(_Strict):
    optimizer: str = Field("DiscreteLenglerOnePlusOne", description="nevergrad optimizer, any name in "
                           f"nevergrad's registry (tested: {', '.join(OPTIMIZERS)})")
    merge_methods: tuple[str, ...] = Field(("task_arithmetic",), description="mergekit methods for merged layers")
    n_trials: int = Field(60, ge=1, description="trial budget")
    time_budget_s: float | None = Field(None, gt=0, description="wall-clock budget of the search loop")
    seed: int = Field(0, description="seed of the optimizer and of example order")
    max_examples: int = Field(90, ge=1, description="examples per task at full fidelity")
    eta: int = Field(3, ge=2, description="successive-halving reduction factor")
    n_rungs: int = Field(3, ge=1, description="fidelity rungs (max/eta^2, max/eta, max for 3), "
                                              "less those under min_rung_examples")
    min_rung_examples: int = Field(30, ge=1, description="no rung decides on fewer examples per "
                                                         "task (about 30 for the normal approximation "
                                                         "of a paired mean); smaller rungs are dropped")
    promotion: Literal["race", "asha"] = Field(
        "race", description="how a trial earns more examples: race (paired against the incumbent "
        "on the same examples; dropped only once clearly worse, as SMAC and irace do) or asha "
        "(top 1/eta of the rung's unpaired losses)")
    race_z: float = Field(1.96, gt=0, description="race: a challenger is dropped once its paired "
                                                  "difference plus race_z standard errors is below "
                                                  "zero")
    finalists: int = Field(3, ge=1, description="distinct best full-fidelity genomes re-scored on the "
                                                "validation split with the baseline seeds; the "
                                                "winner is picked there")
    validation_examples: int | None = Field(None, ge=1, description="validation examples per task "
                                                                    "for the finalists (None: all)")
    lambda_range: tuple[float, float] = Field((0.3, 1.0), description="task-arithmetic / TIES lambda bounds")
    density_range: tuple[float, float] = Field((0.3, 1.0), description="TIES density bounds")
    max_sources: int | None = Field(None, ge=1, description="most candidates merged into one layer")
    use_candidates: bool = Field(True, description="false: removal-only search on the base")
    seeds: bool = Field(True, description="suggest the paper's heuristic seeds and the baselines' "
                                          "removal sets first")
    seed_fraction: float = Field(0.25, gt=0, le=1, description="at most this fraction of n_trials "
                                                               "are seeds (the most informative first)")
    local_fraction: float = Field(0.5, ge=0, le=1, description="after the seeds, this fraction of "
                                                               "proposals are local moves around the "
                                                               "best genomes (late layers first, cheap "
                                                               "with prefix reuse); the rest come "
                                                               "from the optimizer")
    calibration_texts: int = Field(32, ge=1, description="texts per perplexity task that calibrate "
                                                         "the baselines whose removal sets seed the "
                                                         "search (prune and the benchmarks use the "
                                                         "same setting)")
    metric: Literal["acc", "acc_norm"] = Field("acc", description="multiple-choice metric")
    mc_objective: Literal["likelihood", "accuracy"] = Field(
        "likelihood", description="what the search compares on multiple-choice tasks: the gold "
        "choice's cross-entropy over the choices against the dense base's (likelihood: smooth, "
        "low-noise) or the reported accuracy ratio (accuracy: flips of 1/max_examples); held-out "
        "numbers always use accuracy")
    chance_z: float = Field(2.0, ge=0, description="leave out of the objective the multiple-choice "
                                                   "tasks on which the dense base does not beat chance "
                                                   "by this many standard errors at the top rung "
                                                   "(their scores are noise); 0 keeps every task")
    workers: int = Field(1, ge=1, description="trials evaluated at once; > 1 runs them on Ray actors "
                                              "(pip install \"gptailor-merge[ray]\")")
    ray_address: str | None = Field(None, min_length=1, description="Ray cluster to join (e.g. 10.0.0.1:6379 "
                                                                     "or auto); default: start a local Ray instance")

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if self.ray_address is not None and self.workers == 1:
            raise ValueError(f"ray_address {self.ray_address!r} is set but workers is 1, which searches "
                             "serially without Ray; set workers to the number of Ray actors to start")
        names = optimizer_names()
        if self.optimizer not in names:
            hint = did_you_mean(self.optimizer, names)
            raise ValueError(f"unknown optimizer {self.optimizer!r}: not in nevergrad's registry.{hint} "
                             f"Tested here: {', '.join(OPTIMIZERS)}")
        if not self.merge_methods:
            raise ValueError(f"merge_methods is empty; choose from {', '.join(MERGE_METHODS.names())}")
        for method in self.merge_methods:
            if method not in MERGE_METHODS:
                raise ValueError(MERGE_METHODS.unknown_message(method))
        return self

    def rungs(self) -> list[int]:
        """Example budgets per rung, smallest first; each a prefix of the next. A rung under
        `min_rung_examples` is dropped (the top rung always stays), so nothing is decided on fewer
        examples than the paired test's noise allows."""
        floor = min(self.min_rung_examples, self.max_examples)
        return sorted({n for n in (self.max_examples // self.eta**k for k in range(self.n_rungs))
                       if n >= floor} | {self.max_examples})


DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 256
"""`EvalConfig`'s batch size and tokens per sequence, also the defaults of an `Evaluator` or a
baseline `Calibration` built outside a RunConfig (tests, benchmarks), so both score alike."""

DEFAULT_PREFIX_CACHE_BYTES = 1 << 30
"""Prefix reuse's memory (1 GiB): `EvalConfig.prefix_cache_bytes`' default, and that of every
`PrefixReuse`, `Evaluator` and `Calibration` built outside a RunConfig."""


class EvalConfig(_Strict):
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    max_length: int = Field(DEFAULT_MAX_LENGTH, ge=8, description="tokens per sequence")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    dtype: str = Field("float32", description="dtype of the stitched model and of merges: float32, "
                                              "float16 or bfloat16")
    heldout_examples: int | None = Field(None, ge=1, description="held-out examples per task (None: all)")
    prefix_cache_bytes: int = Field(DEFAULT_PREFIX_CACHE_BYTES, ge=0,
                                    description="memory for hidden states of shared leading layers, "
                                    "reused across trials (scores stay bitwise the same); 0: off")
    shared_context: bool = Field(True, description="score a multiple-choice example's choices in "
                                 "one packed row, the context once (llama, mistral, qwen2/3 with "
                                 "sdpa or eager attention; others fall back); false: one sequence "
                                 "per choice, as lm-eval (equal within float rounding)")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device {self.device!r} is not cpu, cuda or cuda:N")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        return self


def check_device(device: str, source: str = "eval.device") -> None:
    """Before any weight loads: the device is well formed and this torch can use it."""
    if not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"{source}: device {device!r} is not cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{source}: device {device!r} asked for, but this torch sees no CUDA GPU; "
                              "use --device cpu (or install a CUDA build of torch on a GPU machine)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{source}: device {device!r} does not exist; this machine has "
                              f"{torch.cuda.device_count()} GPU(s)")


def _where(loc: tuple, flags: dict[str, str]) -> str:
    """A validation error's place: its config key, and the flag that set it where one did."""
    key = ".".join(map(str, loc))
    flag = next((flags[k] for k in (key, key.rpartition(".")[0]) if k in flags), None)
    return f"{flag} ({key})" if flag else key or "(top)"


class RunConfig(_Strict):
    family: FamilyConfig = FamilyConfig()
    target: TargetConfig = TargetConfig(remove_fraction=0.25)
    tasks: tuple[str, ...] = Field(DEMO_TASKS, description="task names, JSONL paths, hf:/disk: specs")
    search: SearchConfig = SearchConfig()
    eval: EvalConfig = EvalConfig()
    out_dir: str | None = Field(None, description="run folder (default runs/<timestamp>)")

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config", flags: dict[str, str] | None = None) -> RunConfig:
        """`flags`: config key -> the command-line flag that set it, named in the error beside the key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"  {_where(err['loc'], flags or {})}: {err['msg']}" for err in exc.errors()]
            if len(lines) == 1:  # one problem: one line
                raise ConfigError(f"{source} is invalid: {lines[0].strip()}") from None
            raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
