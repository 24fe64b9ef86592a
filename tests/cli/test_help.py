"""Every command-line tool explains every flag it has.

The flags are read from each tool's own parser (sub-commands included), so a flag added
without help text fails here; the old tests listed the flags by hand and could only fail
when one was removed.
"""
import argparse
import importlib
import subprocess
import sys

import pytest

TOOLS = ["gscnn_tf.cli.train", "gscnn_tf.cli.evaluate", "gscnn_tf.cli.export", "gscnn_tf.cli.predict",
         "gscnn_tf.cli.import_official", "tfrecords_tools.convert_cityscapes", "tfrecords_tools.make_synthetic"]


def parsers(parser, name):
    """(name, parser) for the parser and, recursively, each of its sub-commands."""
    yield name, parser
    for action in parser._actions:  # argparse exposes sub-parsers only through its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def undocumented(parser):
    """The options and positionals of ``parser`` whose help is missing, suppressed or a stub."""
    bad = []
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        words = (action.help or "").split()
        if action.help == argparse.SUPPRESS or len(words) < 3:
            bad.append(f"{name}: help {action.help!r}")
        elif action.option_strings and action.option_strings[0] not in text:
            bad.append(f"{name}: not in --help")
    return bad


@pytest.mark.parametrize("module", TOOLS)
def test_every_flag_has_help(module):
    build_parser = importlib.import_module(module).build_parser
    found = {name: undocumented(p) for name, p in parsers(build_parser(), module)}
    assert {name: bad for name, bad in found.items() if bad} == {}


def test_the_checker_finds_an_undocumented_flag():
    parser = argparse.ArgumentParser()
    parser.add_argument("--documented", help="does a thing the user can read about")
    parser.add_argument("--bare")
    sub = parser.add_subparsers().add_parser("run")
    sub.add_argument("--terse", help="x")
    found = {name: undocumented(p) for name, p in parsers(parser, "tool")}
    assert found == {"tool": ["--bare: help None"], "tool run": ["--terse: help 'x'"]}


@pytest.mark.slow  # a fresh interpreter importing TensorFlow: 5 s
def test_a_tool_answers_help_as_a_module():
    res = subprocess.run([sys.executable, "-m", "tfrecords_tools.make_synthetic", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--num-train" in res.stdout, res.stderr
