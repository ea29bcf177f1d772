"""The command table of ``lposs``, the one error helper, the scoped log silencing, the imports that run
only downward, and the old module paths kept as deprecation aliases."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import ast
import importlib
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from segmentation import cli
from segmentation.commands import _common

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segmentation"


def test_every_command_has_the_pattern_and_is_listed_in_help(capsys):
    names = [command.NAME for command in cli.COMMANDS]
    assert names == ["segment", "evaluate", "demo", "prepare-coco", "graph-example"]
    for command in cli.COMMANDS:
        assert isinstance(command.HELP, str) and command.HELP and isinstance(command.DESCRIPTION, str)
        assert callable(command.add_arguments) and callable(command.run)
        assert command.run.__doc__ and command.add_arguments.__doc__
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command.NAME in out and command.HELP[:40] in " ".join(out.split())


def test_a_new_command_is_one_entry_in_the_table(monkeypatch, capsys):
    seen = []

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--times", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        seen.append(args.times)
        return 7

    hello = types.SimpleNamespace(NAME="hello", HELP="say hello", DESCRIPTION="Says hello.",
                                  add_arguments=add_arguments, run=run)
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, hello))
    assert cli.main(["hello", "--times", "3"]) == 7 and seen == [3]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "say hello" in capsys.readouterr().out


def test_no_command_prints_the_help(capsys):
    assert cli.main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_the_error_helper_is_one_line_and_the_status(capsys):
    assert _common.error("lposs x", "bad --thing") == 2
    assert _common.error("lposs x", "stopped", 130) == 130
    assert capsys.readouterr().err == "lposs x: error: bad --thing\nlposs x: error: stopped\n"

    def body(args):
        if args.fail:
            raise _common.CommandError("no good", 5)
        return 0

    assert _common.run_command("lposs y", body, argparse.Namespace(fail=False)) == 0
    assert _common.run_command("lposs y", body, argparse.Namespace(fail=True)) == 5
    assert capsys.readouterr().err == "lposs y: error: no good\n"


@pytest.mark.parametrize("argv, message", [
    (["graph-example", "--points", "3"], "--points must be >= 4 and --k >= 1"),
    (["graph-example", "--k", "0"], "--points must be >= 4 and --k >= 1"),
    (["evaluate", "--dataset", "voc", "--limit", "0"], "--limit must be a positive integer"),
    (["evaluate", "--dataset", "voc"], "give --data-root"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lposs {argv[0]}: error: ") and message in err[0], err


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, record.levelno))


def test_the_encoder_logs_are_silenced_only_inside_the_call():
    handler = _Records()
    root = logging.getLogger()
    old_level, timm_level = root.level, logging.getLogger("timm").level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.disable(logging.DEBUG)  # a setting of the user's own: kept
    try:
        with _common.quiet_encoder_logs():
            logging.error("open_clip logs on the root logger")
            logging.getLogger("timm.models").warning("timm's own logger")
            logging.getLogger("huggingface_hub.file_download").error("hub")
            logging.getLogger("myapp").info("someone else's logger is not touched")
            logging.critical("critical passes")
            assert logging.root.manager.disable == logging.DEBUG
        logging.info("after the call, the root logger is heard again")
        logging.getLogger("timm.models").info("and timm")
        assert logging.root.manager.disable == logging.DEBUG
        assert logging.getLogger("timm").level == timm_level and not root.filters
    finally:
        logging.disable(logging.NOTSET)
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert handler.seen == [("myapp", logging.INFO), ("root", logging.CRITICAL), ("root", logging.INFO),
                            ("timm.models", logging.INFO)]


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module imported, function it is imported in) of every import in a file, relative ones resolved;
    ``"__main__"`` for the function of an ``if __name__ == "__main__":`` block."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inside = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.If) and ast.unparse(child.test) in ('__name__ == "__main__"',
                                                                          "__name__ == '__main__'"):
                inside = "__main__"
            if isinstance(child, ast.ImportFrom):
                base = importlib.util.resolve_name("." * child.level + (child.module or ""), package) \
                    if child.level else child.module
                found.extend((f"{base}.{alias.name}", function) for alias in child.names)
                found.append((base, function))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names)
            visit(child, inside)

    visit(tree, None)
    return found


APPLICATION = ("segmentation.cli", "segmentation.commands", "segmentation.segment_command",
               "segmentation._command_common")
# entry points and deprecated aliases: they name the new places of what moved
ALIASES = {"segmentation/evaluate.py", "segmentation/segment.py", "segmentation/segment_command.py",
           "segmentation/_command_common.py"}


def test_imports_only_run_downward():
    """The library and the demo never import the commands or the CLI (a deprecated alias's __getattr__
    may name a command's new place, and a module's ``python -m`` block may run a command)."""
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("segmentation/commands/") or relative == "segmentation/cli.py" or relative in ALIASES:
            continue
        for module, function in _imports(path):
            upward = any(module == app or module.startswith(app + ".") for app in APPLICATION)
            assert not upward or function in ("__getattr__", "__main__"), f"{relative} imports {module}"
        checked += 1
    assert checked > 20
    commands = [module for path in (PACKAGE / "commands").glob("*.py") for module, _ in _imports(path)]
    assert not any(m == "segmentation.cli" for m in commands)


@pytest.mark.parametrize("old, name, new", [
    ("segmentation._command_common", "build_segmenter", "segmentation.commands._common:build_segmenter"),
    ("segmentation._command_common", "add_model_arguments", "segmentation.commands._common:add_model_arguments"),
    ("segmentation._command_common", "read_class_list", "segmentation.classnames:read_class_list"),
    ("segmentation.segment_command", "add_segment_arguments", "segmentation.commands.segment:add_arguments"),
    ("segmentation.segment_command", "run_segment", "segmentation.commands.segment:run"),
    ("segmentation.segment_command", "main", "segmentation.commands.segment:main"),
    ("segmentation.segment_command", "DEFAULT_CLASSES", "segmentation.examples:DEFAULT_CLASSES"),
    ("segmentation.segment_command", "EXAMPLE_IMAGE", "segmentation.examples:EXAMPLE_IMAGE"),
    ("segmentation.evaluate", "add_evaluate_arguments", "segmentation.commands.evaluate:add_arguments"),
    ("segmentation.evaluate", "run_evaluate", "segmentation.commands.evaluate:run"),
    ("segmentation.evaluate", "_Dist", "segmentation.distributed:Distributed"),
    ("segmentation.demo", "run_demo", "segmentation.commands.demo:run"),
    ("segmentation.demo.page", "add_demo_arguments", "segmentation.commands.demo:add_arguments"),
])
def test_old_paths_warn_and_give_the_new_object(old, name, new):
    module, _, new_name = new.partition(":")
    with pytest.warns(DeprecationWarning, match=new_name):
        got = getattr(importlib.import_module(old), name)
    assert got is getattr(importlib.import_module(module), new_name)


def test_old_method_lists_warn_and_follow_the_registry():
    from segmentation.methods import available_methods

    with pytest.warns(DeprecationWarning, match="available_methods"):
        from segmentation._command_common import METHODS
    assert METHODS == tuple(m.name for m in available_methods())
    with pytest.warns(DeprecationWarning, match="method_names"):
        from segmentation.demo.app import METHODS as DISPLAYED
    assert DISPLAYED == tuple(m.display_name for m in available_methods())
    with pytest.raises(AttributeError):
        importlib.import_module("segmentation.segment_command").no_such_name  # noqa: B018


@pytest.mark.parametrize("module", ["segmentation.evaluate", "segmentation.segment"])
def test_the_entry_points_run_without_a_deprecation_warning(module):
    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-m", module, "--help"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "DeprecationWarning" not in done.stderr and "usage: lposs" in done.stdout
