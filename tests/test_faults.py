"""The faults a user meets (issue 15): nothing the user owns is lost, and each is a one-line error.

Each test states one case and asserts what is on disk afterwards (files intact, journal lines kept,
no run folder left) and the message, not only the exit code. A tiny 4-layer family and word tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptailor_merge.cli.app import main
from tests.conftest import write_word_tasks

NAMES = ["llama", "chat", "math", "code"]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """(root, base, candidates, recipe) of a private tiny family: tests may break their copies."""
    from gptailor_merge.core.genome import Genome, LayerSpec
    from gptailor_merge.demo.synthetic import make_synthetic_family
    from gptailor_merge.family.family import Family
    from gptailor_merge.materialize.recipe import FamilyRefs, genome_to_recipe

    root = tmp_path_factory.mktemp("faults")
    base, cands = make_synthetic_family(root / "fam", n_layers=4, seed=3)
    write_word_tasks(root)
    family = Family.load(base, cands, names=NAMES)
    genome = Genome(4, 3, (LayerSpec(0, (1,)), LayerSpec(2, (0, 2), lam=0.7), LayerSpec(3)))
    recipe = genome_to_recipe(genome, FamilyRefs.of(family)).save(root / "recipe.yaml")
    return root, base, cands, recipe


def _config(fam, out: Path, **search) -> dict:
    root, base, cands, _ = fam
    return {"family": {"base": str(base), "candidates": [str(c) for c in cands], "names": NAMES},
            "target": {"layers": 3}, "tasks": [str(root / "mc.jsonl"), str(root / "txt.jsonl")],
            "search": {"n_trials": 5, "max_examples": 1000, "chance_z": 0, **search},
            "eval": {"batch_size": 8, "max_length": 32, "heldout_examples": 4}, "out_dir": str(out)}


def _write_config(fam, path: Path, out: Path, **search) -> Path:
    path.write_text(yaml.safe_dump(_config(fam, out, **search)))
    return path


@pytest.fixture(scope="module")
def finished_run(fam, tmp_path_factory):
    """A finished 5-trial run (max_examples 1000, above what the tasks hold)."""
    out = tmp_path_factory.mktemp("run") / "run"
    config = _write_config(fam, out.parent / "c.yaml", out)
    assert main(["-q", "optimize", "--config", str(config)]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


def _err(capsys) -> str:
    """The one error line (warnings may come before it), and nothing after it."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. --overwrite ---------------------------------------------------------------------------
def test_overwrite_refuses_the_current_folder_and_keeps_its_files(fam, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["-q", "materialize", str(fam[3]), ".", "--overwrite"]) == 2
    assert "current folder" in _err(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_the_recipes_own_base_model_folder(fam, capsys):
    base = fam[1]
    before = _snapshot(base)
    assert main(["-q", "materialize", str(fam[3]), str(base), "--overwrite"]) == 2
    assert "reads" in _err(capsys)
    assert _snapshot(base) == before


def test_push_dry_run_into_its_own_run_folder_is_refused_and_the_run_is_intact(run_copy, capsys):
    before = _snapshot(run_copy)
    assert main(["-q", "push", str(run_copy), "me/x", "--dry-run", str(run_copy), "--overwrite"]) == 2
    assert "run folder" in _err(capsys)
    assert _snapshot(run_copy) == before


def test_overwrite_refuses_a_folder_it_did_not_write(fam, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("years")
    assert main(["-q", "materialize", str(fam[3]), str(tmp_path / "out"), "--overwrite"]) == 2
    assert "did not write it" in _err(capsys)
    assert (tmp_path / "out" / "thesis.tex").read_text() == "years"


def test_outputs_are_marked_0755_and_replaced_by_overwrite(fam, tmp_path):
    from gptailor_merge.core.outputs import MARKER

    out = tmp_path / "model"
    assert main(["-q", "materialize", str(fam[3]), str(out)]) == 0
    assert (out / MARKER).is_file() and (out / "config.json").is_file()
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~mask  # 0755 under the usual umask 022
    (out / "stale.bin").write_text("x")
    assert main(["-q", "materialize", str(fam[3]), str(out), "--overwrite"]) == 0
    assert not (out / "stale.bin").exists() and (out / "config.json").is_file()


def test_a_failed_write_leaves_no_temp_folder_and_dead_ones_are_swept(fam, tmp_path, monkeypatch, capsys):
    import mergekit.merge

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".model.{dead.pid}.abc.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_text("half")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mergekit.merge, "run_merge", boom)
    with pytest.raises(OSError):
        main(["-q", "materialize", str(fam[3]), str(tmp_path / "model")])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the sweep took the old, the failure its own


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_one_line_error(fam, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["-q", "materialize", str(fam[3]), str(ro / "model")]) == 2
        assert "cannot write" in _err(capsys) and str(ro) in capsys.readouterr().err + str(ro)
        assert main(["-q", "optimize", "--config", str(_write_config(fam, tmp_path / "c.yaml", ro / "run"))]) == 2
        assert "cannot" in _err(capsys)
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_read_only_output_folder_check_names_the_folder(tmp_path, monkeypatch):
    """Also as root: the writability check itself (os.access) is what refuses."""
    from gptailor_merge.core.errors import OutputNotWritableError
    from gptailor_merge.core.outputs import prepare_output

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputNotWritableError, match=str(tmp_path)):
        prepare_output(tmp_path / "model", overwrite=False)


# ---- 2. run folders ---------------------------------------------------------------------------
def test_a_second_optimize_on_a_locked_run_is_refused_at_once(run_copy, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from gptailor_merge.run.run_folder import _process_start

        (run_copy / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename,
                                                    "start": _process_start(sleeper.pid), "since": "now"}))
        before = _snapshot(run_copy)
        assert main(["-q", "optimize", "--resume", str(run_copy)]) == 2
        assert f"in use by process {sleeper.pid}" in _err(capsys)
        assert _snapshot(run_copy) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(run_copy, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "then"}))
    lines = (run_copy / "journal.jsonl").read_text().splitlines()
    assert main(["-q", "optimize", "--resume", str(run_copy), "--trials", "6"]) == 0
    assert not (run_copy / ".lock").exists()
    assert (run_copy / "journal.jsonl").read_text().splitlines()[:len(lines)] == lines


