"""Every `clipav2 ... --help` and every usage error answers before torch is imported (torch costs
seconds of CPU to import): one fresh interpreter walks each command's parser, nested actions
(`data shards`, `text preview`) included, and reports the first argv that pulled torch in."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: builds each command's parser the way `clipav2.cli` does, collects
# the argvs to try, runs each through `cli.main`, and notes whether torch was loaded after it.
WALK = r"""
import argparse, contextlib, importlib, io, json, sys
from clipav2 import cli

def nested(parser, argv):
    yield argv + ["--help"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from nested(sub, argv + [name])

argvs, rows = [["--help"], ["no-such-command"]], []
for name, (module, help_) in cli.COMMANDS.items():
    parser = argparse.ArgumentParser(prog=f"clipav2 {name}")
    importlib.import_module(f"clipav2.commands.{module}").add_arguments(parser)
    rows.append({"argv": [name], "parser": True, "torch": "torch" in sys.modules})
    argvs += list(nested(parser, [name]))
    argvs.append([name, "--no-such-option"])  # a usage error
for argv in argvs:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    rows.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue(),
                 "torch": "torch" in sys.modules})
print(json.dumps(rows))
"""


def test_every_help_and_usage_error_answers_without_torch():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", WALK], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    for row in [row for row in rows if row.get("parser")]:
        assert not row["torch"], f"the parser of `clipav2 {row['argv'][0]}` imported torch"
        rows.remove(row)
    helps = [row for row in rows if row["argv"][-1] == "--help"]
    nested = {" ".join(row["argv"][:-1]) for row in helps}
    assert len(helps) > len(clipav2_commands()) and {"data shards", "text preview"} <= nested, nested
    for row in rows:
        assert not row["torch"], f"`clipav2 {' '.join(row['argv'])}` imported torch"
        if row["argv"][-1] == "--help":
            assert row["code"] == 0 and "usage:" in row["out"], row
        else:
            assert row["code"] == 2 and row["err"], row  # a usage error: exit 2 and a message


def clipav2_commands():
    from clipav2.cli import COMMANDS

    return COMMANDS
