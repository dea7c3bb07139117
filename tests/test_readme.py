"""The README's code runs, and CI runs the README's test command verbatim."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


# Users run this code under JAX's default promotion, and optax's adam needs it.
@pytest.mark.standard_promotion
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_blocks_run(index):
    code = _blocks("python")[index]
    if code.lstrip().startswith("optax_gc.centralize(*"):
        pytest.skip("a signature, not a program")
    exec(compile(code, f"README.md python block {index}", "exec"), {})


def test_quickstart_prints_zero_column_sums(capsys):
    exec(compile(_blocks("python")[0], "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "[0. 0.]"


def test_ci_runs_the_readme_test_command():
    commands = [b.strip() for b in _blocks("bash") if b.strip().endswith("pytest")]
    assert len(commands) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci


def test_readme_main_command_runs_the_comparison():
    assert any(
        b.strip().endswith("python -m examples.compare") for b in _blocks("bash")
    )
    assert (ROOT / "examples" / "compare" / "__main__.py").exists()
