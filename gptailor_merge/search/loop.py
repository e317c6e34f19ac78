"""The one search loop: ask/tell with up to `pool.size` trials in flight, told as they finish.

A serial search is a pool of one (`LocalPool`, scoring in this process); parallel workers are a
pool of N (`run/parallel.py`: Ray actors). The driver keeps nevergrad, successive-halving promotion
and the journal; a pool only scores (genome, split, n_examples) jobs. Journal records carry the ask
order (`extra["asked"]`) and the pool size (`extra["workers"]`). Resume: a journal written by a pool
of one, resumed by a pool of one, is replayed by asking again and comparing (a resumed run proposes
exactly what an uninterrupted one does); any other journal is told to a fresh optimizer trial by
trial (suggest, ask, tell), so a serial run can resume in parallel and back. Nothing journaled is
lost or evaluated again; trials in flight when the driver died are asked afresh.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from gptailor_merge.core.errors import GenomeError, ResumeError
from gptailor_merge.core.genome import Genome
from gptailor_merge.search.halving import promoted, told_loss
from gptailor_merge.search.journal import Journal, RungResult, Trial
from gptailor_merge.search.racing import keeps_racing
from gptailor_merge.search.result import SearchResult, pareto_front
from gptailor_merge.search.search import Proposer, make_optimizer, prioritized_seeds
from gptailor_merge.search.space import SearchSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One rung of one trial, as sent to a worker; `key` is the trial's ask index."""

    key: int
    genome: dict
    n_examples: int
    split: str = "search"


class Pool(Protocol):
    """Workers that score jobs; `next_result` blocks until one finishes (result or its error)."""

    size: int

    @property
    def has_idle(self) -> bool: ...

    def submit(self, job: Job) -> None: ...

    def next_result(self) -> tuple[Job, RungResult | BaseException]: ...


@dataclass
class _Running:
    """A trial in flight: its nevergrad candidate and the rungs finished so far."""

    key: int
    candidate: object
    genome: Genome
    seeded: bool
    origin: str = "optimizer"
    start: float = field(default_factory=time.perf_counter)
    results: list[RungResult] = field(default_factory=list)
    error: str | None = None


class _Board:
    """What the driver knows from finished trials, kept exactly as the serial loop keeps it."""

    def __init__(self, rungs: Sequence[int]) -> None:
        self.top = rungs[-1]
        self.trials: list[Trial] = []
        self.by_genome: dict[str, Trial] = {}
        self.rung_losses: dict[int, list[float]] = {n: [] for n in rungs}
        self.best: Trial | None = None

    def record(self, trial: Trial) -> None:
        if trial.status == "ok":
            for r in trial.rungs:
                self.rung_losses[r.n_examples].append(1.0 - r.retention)
        self.trials.append(trial)
        self.by_genome.setdefault(trial.genome_id, trial)
        if trial.status == "ok" and trial.fidelity == self.top and (self.best is None or trial.loss < self.best.loss):
            self.best = trial


def _tell(opt, candidate, trial: Trial) -> None:
    if trial.status == "failed":
        opt.tell(candidate, 1.0, constraint_violation=[1.0])
    else:
        opt.tell(candidate, trial.extra.get("told", trial.loss))


def exact_replay(done: Sequence[Trial], pool_size: int) -> bool:
    """A journal written by a pool of one (or by the old serial loop), resumed by a pool of one:
    re-asking reproduces its proposals exactly."""
    return pool_size == 1 and all(t.extra.get("workers", 1 if "asked" not in t.extra else 0) == 1
                                  for t in done)


def _replay(opt, space: SearchSpace, done: Sequence[Trial], board: _Board) -> None:
    """Tell a fresh optimizer every journaled trial, in journal order, without evaluating any."""
    for trial in done:
        try:
            opt.suggest(space.encode(Genome.from_dict(trial.genome)))
        except (GenomeError, ValueError, KeyError) as exc:
            raise ResumeError(f"trial {trial.index} of the journal ({trial.genome_id}) does not fit this "
                              f"config's search space ({exc}); resume with the run's own config.yaml") from exc
        _tell(opt, opt.ask(), trial)
        board.record(trial)


