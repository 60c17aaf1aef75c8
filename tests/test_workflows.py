"""The GitHub Actions workflows: actionlint passes, and they run what the README and `.ci/run` say.

actionlint comes from the dev extra (a wheel that bundles the binary), so a missing one is a failure, not a skip.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ddpo_hub.training import publish_job

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


def load_workflow(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def shell_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced code blocks in `markdown` whose language is a shell (or not given)."""
    blocks, language, body = [], None, []
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            if language is None:
                language, body = line.strip().removeprefix("```").strip().lower(), []
            else:
                if language in SHELL_LANGUAGES:
                    blocks.append("\n".join(body))
                language = None
        elif language is not None:
            body.append(line)
    return blocks


def shell_commands(text: str) -> list[str]:
    """The commands of a shell snippet: one per line, without prompts, comments and blank lines."""
    commands = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        words = shlex.split(line, comments=True) if line else []
        if words:
            commands.append(shlex.join(words))
    return commands


def readme_test_command(readme: Path = REPO_ROOT / "README.md") -> str:
    """The first command of the README's fenced shell blocks that runs the tests (`make test`, pytest...)."""
    assert readme.is_file(), "README.md is missing: its quick start names the test command"
    for block in shell_blocks(readme.read_text(encoding="utf-8")):
        for command in shell_commands(block):
            if re.search(r"\b(make test|pytest)\b", command):
                return command
    raise AssertionError("README.md has no fenced shell block with the test command (e.g. `make test`)")


def actionlint() -> str:
    """The actionlint of this environment: next to the interpreter (a venv not on PATH) or on PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    assert found, "actionlint is not installed: `pip install -e '.[dev]'` installs it"
    return found


def test_both_workflows_exist():
    assert {"tests.yml", "train-and-publish.yml"} <= {path.name for path in WORKFLOW_FILES}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_actionlint_passes(path):
    result = subprocess.run(
        [actionlint(), "-no-color", str(path.relative_to(REPO_ROOT))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The check has teeth: an unknown event and a bad expression are reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: pushed\njobs:\n  a:\n    runs-on: ${{ matrix.nope }}\n    steps:\n      - run: true\n")
    result = subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pushed" in result.stdout


def test_readme_test_command_is_read_from_the_quick_start(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n```python\nimport pytest\n```\n\n## Quick start\n\n```bash\n"
        "make demo   # train, publish, load back\n$ make test   # ruff, then pytest\n```\n"
    )
    assert readme_test_command(readme) == "make test"


def test_tests_workflow_runs_the_readme_test_command():
    command = readme_test_command()
    workflow = load_workflow("tests.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    (job,) = workflow["jobs"].values()
    runs = [shell_commands(step["run"]) for step in job["steps"] if "run" in step]
    assert runs == [[command]], f"the test workflow must run exactly the README's test command {command!r}"
    (setup,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python@")]
    assert setup["with"] == {"python-version": "3.11", "cache": "pip", "cache-dependency-path": "pyproject.toml"}


def test_ci_runs_the_readme_test_command():
    assert readme_test_command() in shell_commands((REPO_ROOT / ".ci" / "run").read_text())


def test_train_workflow_wires_inputs_and_secret_into_the_job_script():
    workflow = load_workflow("train-and-publish.yml")
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert {"preset", "epochs", "model_repo", "space_id", "runner"} <= set(inputs)
    assert workflow["on"]["schedule"][0]["cron"]
    assert "inputs.model_repo" in workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "${{ inputs.runner || 'ubuntu-latest' }}"
    (step,) = [step for step in job["steps"] if "training.publish_job" in step.get("run", "")]
    assert step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "${{" not in step["run"], "inputs reach the script through env, never spliced into the shell"
    known = {flag for action in publish_job.build_parser()._actions for flag in action.option_strings}
    assert set(re.findall(r"--[a-z-]+", step["run"])) <= known
    (upload,) = [step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["if"] == "always()"
    for name in ("samples/", "metrics.jsonl", "eval_results.json"):
        assert f"${{{{ env.RUN_DIR }}}}/{name}" in upload["with"]["path"]
