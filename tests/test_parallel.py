"""Parallel search: Ray workers on a local 2-CPU Ray instance, worker death, async resume, errors."""

import json
import os
import signal
import sys
from types import SimpleNamespace

import pytest
from conftest import write_word_tasks  # noqa: E402

from gptailor_merge.core.config import RunConfig
from gptailor_merge.core.errors import (
    ClusterError,
    ConfigError,
    MissingDependencyError,
)
from gptailor_merge.core.genome import Genome
from gptailor_merge.search.space import SearchSpace

SEARCH = dict(optimizer="DiscreteLenglerOnePlusOne", rungs=[1, 3, 9], eta=3, seed=0, progress=False)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """A multiple-choice and a perplexity JSONL task (seeded)."""
    root = tmp_path_factory.mktemp("parallel_tasks")
    write_word_tasks(root)
    return root


def _config(tiny_family_paths, tasks_dir, out, n_trials=10, **search) -> RunConfig:
    base, cands = tiny_family_paths["llama"]
    return RunConfig.from_dict({
        "family": {"base": str(base), "candidates": [str(c) for c in cands]},
        "target": {"layers": 3},
        "tasks": [str(tasks_dir / "mc.jsonl"), str(tasks_dir / "txt.jsonl")],
        "search": {"n_trials": n_trials, "max_examples": 9, **search},
        "eval": {"batch_size": 8, "max_length": 64},
        "out_dir": str(out),
    })


def _space(llama_family) -> SearchSpace:
    return SearchSpace(llama_family.n_layers, llama_family.n_candidates, 3)


def _journal(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


def _assert_each_trial_once(trials: list[dict], n: int) -> None:
    assert [t["index"] for t in trials] == list(range(n))
    assert sorted(t["extra"]["asked"] for t in trials) == list(range(n))
    evaluated = [t["genome_id"] for t in trials if t["status"] != "cached"]
    assert len(evaluated) == len(set(evaluated)), "a genome was evaluated twice"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_two_ray_workers_journal_every_trial_once_and_scores_match_serial(
        local_ray, tiny_family_paths, llama_family, tasks_dir, tmp_path):
    from gptailor_merge.run.optimize import optimize
    from gptailor_merge.run.resolve import load_tasks
    from gptailor_merge.search.evaluator import build_evaluator
    from gptailor_merge.search.journal import RungResult

    config = _config(tiny_family_paths, tasks_dir, tmp_path / "run", n_trials=10, workers=2)
    outcome = optimize(config, progress=False)
    trials = _journal(outcome.run_dir)
    _assert_each_trial_once(trials, 10)
    assert all(t["status"] in ("ok", "cached") for t in trials)
    assert (outcome.run_dir / "best.yaml").is_file()

    best = min((t for t in trials if t["status"] == "ok" and t["rungs"][-1]["n_examples"] == 9),
               key=lambda t: t["loss"])
    serial = build_evaluator(config, llama_family, load_tasks(config))
    for stored in best["rungs"]:
        again = serial.rung_result(Genome.from_dict(best["genome"]), "search", stored["n_examples"])
        assert isinstance(again, RungResult)
        assert again.retention == stored["retention"]
        assert again.metrics == stored["metrics"] and again.losses == stored["losses"]

    # one loop: the parallel journal resumes serially (extended by 3 trials), nothing evaluated twice
    extended = RunConfig.from_dict({**config.model_dump(mode="json"),
                                    "search": {**config.search.model_dump(mode="json"), "n_trials": 13,
                                               "workers": 1}})
    optimize(extended, resume=outcome.run_dir, requested=extended, progress=False, workers=1)
    after = _journal(outcome.run_dir)
    _assert_each_trial_once(after, 13)
    assert after[:10] == trials and all(t["extra"]["workers"] == 1 for t in after[10:])
    evaluated = [t["genome_id"] for t in after if t["status"] == "ok"]
    assert len(evaluated) == len(set(evaluated))


def test_worker_killed_mid_trial_loses_only_that_trial_which_is_requeued(
        local_ray, tiny_family_paths, llama_family, tasks_dir, tmp_path):
    from gptailor_merge.run.parallel import WorkerSpec, ray_pool
    from gptailor_merge.search.loop import run_search_async

    config = _config(tiny_family_paths, tasks_dir, tmp_path, workers=2)
    killed = []
    with ray_pool(WorkerSpec(config, delay_s=0.5), 2) as pool:

        def kill_a_busy_worker(trial):
            busy = pool.busy_pids()
            if not killed and busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])

        result = run_search_async(_space(llama_family), pool, tmp_path, n_trials=6, use_seeds=True,
                                  on_trial=kill_a_busy_worker, **SEARCH)
        assert killed and pool.replaced == 1
    trials = _journal(tmp_path)
    _assert_each_trial_once(trials, 6)
    assert all(t["status"] in ("ok", "cached") for t in trials), [t["error"] for t in trials]
    assert len(result.trials) == 6 and result.best is not None


class InProcessPool:
    """Test double for RayPool: scores jobs in this process, finishing the newest first so trials
    end out of ask order, as they do on real workers."""

    def __init__(self, evaluator, size: int = 2, fail_keys=()) -> None:
        self.evaluator, self.size, self.jobs, self.scored = evaluator, size, [], []
        self.fail_keys = set(fail_keys)  # these trials raise in the worker, as an OOM would

    @property
    def has_idle(self) -> bool:
        return len(self.jobs) < self.size

    def submit(self, job) -> None:
        self.jobs.append(job)

    def next_result(self):
        job = self.jobs.pop()
        self.scored.append(job)
        if job.key in self.fail_keys:
            return job, MemoryError("CUDA out of memory")
        return job, self.evaluator.rung_result(Genome.from_dict(job.genome), job.split, job.n_examples)