def test_edited_tasks_are_refused_on_resume_before_any_trial(run_copy, fam, tmp_path, capsys):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["tasks"] = config["tasks"][:1]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    journal = (run_copy / "journal.jsonl").read_bytes()
    assert main(["-q", "optimize", "--resume", str(run_copy)]) == 2
    assert "tasks" in _err(capsys)
    assert (run_copy / "journal.jsonl").read_bytes() == journal


def test_edited_task_file_content_is_refused_on_resume(run_copy, fam, tmp_path, capsys):
    txt = tmp_path / "txt.jsonl"
    shutil.copy(fam[0] / "txt.jsonl", txt)
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["tasks"][1] = str(txt)
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    run_json = json.loads((run_copy / "run.json").read_text())
    run_json["fingerprint"]["tasks"][1][0] = str(txt)  # same spec as the run; only the content will change
    (run_copy / "run.json").write_text(json.dumps(run_json))
    with txt.open("a") as handle:
        handle.write(json.dumps({"text": "a new line that changes the task"}) + "\n")
    journal = (run_copy / "journal.jsonl").read_bytes()
    assert main(["-q", "optimize", "--resume", str(run_copy)]) == 2
    assert "tasks" in _err(capsys)
    assert (run_copy / "journal.jsonl").read_bytes() == journal


def test_a_seed_edited_in_the_runs_config_is_refused(run_copy, capsys):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["search"]["seed"] = 7
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["-q", "optimize", "--resume", str(run_copy)]) == 2
    assert "seed" in _err(capsys)


def test_resuming_a_run_whose_model_folder_moved_names_the_folder_and_the_fix(fam, run_copy, tmp_path, capsys):
    moved = tmp_path / "moved-base"
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["family"]["base"] = str(moved)  # as if the run had been searched on a base since moved away
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    header = json.loads((run_copy / "run.json").read_text())
    header["fingerprint"]["base"] = str(moved)
    (run_copy / "run.json").write_text(json.dumps(header))
    journal = (run_copy / "journal.jsonl").read_bytes()
    assert main(["-q", "optimize", "--resume", str(run_copy)]) == 2
    err = _err(capsys)
    assert f"model folder '{moved}' does not exist" in err and "a symlink" in err
    assert (run_copy / "journal.jsonl").read_bytes() == journal
    os.symlink(fam[1], moved)  # the fix the message names
    assert main(["-q", "optimize", "--resume", str(run_copy)]) == 0


def test_resume_trials_extends_the_run_and_records_it(run_copy):
    assert main(["-q", "optimize", "--resume", str(run_copy), "--trials", "7"]) == 0
    assert len((run_copy / "journal.jsonl").read_text().splitlines()) == 7
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["search"]["n_trials"] == 7


