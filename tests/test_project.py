"""The project's shape: README commands, CI, the CLI, the public names."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import subprocess
import sys
from pathlib import Path

import pytest

import encoders
import graphprop
from segmentation import cli

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.+?)\n\s*```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines()]


def test_readme_has_the_two_commands_and_ci_runs_the_test_command():
    commands = [c.strip() for c in readme_commands()]
    assert "pip install -e . && lposs segment" in commands
    test_command = 'pip install -e ".[test]" && pytest'
    assert test_command in commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def test_public_names_are_locked():
    assert sorted(graphprop.__all__) == sorted(
        [
            "ConvergenceWarning", "Graph", "GraphOperator", "GridGraph", "PropagationGraph", "PropagationResult",
            "degree",
            "exp_distance_weight", "grid_graph", "grid_offsets", "knn", "knn_graph",
            "label_propagation", "remove_self_loops", "select_knn_backend", "sym_normalize",
            "symmetrize",
        ]
    )
    for name in graphprop.__all__:
        assert getattr(graphprop, name).__doc__, f"{name} has no docstring"
    assert sorted(encoders.__all__) == sorted(
        [
            "OpenCLIPEncoder", "PRECISIONS", "RandomInitWarning", "TextEmbeddings", "TextEncoderMixin",
            "TimmViTEncoder", "VisionEncoder", "VisionLanguageEncoder", "WeightsUnavailableError",
            "cache_namespace", "check_precision", "create", "parse_spec", "register", "registered",
            "split_class_names",
        ]
    )
    for name in encoders.__all__:
        assert getattr(encoders, name).__doc__, f"{name} has no docstring"


def test_lposs_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "graph-example" in out and "segment" in out and "evaluate" in out


def test_graph_example_recovers_the_moons(capsys):
    assert cli.main(["graph-example"]) == 0
    out = capsys.readouterr().out
    assert "accuracy on the unlabelled points: 100.0%" in out
    # the report names the solver "auto" chose (600 nodes: the exact dense solve, 0 iterations)
    assert "label_propagation(alpha=0.99, solver='direct'): [0, 0] iterations per class" in out


def test_graph_example_bad_input_is_one_line_and_nonzero(capsys):
    assert cli.main(["graph-example", "--alpha", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alpha must be in (0, 1)" in err[0]


def test_python_dash_m_graphprop_runs():
    done = subprocess.run(
        [sys.executable, "-m", "graphprop"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "two interleaved half-moons" in done.stdout
    assert "Warning" not in done.stderr