def test_async_resume_replays_the_journal_and_evaluates_nothing_twice(
        tiny_family_paths, llama_family, tasks_dir, tmp_path):
    from gptailor_merge.run.resolve import load_tasks
    from gptailor_merge.search.evaluator import build_evaluator
    from gptailor_merge.search.loop import run_search_async

    config = _config(tiny_family_paths, tasks_dir, tmp_path)
    evaluator = build_evaluator(config, llama_family, load_tasks(config))
    space = _space(llama_family)
    run_search_async(space, InProcessPool(evaluator), tmp_path, n_trials=12, **SEARCH)
    full = _journal(tmp_path)
    assert [t["extra"]["asked"] for t in full] != list(range(12)), "trials should finish out of ask order"
    kept = (tmp_path / "journal.jsonl").read_text().splitlines()[:5]  # the driver died after 5 trials
    (tmp_path / "journal.jsonl").write_text("\n".join(kept) + "\n" + '{"index": 5, "gen')  # + a torn line

    pool = InProcessPool(evaluator)
    result = run_search_async(space, pool, tmp_path, n_trials=12, **SEARCH)
    after = _journal(tmp_path)
    assert result.replayed == 5 and after[:5] == full[:5]
    assert [t["index"] for t in after] == list(range(12))
    assert sorted(t["extra"]["asked"] for t in after[5:]) == list(range(5, 12))
    evaluated = [t["genome_id"] for t in after if t["status"] != "cached"]
    assert len(evaluated) == len(set(evaluated))
    assert not {Genome.from_dict(j.genome).genome_id for j in pool.scored} & {t["genome_id"] for t in after[:5]}


def test_a_trial_that_fails_on_its_worker_is_journaled_and_the_search_goes_on(
        tiny_family_paths, llama_family, tasks_dir, tmp_path):
    from gptailor_merge.run.resolve import load_tasks
    from gptailor_merge.search.evaluator import build_evaluator
    from gptailor_merge.search.loop import run_search_async

    config = _config(tiny_family_paths, tasks_dir, tmp_path)
    pool = InProcessPool(build_evaluator(config, llama_family, load_tasks(config)), fail_keys={0, 3})
    result = run_search_async(_space(llama_family), pool, tmp_path, n_trials=8, **SEARCH)
    failed = [t for t in _journal(tmp_path) if t["status"] == "failed"]
    assert sorted(t["extra"]["asked"] for t in failed) == [0, 3]
    assert all(t["error"] == "MemoryError: CUDA out of memory" and t["loss"] == 1.0 for t in failed)
    assert len(result.trials) == 8 and result.best is not None and result.best.status == "ok"


def test_workers_without_ray_say_how_to_install_it(tiny_family_paths, tasks_dir, tmp_path, monkeypatch):
    from gptailor_merge.run.optimize import optimize

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    config = _config(tiny_family_paths, tasks_dir, tmp_path / "run", workers=2)
    with pytest.raises(MissingDependencyError, match=r'pip install "gptailor-merge\[ray\]"') as info:
        optimize(config, progress=False)
    assert "--workers 1" in str(info.value)
    assert not (tmp_path / "run").exists(), "no run folder for a run that cannot start"


def test_unreachable_cluster_names_the_address_and_the_fix():
    from gptailor_merge.run.parallel import WorkerSpec, connect

    def refuse(**_):
        raise ConnectionError("could not connect")

    fake_ray = SimpleNamespace(is_initialized=lambda: False, init=refuse)
    with pytest.raises(ClusterError, match=r"10\.0\.0\.1:6379.*ray start --head"):
        connect(fake_ray, "10.0.0.1:6379", WorkerSpec(RunConfig()), 2)


def test_ray_address_without_workers_and_cli_flags_are_checked(tmp_path):
    import argparse

    from gptailor_merge.cli.optimize import _optimize_args, config_from_args

    with pytest.raises(ConfigError, match="ray_address '10.0.0.1:6379' is set but workers is 1"):
        RunConfig.from_dict({"search": {"ray_address": "10.0.0.1:6379"}})
    with pytest.raises(ConfigError, match="search.workers"):
        RunConfig.from_dict({"search": {"workers": 0}})
    parser = argparse.ArgumentParser()
    _optimize_args(parser)
    config = config_from_args(parser.parse_args(["--workers", "4", "--ray-address", "auto"]))
    assert (config.search.workers, config.search.ray_address) == (4, "auto")


def test_a_serial_journal_resumes_on_a_pool_of_two_without_evaluating_anything_twice(
        tiny_family_paths, llama_family, tasks_dir, tmp_path):
    from gptailor_merge.run.resolve import load_tasks
    from gptailor_merge.search.evaluator import build_evaluator
    from gptailor_merge.search.loop import run_search, run_search_async

    config = _config(tiny_family_paths, tasks_dir, tmp_path)
    evaluator = build_evaluator(config, llama_family, load_tasks(config))
    space = _space(llama_family)
    run_search(space, evaluator, tmp_path, n_trials=6, **SEARCH)  # a pool of one, in this process
    serial = _journal(tmp_path)
    assert [t["extra"]["asked"] for t in serial] == list(range(6))
    assert all(t["extra"]["workers"] == 1 for t in serial)
    pool = InProcessPool(evaluator)
    result = run_search_async(space, pool, tmp_path, n_trials=10, **SEARCH)
    after = _journal(tmp_path)
    assert result.replayed == 6 and after[:6] == serial
    _assert_each_trial_once(after, 10)
    assert all(t["extra"]["workers"] == 2 for t in after[6:])
    assert not {Genome.from_dict(j.genome).genome_id for j in pool.scored} & {t["genome_id"] for t in serial}