def test_resume_reuses_the_runs_baseline_seed_removals_without_calibrating(run_copy, monkeypatch):
    import gptailor_merge.run.optimize as optimize

    stored = json.loads((run_copy / optimize.SEED_FILE).read_text())
    assert stored["removals"] and all(len(r) == 1 for r in stored["removals"])  # 4 -> 3 layers

    def calibrate(*args, **kwargs):
        raise AssertionError("a resumed run calibrated its baseline seeds again")

    monkeypatch.setattr(optimize, "baseline_seed_removals", calibrate)
    assert main(["-q", "optimize", "--resume", str(run_copy), "--trials", "6"]) == 0
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["search"]["seed_calibration_seconds"] == round(stored["seconds"], 1)


def test_a_run_killed_while_scoring_validation_resumes_without_scoring_those_again(fam, finished_run, tmp_path,
                                                                                    monkeypatch):
    from gptailor_merge.search.evaluator import Evaluator
    from gptailor_merge.search.score_cache import VALIDATION_SCORES

    score, calls = Evaluator.score, []

    def killed_after_two(self, genome, split, n):
        if split == "validation":
            calls.append(genome.genome_id)
            if len(calls) > 2:
                raise KeyboardInterrupt
        return score(self, genome, split, n)

    out = tmp_path / "run"
    config = _write_config(fam, tmp_path / "c.yaml", out)
    monkeypatch.setattr(Evaluator, "score", killed_after_two)
    assert main(["-q", "optimize", "--config", str(config)]) == 130  # "interrupted"
    assert not (out / "summary.json").exists()
    assert len((out / VALIDATION_SCORES).read_text().splitlines()) == 2  # the reference and one contender
    first = list(calls)
    calls.clear()
    monkeypatch.setattr(Evaluator, "score", lambda self, g, split, n: (calls.append(g.genome_id) if split ==
                                                                        "validation" else None) or score(self, g,
                                                                                                         split, n))
    assert main(["-q", "optimize", "--resume", str(out)]) == 0
    assert not set(first[:2]) & set(calls)  # the two finished scores were read back, not scored again
    resumed, clean = (json.loads((d / "summary.json").read_text())["selection"] for d in (out, finished_run))
    assert resumed == clean  # the same pick, bitwise, as the run that was never killed


def test_seed_removals_handed_to_optimize_are_used_without_calibrating(fam, tmp_path, monkeypatch):
    import gptailor_merge.run.optimize as optimize
    from gptailor_merge.core.config import RunConfig

    def calibrate(*args, **kwargs):
        raise AssertionError("the run calibrated seeds it was handed")

    monkeypatch.setattr(optimize, "baseline_seed_removals", calibrate)
    given = optimize.SeedRemovals({"shortgpt": [1], "angular": [2], "reverse": [3], "greedy-ppl": [1]}, 2.5)
    with pytest.raises(ValueError, match="missing .*greedy-ppl"):
        optimize.SeedRemovals({"shortgpt": [1]}, 0.0).checked()
    config = RunConfig.from_dict(_config(fam, tmp_path / "run"))
    outcome = optimize.optimize(config, progress=False, heldout=False, seed_removals=given)
    stored = json.loads((outcome.run_dir / optimize.SEED_FILE).read_text())
    assert dict(zip(stored["methods"], stored["removals"], strict=True)) == given.checked()
    assert stored["computed_by"] == "caller" and outcome.summary["search"]["seed_calibration_seconds"] == 2.5


@pytest.mark.parametrize("flags, named", [(["--seed", "3"], "search.seed"),
                                          (["--layers", "2"], "target.layers"),
                                          (["--optimizer", "RandomSearch"], "search.optimizer"),
                                          (["--trials", "2"], "below the 5 trials")])
def test_resume_flags_that_would_change_the_search_are_refused(run_copy, capsys, flags, named):
    before = _snapshot(run_copy)
    assert main(["-q", "optimize", "--resume", str(run_copy), *flags]) == 2
    assert named in _err(capsys)
    assert _snapshot(run_copy) == before


def test_an_impossible_target_leaves_no_run_folder(fam, tmp_path, capsys):
    config = _write_config(fam, tmp_path / "c.yaml", tmp_path / "run")
    assert main(["-q", "optimize", "--config", str(config), "--layers", "9"]) == 2
    assert "9" in _err(capsys)
    assert not (tmp_path / "run").exists()


