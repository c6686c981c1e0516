"""The README's commands for a new user: the ones CI runs, the CPU-only PyTorch, what a factory spec needs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    """Every line of the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_test_command_is_the_one_ci_runs():
    test_lines = [line for line in _commands() if "python -m pytest" in line]
    assert len(test_lines) == 1, test_lines
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_lines[0] in ci  # the same line, pins included
    assert "PIP_CONSTRAINT=.ci/constraints.txt" in test_lines[0]


def test_readme_installs_cpu_only_pytorch_before_the_extras():
    commands = _commands()
    cpu = [i for i, line in enumerate(commands) if "--index-url https://download.pytorch.org/whl/cpu" in line]
    extras = [i for i, line in enumerate(commands) if '".[test]"' in line]
    assert cpu and extras and cpu[0] < extras[0]
    assert re.match(r"pip install torch torchvision --index-url https://download\.pytorch\.org/whl/cpu$", commands[cpu[0]])


def test_readme_says_the_suite_time_chromium_and_factory_imports():
    assert "minutes on 2 cores" in README and "Chromium" in README
    assert any(line.startswith("PYTHONPATH=. attnvis export --model mypkg.models:make_model") for line in _commands())
    assert any("--model default-captioner" in line and line.startswith("attnvis visualize") for line in _commands())