@dataclass(frozen=True)
class Promotion:
    """How a trial earns the next rung: `race` pairs it with the incumbent (the best full-fidelity
    trial) on the same examples and drops it only once clearly worse (`search.racing`); `asha`
    keeps the top 1/eta of the rung's unpaired losses (the rule before racing)."""

    rule: str = "race"
    eta: int = 3
    race_z: float = 1.96

    def promotes(self, outcome: RungResult, board: _Board) -> bool:
        if self.rule == "asha":
            return promoted(board.rung_losses[outcome.n_examples], 1.0 - outcome.retention, self.eta)
        incumbent = board.best.rungs[-1].paired if board.best is not None else None
        return keeps_racing(outcome.paired, incumbent or None, self.race_z)


def _advance(run: _Running, outcome: RungResult | BaseException, board: _Board, rungs: Sequence[int],
             promotion: Promotion) -> int | None:
    """The next rung to score, or None when the trial is finished (top rung, not promoted, failed)."""
    if isinstance(outcome, BaseException):
        run.error = f"{type(outcome).__name__}: {outcome}"
        return None
    if not math.isfinite(outcome.retention):
        run.error = "FloatingPointError: retention is not finite (NaN scores)"
        return None
    run.results.append(outcome)
    level = rungs.index(outcome.n_examples)
    if level == len(rungs) - 1 or not promotion.promotes(outcome, board):
        return None
    return rungs[level + 1]


def _finished(run: _Running, index: int, workers: int) -> Trial:
    seconds = time.perf_counter() - run.start
    g, extra = run.genome, {"asked": run.key, "origin": run.origin, "workers": workers}
    if run.error is not None:
        logger.warning("trial %d (asked %d) failed: %s", index, run.key, run.error)
        return Trial(index, g.to_dict(), g.genome_id, tuple(run.results), 1.0, seconds, status="failed",
                     error=run.error, seeded=run.seeded, extra=extra)
    return Trial(index, g.to_dict(), g.genome_id, tuple(run.results), 1.0 - run.results[-1].retention,
                 seconds, seeded=run.seeded, extra=extra)


def _cached(run: _Running, prior: Trial, index: int, workers: int) -> Trial:
    g = run.genome
    return Trial(index, g.to_dict(), g.genome_id, prior.rungs, prior.loss, 0.0, status="cached",
                 seeded=run.seeded, extra={"asked": run.key, "origin": run.origin, "workers": workers})


class LocalPool:
    """A pool of one that scores each job in this process: the serial search."""

    size = 1

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator
        self._job: Job | None = None

    @property
    def has_idle(self) -> bool:
        return self._job is None

    def submit(self, job: Job) -> None:
        self._job = job

    def next_result(self) -> tuple[Job, RungResult | BaseException]:
        job, self._job = self._job, None
        try:
            return job, self.evaluator.rung_result(Genome.from_dict(job.genome), job.split, job.n_examples)
        except Exception as exc:  # a failed trial (OOM, NaN) is journaled and the search goes on
            return job, exc


def run_search(space: SearchSpace, evaluator, run_dir: Path, **kwargs) -> SearchResult:
    """The serial search: `run_search_async` over a pool of one."""
    return run_search_async(space, LocalPool(evaluator), run_dir, **kwargs)


