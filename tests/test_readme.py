"""Every ```python and ```bash block of README.md runs as written (issue 12, item 5).

A block may be preceded (on the lines right above its opening fence) by HTML comments that the page
does not show:

- ``<!-- readme-test: skip: REASON -->`` — not run; the reason is required and shown in the test report;
- ``<!-- readme-test: run with: "OLD" => "NEW" -->`` — run with the text OLD replaced by NEW (smaller
  settings for a long example, to keep CI quick); OLD must occur in the block.

Everything runs in a temporary folder with ``docs/`` made. Python blocks run in a fresh namespace in this
process (torch is imported once). A bash block made only of ``descend ...`` commands runs them through
the same entry point in this process (the commands as written, split as the shell splits them); any
other bash block runs with ``bash -euo pipefail``, where ``descend`` is ``python -m descend.cli``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
_SWAP = re.compile(r'^run with:\s*"((?:[^"\\]|\\.)*)"\s*=>\s*"((?:[^"\\]|\\.)*)"$')


def blocks(text: str) -> list[dict]:
    """The README's fenced blocks: language, first line number, code (indentation removed), markers."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m.group(2):
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        code = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]) + "\n"
        marks, k = [], start - 1
        while k >= 0 and _MARK.match(lines[k]):
            marks.insert(0, _MARK.match(lines[k]).group(1))
            k -= 1
        out.append(dict(lang=lang, line=start + 1, code=code, marks=marks))
        i = j + 1
    return out


def _prepared(block: dict) -> str:
    code = block["code"]
    for mark in block["marks"]:
        if mark.startswith("skip:"):
            reason = mark[len("skip:"):].strip()
            assert reason, f"README.md:{block['line']}: a skip needs a reason"
            pytest.skip(f"README.md:{block['line']}: {reason}")
        m = _SWAP.match(mark)
        assert m, f"README.md:{block['line']}: unknown readme-test marker {mark!r}"
        old, new = (bytes(g, "utf-8").decode("unicode_escape") for g in m.groups())
        assert old in code, f"README.md:{block['line']}: {old!r} is not in the block"
        code = code.replace(old, new)
    return code


RUNNABLE = [b for b in blocks(README.read_text(encoding="utf-8")) if b["lang"] in ("python", "bash")]


def test_the_readme_has_blocks_to_run():
    assert sum(b["lang"] == "python" for b in RUNNABLE) >= 5 and sum(b["lang"] == "bash" for b in RUNNABLE) >= 4


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b["lang"] == "python"], ids=lambda b: f"line{b['line']}")
def test_python_block_runs(block, tmp_path, monkeypatch):
    code = _prepared(block)
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    exec(compile(code, f"README.md:{block['line']}", "exec"), {"__name__": "__readme__"})


def _descend_commands(code: str) -> list[list[str]] | None:
    """The block's commands as argument lists if each is a ``descend ...`` command, else None."""
    joined = re.sub(r"\\\n", " ", code)
    commands = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not commands or any(not c.startswith("descend ") or re.search(r"[|&;<>`$]", c) for c in commands):
        return None
    return [shlex.split(c)[1:] for c in commands]


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b["lang"] == "bash"], ids=lambda b: f"line{b['line']}")
def test_bash_block_runs(block, tmp_path, monkeypatch):
    code = _prepared(block)
    commands = _descend_commands(code)
    if commands is not None:
        from descend.cli import main

        (tmp_path / "docs").mkdir()
        monkeypatch.chdir(tmp_path)
        for args in commands:
            with pytest.raises(SystemExit) as done:  # the group exits as the shell command would
                main.main(args, prog_name="descend")
            assert done.value.code == 0, f"README.md:{block['line']}: descend {shlex.join(args)}"
        return
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "descend").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m descend.cli "$@"\n')
    (shim / "descend").chmod(0o755)
    work = tmp_path / "work"
    (work / "docs").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "MPLBACKEND": "Agg"}
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"README.md:{block['line']}:\n{code}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr
