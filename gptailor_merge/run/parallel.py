"""Ray workers for the search: each actor loads the family once and scores trial rungs.

The driver sends references (the RunConfig: model paths, task specs), never tensors; each actor
builds the same Evaluator the serial loop uses (on its GPU when eval.device is cuda) and returns
`RungResult`s. Scheduling is `ray.wait` on the actors' futures (as mergekit-evolve uses Ray actors);
ask/tell, promotion and the journal stay in the driver (`search/loop.py`). Ray is optional and
imported only inside functions here, so the package imports without it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from gptailor_merge.core.config import RunConfig
from gptailor_merge.core.errors import ClusterError, MissingDependencyError, WorkerDiedError
from gptailor_merge.search.journal import RungResult
from gptailor_merge.search.loop import Job

logger = logging.getLogger(__name__)

INSTALL = 'pip install "gptailor-merge[ray]"'
# environment the workers need to find models, tasks and the demo family like the driver does
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "GPTAILOR_CACHE", "TOKENIZERS_PARALLELISM")


def require_ray(workers: int):
    """The `ray` module, or a clear error saying how to install it (or to search serially)."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            f"search.workers is {workers}, which evaluates trials on Ray actors, but Ray is not "
            f"installed ({exc}). Install it with `{INSTALL}`, or search serially with --workers 1."
        ) from exc
    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its evaluator: the run's config, not its tensors.

    `delay_s` is a test hook: each job sleeps that long first, so a test can kill a worker mid-trial.
    """

    config: RunConfig
    threads: int = 1
    delay_s: float = 0.0

    @property
    def gpus(self) -> int:
        return 1 if self.config.eval.device.startswith("cuda") else 0


class ScoringWorker:
    """A Ray actor body: the family, stitcher and evaluator, loaded once per actor."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        from gptailor_merge.run.resolve import load_tasks, resolve_family
        from gptailor_merge.search.evaluator import build_evaluator

        torch.set_num_threads(spec.threads)  # one actor per CPU share: more threads only contend
        family, _ = resolve_family(spec.config, progress=False)
        self.evaluator = build_evaluator(spec.config, family, load_tasks(spec.config))
        self.delay_s = spec.delay_s

    def pid(self) -> int:
        return os.getpid()

    def rung(self, genome: dict, split: str, n_examples: int) -> RungResult:
        from gptailor_merge.core.genome import Genome

        if self.delay_s:
            time.sleep(self.delay_s)
        return self.evaluator.rung_result(Genome.from_dict(genome), split, n_examples)


class RayPool:
    """`size` ScoringWorker actors, one job each at a time. A worker that dies is replaced and its
    job sent again (up to `max_deaths` times per trial, then the trial fails with WorkerDiedError)."""

    def __init__(self, ray, spec: WorkerSpec, size: int, *, max_deaths: int = 2) -> None:
        self.ray, self.spec, self.size, self.max_deaths = ray, spec, size, max_deaths
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        env["OMP_NUM_THREADS"] = str(spec.threads)
        self._actor_cls = ray.remote(ScoringWorker).options(
            num_cpus=spec.threads, num_gpus=spec.gpus, runtime_env={"env_vars": env})
        self._actors = [self._actor_cls.remote(spec) for _ in range(size)]
        self._pids = [a.pid.remote() for a in self._actors]
        self._wait_ready()
        self._idle = list(range(size))
        self._running: dict = {}  # ObjectRef -> (slot, job)
        self._deaths: Counter[int] = Counter()
        self._deaths_in_a_row = 0  # worker deaths since a job last came back from a live worker
        self.replaced = 0

    def _wait_ready(self) -> None:
        """Block until every actor has loaded the family; an actor that cannot start raises here,
        before the first trial, with the worker's own error."""
        start = time.perf_counter()
        try:
            self.ray.get(self._pids)
        except self.ray.exceptions.RayError as exc:
            self.close()
            raise ClusterError(f"a Ray worker failed to start (loading the family, tasks or "
                               f"tokenizer): {exc}") from exc
        logger.info("%d Ray workers ready in %.1fs", self.size, time.perf_counter() - start)

    @property
    def has_idle(self) -> bool:
        return bool(self._idle)

    def submit(self, job: Job) -> None:
        self._dispatch(self._idle.pop(0), job)

    def _dispatch(self, slot: int, job: Job) -> None:
        ref = self._actors[slot].rung.remote(job.genome, job.split, job.n_examples)
        self._running[ref] = (slot, job)

    def next_result(self) -> tuple[Job, RungResult | BaseException]:
        """The next finished job with its RungResult, or the exception it raised in the worker."""
        errors = self.ray.exceptions
        while True:
            [ref], _ = self.ray.wait(list(self._running), num_returns=1)
            slot, job = self._running.pop(ref)
            try:
                result = self.ray.get(ref)
            except errors.RayActorError as exc:  # the process died (killed, OOM, node lost)
                outcome = self._worker_died(slot, job, exc)
                if outcome is None:
                    continue
                return job, outcome
            except errors.RayTaskError as exc:  # the job raised: the trial fails, the worker lives
                self._idle.append(slot)
                self._deaths_in_a_row = 0
                return job, exc.cause if isinstance(exc.cause, BaseException) else exc
            self._idle.append(slot)
            self._deaths_in_a_row = 0
            return job, result

    def _worker_died(self, slot: int, job: Job, exc: BaseException) -> WorkerDiedError | None:
        """Replace the dead actor; send the job again, or give it up after `max_deaths` deaths."""
        self._deaths[job.key] += 1
        self._deaths_in_a_row += 1
        if self._deaths_in_a_row > 2 * self.size + 1:  # e.g. every new worker fails to load the family
            raise ClusterError(f"{self._deaths_in_a_row} Ray workers died in a row without finishing a "
                               f"job; last error: {exc}. Check the workers' logs (RAM/GPU memory, paths).")
        self._replace(slot)
        if self._deaths[job.key] > self.max_deaths:
            self._idle.append(slot)
            return WorkerDiedError(f"the worker scoring this trial died {self._deaths[job.key]} times "
                                   f"(last: {type(exc).__name__}); it may not fit in worker memory")
        logger.warning("Ray worker %d died during trial (asked %d, %d examples); replaced it and "
                       "re-queued the trial: %s", slot, job.key, job.n_examples, type(exc).__name__)
        self._dispatch(slot, job)
        return None

    def _replace(self, slot: int) -> None:
        try:
            self.ray.kill(self._actors[slot], no_restart=True)
        except Exception:  # already gone
            pass
        self._actors[slot] = self._actor_cls.remote(self.spec)
        self._pids[slot] = self._actors[slot].pid.remote()
        self.replaced += 1

    def busy_pids(self) -> list[int]:
        """Process ids of the actors scoring a job now (tests kill one to check recovery)."""
        return [self.ray.get(self._pids[slot]) for slot, _ in self._running.values()]

    def close(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass


def connect(ray, address: str | None, spec: WorkerSpec, workers: int) -> bool:
    """Join `address`, or start a local Ray instance sized for the workers; True if we started one.
    A Ray already initialized in this process (e.g. by a test or a notebook) is used as it is."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is None:
        options["num_cpus"] = max(os.cpu_count() or 1, workers * spec.threads)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, TimeoutError) as exc:
        raise ClusterError(
            f"cannot join the Ray cluster at {address!r} ({exc}). Start it with `ray start --head` and "
            "pass the head's address (e.g. --ray-address 10.0.0.1:6379), or drop --ray-address to "
            "start a local Ray instance."
        ) from exc
    return True


def check_capacity(ray, spec: WorkerSpec, workers: int, started: bool) -> None:
    """Fail fast when a Ray instance we started cannot hold the workers (they would wait forever);
    on a joined cluster only warn, since an autoscaler may add nodes."""
    have = ray.cluster_resources()
    need = {"CPU": workers * spec.threads, "GPU": workers * spec.gpus}
    short = {k: (have.get(k, 0), v) for k, v in need.items() if v and have.get(k, 0) < v}
    if not short:
        return
    text = ", ".join(f"{k}: {v} needed, {int(h)} available" for k, (h, v) in short.items())
    if started:
        raise ClusterError(f"{workers} workers need more than this machine has ({text}); "
                           "lower --workers, or join a cluster with --ray-address")
    logger.warning("the Ray cluster is short for %d workers (%s); waiting for it to grow", workers, text)


@contextmanager
def ray_pool(spec: WorkerSpec, workers: int, *, address: str | None = None) -> Iterator[RayPool]:
    """A RayPool of `workers` actors; the actors (and a Ray instance we started) go away after."""
    ray = require_ray(workers)
    started = connect(ray, address, spec, workers)
    pool = None
    try:
        check_capacity(ray, spec, workers, started)
        pool = RayPool(ray, spec, workers)
        yield pool
    finally:
        if pool is not None:
            pool.close()
        if started:
            ray.shutdown()
