"""The README's commands are the ones CI runs, and its CLI snippets work."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_quick_start_has_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("python -m gptailor_merge optimize")
    assert "pytest" in commands[1] and "torch==2.13.0" in commands[1]
    assert commands[1] in (REPO / ".ci" / "run").read_text()


def test_every_command_in_the_readme_is_a_real_subcommand():
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"python -m gptailor_merge (\w+)", text))
    help_text = subprocess.run([sys.executable, "-m", "gptailor_merge", "--help"], capture_output=True,
                               text=True, check=True).stdout
    missing = [name for name in named if f"    {name}" not in help_text]
    assert not missing, f"README names commands the CLI lacks: {missing}"


def test_example_config_validates():
    from gptailor_merge.core.config import RunConfig

    config = RunConfig.load(REPO / "examples" / "llama2-13b-gptailor.yaml")
    assert config.target.layers == 30 and config.search.rungs() == [111, 333, 1000]


def test_development_names_the_ci_command_and_a_fast_loop_without_the_default_demo_family():
    dev = (REPO / "README.md").read_text().split("## Development", 1)[1]
    full = "python -m pytest -q"
    assert f"`{full}`" in dev and (REPO / ".ci" / "run").read_text().rstrip().endswith(full)
    fast = re.search(r'`(python -m pytest -q -m "not (\w+)")`', dev)
    assert fast, "the Development section names no fast loop"
    marker = fast.group(2)  # registered, so a typo in it cannot select everything silently
    assert re.search(rf'^\s*"{marker}: ', (REPO / "pyproject.toml").read_text(), re.M)