def run_search_async(
    space: SearchSpace,
    pool: Pool,
    run_dir: Path,
    *,
    optimizer: str,
    n_trials: int,
    rungs: Sequence[int],
    eta: int = 3,
    promotion: str = "race",
    race_z: float = 1.96,
    seed: int = 0,
    time_budget_s: float | None = None,
    use_seeds: bool = True,
    extra_seed_removals: Sequence[Sequence[int]] = (),
    seed_fraction: float = 1.0,
    local_fraction: float = 0.0,
    progress: bool = True,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Run (or resume) the search with `pool.size` trials in flight; same arguments as `run_search`."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    rungs = sorted(rungs)
    journal = Journal(run_dir / "journal.jsonl")
    done = journal.load()[:n_trials]
    opt = make_optimizer(optimizer, space.parametrization(seed), n_trials, num_workers=pool.size)
    board = _Board(rungs)
    rule = Promotion(promotion, eta, race_z)
    limit = max(1, int(seed_fraction * n_trials))
    if any(t.extra.get("origin", "seed") != "seed" for t in done):  # the seed phase is over: a run
        limit = sum(1 for t in done if t.extra.get("origin") == "seed")  # extended by --trials keeps it
    seeds = prioritized_seeds(space, extra_seed_removals, limit) if use_seeds else []
    seeded_ids = {g.genome_id for g in seeds}
    proposer = Proposer(space, seed, local_fraction)

    def ask(index: int, known: set[str]):
        """The proposal of ask number `index`: a seed, a local move or the optimizer's own."""
        local = proposer.local(index, board.trials, rungs[-1], known) if index >= len(seeds) else None
        if local is not None:
            opt.suggest(space.encode(local))
        candidate = opt.ask()
        return candidate, "seed" if index < len(seeds) else "local" if local is not None else "optimizer"

    if exact_replay(done, pool.size):
        for genome in reversed(seeds):  # suggest is LIFO: the first seed is asked first
            opt.suggest(space.encode(genome))
        for index, trial in enumerate(done):  # the same deterministic proposals, journaled results
            candidate, _ = ask(index, set(board.by_genome))
            proposed = space.decode(candidate.value).genome_id
            if proposed != trial.genome_id:
                raise ResumeError(f"trial {index} of the journal ({trial.genome_id}) is not what this config "
                                  f"proposes ({proposed}); resume with the run's own config.yaml")
            _tell(opt, candidate, trial)
            board.record(trial)
    else:
        _replay(opt, space, done, board)
        for genome in reversed([g for g in seeds if g.genome_id not in board.by_genome]):
            opt.suggest(space.encode(genome))
    bar = tqdm(total=n_trials, desc="search" if pool.size == 1 else f"search x{pool.size}", disable=not progress, initial=len(done))

    def finish(trial: Trial, candidate) -> None:
        if trial.status == "ok" and trial.extra.get("told") is None:
            losses = {**board.rung_losses, trial.fidelity: [*board.rung_losses[trial.fidelity], trial.loss]}
            trial = replace(trial, extra={**trial.extra, "told": told_loss(trial.loss, trial.fidelity,
                                                                             losses, rungs[-1])})
        journal.append(trial)
        _tell(opt, candidate, trial)
        board.record(trial)
        if on_trial:
            on_trial(trial)
        bar.update(1)
        bar.set_postfix(best=f"{1 - board.best.loss:.3f}" if board.best else "-", n=trial.fidelity)

    running: dict[int, _Running] = {}
    in_flight: dict[str, int] = {}  # genome id -> key of the trial scoring it
    twins: dict[str, list[_Running]] = {}  # re-proposals of a genome in flight: cached when it ends
    asked, out_of_time = len(done), False
    while True:
        while pool.has_idle and asked < n_trials and not out_of_time:
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                logger.info("wall-clock budget of %.0fs reached after %d trials were asked", time_budget_s, asked)
                out_of_time = True
                break
            candidate, origin = ask(asked, set(board.by_genome) | set(in_flight))
            genome = space.decode(candidate.value)
            run = _Running(asked, candidate, genome, genome.genome_id in seeded_ids, origin=origin)
            asked += 1
            gid = genome.genome_id
            if gid in board.by_genome:  # the optimizer re-proposed a finished genome
                finish(_cached(run, board.by_genome[gid], len(board.trials), pool.size), candidate)
            elif gid in in_flight:
                twins.setdefault(gid, []).append(run)
            else:
                running[run.key], in_flight[gid] = run, run.key
                pool.submit(Job(run.key, genome.to_dict(), rungs[0]))
        if not running:
            break
        job, outcome = pool.next_result()
        run = running[job.key]
        next_rung = _advance(run, outcome, board, rungs, rule)
        if next_rung is not None:  # promoted: the freed worker scores the next rung
            pool.submit(Job(run.key, job.genome, next_rung))
            continue
        del running[run.key], in_flight[run.genome.genome_id]
        trial = _finished(run, len(board.trials), pool.size)
        finish(trial, run.candidate)
        for twin in twins.pop(trial.genome_id, []):
            finish(_cached(twin, trial, len(board.trials), pool.size), twin.candidate)
    bar.close()
    return SearchResult(board.trials, board.best, pareto_front(board.trials, rungs[-1]), list(rungs),
                        optimizer, time.perf_counter() - start, len(done))
