"""Run many `lmstack` command lines in ONE fresh process, as a user would type them: each
through the CLI's `main`, with its exit code, stderr and stdout captured (a traceback counts as
"raised"). One process for all cases keeps careless-input tests fast on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DRIVER = """
import contextlib, io, json, sys, traceback
from lmstack.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            code = "raised"
            err.write(traceback.format_exc())
    results.append([code, err.getvalue(), out.getvalue()])
print(json.dumps(results))
"""


def run_cases(cases: list[list[str]], cwd: Path) -> list[tuple[object, str, str]]:
    """(exit code, stderr, stdout) of each command line (argv without `lmstack`), in order."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout)]