def test_a_corrupt_run_json_is_a_one_line_error_naming_it(run_copy, capsys):
    (run_copy / "run.json").write_text('{"fingerprint": ')
    journal = (run_copy / "journal.jsonl").read_bytes()
    assert main(["-q", "optimize", "--resume", str(run_copy)]) == 2
    assert "run.json" in _err(capsys)
    assert (run_copy / "journal.jsonl").read_bytes() == journal


# ---- 3. the journal -----------------------------------------------------------------------------
def test_a_bad_middle_line_names_file_and_line_and_keeps_every_line(run_copy, capsys):
    path = run_copy / "journal.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    for argv in (["report", str(run_copy)], ["optimize", "--resume", str(run_copy)]):
        assert main(["-q", *argv]) == 2
        assert f"{path} line 3" in _err(capsys)
        assert path.read_bytes() == before


def test_a_torn_last_line_is_skipped_read_only_and_cut_by_the_next_append(run_copy):
    from gptailor_merge.search.journal import Journal

    path = run_copy / "journal.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"index": 5, "gen')
    journal = Journal(path)
    assert len(journal.load()) == 5
    assert path.read_bytes() == whole + b'{"index": 5, "gen'  # loading never writes
    journal.append(journal.load()[-1])
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"\n") == 6


def test_records_carry_a_format_version_and_old_unversioned_ones_still_read(run_copy, capsys):
    from gptailor_merge.search.journal import JOURNAL_VERSION, Journal

    path = run_copy / "journal.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["v"] == JOURNAL_VERSION for r in records)
    old = [{k: v for k, v in r.items() if k != "v"} for r in records]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert [t.index for t in Journal(path).load()] == list(range(5))
    old[1]["v"] = JOURNAL_VERSION + 1
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert main(["-q", "report", str(run_copy)]) == 2
    assert "line 2" in (err := _err(capsys)) and "format version" in err


# ---- 4. errors, not tracebacks ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "header", "empty"])
def test_a_damaged_safetensors_file_is_a_one_line_error_naming_it(fam, tmp_path, capsys, damage):
    root, base, cands, recipe = fam
    bad = tmp_path / "cand0"
    shutil.copytree(cands[0], bad)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "header": data[:8] + b"{not json" + data[17:],
                         "empty": b""}[damage])
    text = recipe.read_text().replace(str(Path(cands[0]).resolve()), str(bad))
    (tmp_path / "r.yaml").write_text(text)
    assert main(["-q", "materialize", str(tmp_path / "r.yaml"), str(tmp_path / "out")]) == 2
    err = _err(capsys)
    assert "ModelFileError" in err and str(weights) in err
    assert not (tmp_path / "out").exists()


def test_an_invalid_config_json_is_a_one_line_error_naming_it(fam, tmp_path, capsys):
    bad = tmp_path / "cand0"
    shutil.copytree(fam[2][0], bad)
    (bad / "config.json").write_text('{"model_type": "llama", ')
    (tmp_path / "r.yaml").write_text(fam[3].read_text().replace(str(Path(fam[2][0]).resolve()), str(bad)))
    assert main(["-q", "materialize", str(tmp_path / "r.yaml"), str(tmp_path / "out")]) == 2
    assert str(bad / "config.json") in _err(capsys)


def test_a_task_file_that_is_not_utf8_is_a_one_line_error_and_leaves_no_run(fam, tmp_path, capsys):
    task = tmp_path / "latin1.jsonl"
    task.write_bytes('{"text": "caf\u00e9 cr\u00e8me"}\n'.encode("latin-1") * 6)
    config = _write_config(fam, tmp_path / "c.yaml", tmp_path / "run")
    assert main(["-q", "optimize", "--config", str(config), "--tasks", str(task)]) == 2
    err = _err(capsys)
    assert "UTF-8" in err and str(task) in err
    assert not (tmp_path / "run").exists()


def test_an_unknown_device_or_dtype_fails_at_config_load(fam, tmp_path, capsys):
    data = _config(fam, tmp_path / "run")
    data["eval"]["device"] = "tpu"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["-q", "optimize", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "eval: " in (err := _err(capsys)) and "device 'tpu'" in err and "c.yaml" in err
    data["eval"] |= {"device": "cpu", "dtype": "float8"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["-q", "optimize", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "dtype 'float8'" in _err(capsys)
    assert not (tmp_path / "run").exists()


def test_cuda_on_a_cpu_only_torch_is_refused_before_any_merge(fam, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["-q", "materialize", str(fam[3]), str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert "no CUDA" in _err(capsys)
    assert not (tmp_path / "out").exists()


def test_lm_eval_task_offline_is_a_one_line_error(fam, tmp_path, capsys, monkeypatch):
    from gptailor_merge.scoring import lm_eval_bridge

    def offline(spec, seed=0):  # what datasets raises when the task's data is not cached offline
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval_bridge, "task_from_lm_eval", offline)
    config = _write_config(fam, tmp_path / "c.yaml", tmp_path / "run")
    assert main(["-q", "optimize", "--config", str(config), "--tasks", "lm_eval:arc_easy"]) == 2
    err = _err(capsys)
    assert "lm_eval:arc_easy" in err and "offline" in err
    assert not (tmp_path / "run").exists()


def test_string_layer_ranges_in_a_recipe_are_a_one_line_error(fam, tmp_path, capsys):
    data = yaml.safe_load(fam[3].read_text())
    data["slices"][0]["sources"][0]["layer_range"] = [str(x) for x in data["slices"][0]["sources"][0]["layer_range"]]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    assert main(["-q", "materialize", str(tmp_path / "r.yaml"), str(tmp_path / "out")]) == 2
    assert "layer_range" in _err(capsys)


class _Api:
    def __init__(self, whoami_error=None):
        self.calls, self.files, self.whoami_error = [], {}, whoami_error

    def whoami(self, token=None):
        self.calls.append("whoami")
        if self.whoami_error:
            raise self.whoami_error
        return {"name": "me"}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append("create_repo")

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.calls.append("upload_folder")


def test_push_without_network_fails_before_materializing(finished_run, monkeypatch):
    import gptailor_merge.share.hub as hub
    from gptailor_merge.core.errors import HubError

    monkeypatch.setattr(hub, "materialize_with_mergekit", lambda *a, **k: pytest.fail("materialized"))
    api = _Api(ConnectionError("Name or service not known"))
    with pytest.raises(HubError, match="did not answer"):
        hub.push_to_hub(finished_run, "me/x", token="hf_x", api=api)
    assert api.calls == ["whoami"]


# ---- 5. settings ---------------------------------------------------------------------------------
def test_layers_with_remove_fraction_is_an_error_naming_both(fam, tmp_path, capsys):
    config = _write_config(fam, tmp_path / "c.yaml", tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        main(["-q", "optimize", "--config", str(config), "--layers", "3", "--remove-fraction", "0.5"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--remove-fraction" in err and "--layers" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, named", [(["--remove-fraction", "1.5"], "--remove-fraction (target.remove_fraction)"),
                                          (["--trials", "0"], "--trials (search.n_trials)")])
def test_a_refused_flag_value_names_the_flag_and_its_config_key(fam, tmp_path, capsys, flags, named):
    config = _write_config(fam, tmp_path / "c.yaml", tmp_path / "run")
    assert main(["-q", "optimize", "--config", str(config), *flags]) != 0
    err = capsys.readouterr().err
    assert f"{config} is invalid: {named}:" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_max_examples_above_the_tasks_is_clamped_and_the_summary_says_so(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    budgets = summary["search"]["budgets"]
    assert budgets["max_examples_clamped_from"] == 1000
    from gptailor_merge.scoring import load_task

    config = json.loads(json.dumps(__import__("yaml").safe_load((finished_run / "config.yaml").read_text())))
    largest = max(len(load_task(t).search) for t in config["tasks"])  # the largest search split
    assert budgets["max_examples"] == largest < 1000
    assert summary["search"]["rungs"] == budgets["rungs"] and max(budgets["rungs"]) == largest


def test_evaluate_a_model_folder_without_tasks_names_them_and_builds_nothing(fam, tmp_path, capsys, monkeypatch):
    import gptailor_merge.demo as demo

    monkeypatch.setattr(demo, "build_demo_family", lambda *a, **k: pytest.fail("built the demo family"))
    assert main(["-q", "evaluate", str(fam[1])]) == 2
    err = _err(capsys)
    assert "--tasks" in err and "prose_cloze" in err


def test_evaluate_a_missing_target_names_the_path_before_any_task(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["-q", "evaluate", str(missing), "--tasks", "no_such_task"]) == 2
    err = _err(capsys)
    assert str(missing) in err and "does not exist" in err and "no_such_task" not in err


def test_a_model_listed_twice_in_a_family_is_an_error(fam, tmp_path, capsys):
    data = _config(fam, tmp_path / "run")
    data["family"]["candidates"].append(data["family"]["candidates"][0])
    data["family"]["names"] = None
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["-q", "optimize", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "twice" in _err(capsys)
    data = _config(fam, tmp_path / "run")  # the base again, spelled differently
    data["family"]["candidates"][0] = str(fam[1]) + "/"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert main(["-q", "optimize", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "same model" in _err(capsys)
    assert not (tmp_path / "run").exists()


# ---- 6. push uploads only what it wrote ------------------------------------------------------------
def test_push_of_a_model_folder_leaves_out_stray_files_and_refuses_links_leaving_it(fam, tmp_path):
    import gptailor_merge.share.hub as hub
    from gptailor_merge.core.errors import HubError

    model = tmp_path / "model"
    assert main(["-q", "materialize", str(fam[3]), str(model)]) == 0
    (model / "notes.txt").write_text("private")
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_secret")
    (model / "id_rsa").symlink_to(secret)
    api = _Api()
    hub.push_to_hub(model, "me/x", token="hf_x", api=api)
    assert "notes.txt" not in api.files and "id_rsa" not in api.files
    assert "model.safetensors" in api.files and "README.md" in api.files
    assert not any(name.startswith(".") for name in api.files)  # not even our marker
    (model / "extra.safetensors").symlink_to(secret)
    with pytest.raises(HubError, match="outside the model folder"):
        hub.push_to_hub(model, "me/x", token="hf_x", api=_Api())


def test_card_and_published_recipe_carry_no_local_path_and_model_id_fills_base_model(finished_run, tmp_path,
                                                                                       capsys):
    out = tmp_path / "upload"
    assert main(["-q", "push", str(finished_run), "me/x", "--dry-run", str(out),
                 "--model-id", "llama=meta-llama/Llama-2-7b-hf"]) == 0
    texts = {p.name: p.read_text() for p in out.iterdir() if p.suffix in (".md", ".yml", ".json")}
    root = str(finished_run.parent.parent)
    assert not [name for name, text in texts.items() if root in text or "/tmp/" in text]
    recipe = yaml.safe_load(texts["mergekit_config.yml"])
    assert recipe["base_model"] == "meta-llama/Llama-2-7b-hf"
    # mapped members by their Hub id, the others by their names (never a local path), whichever
    # members the 5-trial winner happens to use
    assert {s["model"] for sl in recipe["slices"] for s in sl["sources"]} <= {
        "meta-llama/Llama-2-7b-hf", "chat", "math", "code"}
    front = yaml.safe_load(texts["README.md"].split("---", 2)[1])
    assert front["base_model"] == ["meta-llama/Llama-2-7b-hf"]
    assert main(["-q", "push", str(finished_run), "me/x", "--dry-run", str(tmp_path / "u2"),
                 "--model-id", "nobody=a/b"]) == 2
    assert "not family members" in _err(capsys)
    assert not (tmp_path / "u2").exists()


def test_evaluate_a_model_folder_on_the_demo_task_names_its_error_suggests(tiny_demo_family, capsys,
                                                                            monkeypatch):
    import gptailor_merge.demo as demo

    monkeypatch.setattr(demo, "build_demo_family", lambda *a, **k: tiny_demo_family)
    member = tiny_demo_family.members["math"]
    assert main(["-q", "evaluate", str(member), "--tasks", "prose_cloze", "ppl_math", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "| prose_cloze | acc |" in out and "| ppl_math | ppl |" in out


def test_evaluate_a_hand_written_mergekit_recipe_reads_the_layer_count_from_its_base(
        tiny_demo_family, tmp_path, capsys, monkeypatch):
    import gptailor_merge.demo as demo

    monkeypatch.setattr(demo, "build_demo_family", lambda *a, **k: tiny_demo_family)
    base = tiny_demo_family.members["base"]
    recipe = tmp_path / "handwritten.yaml"  # stock mergekit: no gptailor metadata at all
    recipe.write_text(yaml.safe_dump({
        "merge_method": "passthrough", "base_model": str(base), "dtype": "float32",
        "slices": [{"sources": [{"model": str(base), "layer_range": [0, 2]}]},
                   {"sources": [{"model": str(base), "layer_range": [3, 4]}]}]}))
    assert main(["-q", "evaluate", str(recipe), "--limit", "2"]) == 0, _err(capsys)
    assert "| math_answer | acc |" in capsys.readouterr().out
