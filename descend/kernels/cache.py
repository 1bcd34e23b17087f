"""The kernel cache: build a shared library once per machine, verify it before every load.

A compiled library is loaded into the process (``dlopen``), so a bad file there is not an error but a
crash: a truncated one dies with SIGBUS when its missing pages are touched. So nothing is loaded that
this module has not verified:

- **Where.** ``$DESCEND_CACHE_DIR/kernels`` (default ``~/.cache/descend/kernels``). A file is named by a
  hash of its source, its compiler flags and the machine's fingerprint (:func:`fingerprint`: the
  architecture, the CPU's model and feature list — ``flags`` on x86, ``Features`` on ARM, ``isa`` on
  RISC-V, whatever /proc/cpuinfo has — and the compiler's ``--version``), since kernels are built with
  ``-march=native``: a home shared by different machines keeps one file per CPU and compiler.
- **Verified.** Beside each ``NAME.so`` lies ``NAME.so.sha256``, its content hash, written after the
  library (both by an atomic rename). A library is loaded only if its bytes hash to that value; a
  missing, truncated, empty, foreign or unreadable file (a directory, garbage, another library) is
  rebuilt once; a library that verifies but does not load (or lacks its symbols) is rebuilt once.
  If that fails too, :func:`load` says why and the caller runs the reference (one warning).
- **Atomic builds.** A build happens in a private folder ``.build-HOST-PID-*`` in the cache and only
  its finished library is renamed into place, so concurrent processes never see half a file. The
  folder is removed whatever happens; folders left by killed processes (their PID gone, or older
  than an hour) are removed by the next build.
- **Compilers.** ``$CC`` / ``$CXX`` are split as make splits them (``CC="gcc -std=c99"`` works), else
  ``cc``/``gcc`` and ``c++``/``g++`` on the PATH.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["cache_dir", "c_compiler", "cxx_compiler", "fingerprint", "load"]

_STALE_S = 3600  # a build folder this old belongs to no live build (a build takes seconds)
_CPUINFO = "/proc/cpuinfo"


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$DESCEND_CACHE_DIR``, else ``~/.cache/descend/kernels``)."""
    root = os.environ.get("DESCEND_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "descend")
    return Path(root) / "kernels"


def _compiler(var: str, names: tuple[str, ...]) -> list[str] | None:
    env = os.environ.get(var, "").strip()
    if env:
        try:
            return shlex.split(env)
        except ValueError:  # unbalanced quotes: the whole value as one program name
            return [env]
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    return [found] if found else None


def c_compiler() -> list[str] | None:
    """The C compiler's command line (``$CC`` split as make does, else cc/gcc), or None."""
    return _compiler("CC", ("cc", "gcc"))


def cxx_compiler() -> list[str] | None:
    """The C++ compiler's command line (``$CXX`` split as make does, else c++/g++), or None."""
    return _compiler("CXX", ("c++", "g++"))


# the /proc/cpuinfo keys that say which instructions -march=native may use, on each architecture
_CPU_KEYS = ("flags", "features", "isa", "model name", "vendor_id", "cpu family", "model", "cpu implementer",
             "cpu architecture", "cpu variant", "cpu part", "cpu", "uarch", "hardware")


@functools.lru_cache(maxsize=None)
def _cpu() -> str:
    """The first processor's feature lines of /proc/cpuinfo (the rest repeat them), else the platform's
    description of the processor."""
    lines = set()
    try:
        with open(_CPUINFO) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not line.strip() and lines:
                    break  # the end of the first processor's block
                if sep and key.strip().lower() in _CPU_KEYS:
                    lines.add(f"{key.strip().lower()}: {' '.join(sorted(value.split()))}")
    except OSError:
        pass
    if not lines:  # no /proc (macOS, ...): what the platform says about the processor
        lines.add(f"{platform.processor()} {platform.version()}")
    return "\n".join(sorted(lines))


@functools.lru_cache(maxsize=None)
def _identity(cmd: tuple[str, ...]) -> str:
    """The compiler's own description of itself (``--version``), or its command line if it gives none.

    Running it costs a few ms per process, so the answer is kept in the cache folder, under the
    compiler binary's path, size and modification time (an upgrade changes them)."""
    if not cmd:
        return ""
    memo = None
    try:
        exe = os.path.realpath(shutil.which(cmd[0]) or cmd[0])
        st = os.stat(exe)
        stamp = f"{exe}\n{st.st_size}\n{st.st_mtime_ns}\n{' '.join(cmd)}"
        memo = cache_dir() / ".compilers" / hashlib.sha256(stamp.encode()).hexdigest()[:24]
        return memo.read_text()
    except OSError:
        pass
    try:
        res = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
        text = " ".join(cmd) + "\n" + res.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return " ".join(cmd)
    if memo is not None and res.returncode == 0:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, memo)
        except OSError:
            pass
    return text


def fingerprint(cmd: list[str] | None) -> str:
    """What a compiled library depends on beyond its source: machine, CPU features, compiler."""
    return "\n".join([platform.machine(), platform.system(), _cpu(), _identity(tuple(cmd or ()))])


def _sidecar(out: Path) -> Path:
    return out.with_name(out.name + ".sha256")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified(out: Path) -> bool:
    """Does ``out`` hold exactly the bytes its build wrote (its hash beside it says so)?"""
    try:
        return out.is_file() and _sidecar(out).read_text().strip() == _digest(out)
    except (OSError, UnicodeDecodeError):
        return False


_host = socket.gethostname().replace("-", "_")[:40]
_swept: set[Path] = set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours
        return True
    return True


def _sweep(folder: Path) -> None:
    """Remove build folders that no live build owns (left by a killed process), once per process."""
    if folder in _swept:
        return
    _swept.add(folder)
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for d in entries:
        if not (d.name.startswith(".build-") or d.name.startswith("tmp")) or not d.is_dir():
            continue
        try:
            parts = d.name.split("-")
            mine = d.name.startswith(".build-") and len(parts) >= 4 and parts[1] == _host
            dead = mine and not _alive(int(parts[2]))
            if dead or now - d.stat().st_mtime > _STALE_S:
                shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            pass


def build(cmd: list[str], src: str, out: Path, flags: list[str], suffix: str) -> str | None:
    """Compile ``src`` into the shared library ``out`` (and its hash beside it); the error text if that
    failed. Nothing but the finished library and its hash is ever left in the cache."""
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _sweep(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{_host}-{os.getpid()}-", dir=out.parent))
        c_file = tmp / ("src" + suffix)
        c_file.write_text(src)
        tmp_so = tmp / "lib.so"
        res = subprocess.run([*cmd, "-shared", "-fPIC", "-o", str(tmp_so), str(c_file), *flags],
                             capture_output=True, text=True)
        if res.returncode != 0:
            return res.stderr or f"{cmd[0]} exited with {res.returncode}"
        tmp_hash = tmp / "lib.sha256"
        tmp_hash.write_text(_digest(tmp_so))
        os.replace(tmp_so, out)  # atomic: concurrent processes never see half a file
        os.replace(tmp_hash, _sidecar(out))
    except OSError as e:  # no compiler at $CC, a cache folder we cannot write, a folder in the way
        return f"{type(e).__name__}: {e}"
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return None


def load(prefix: str, src: str, cmd: list[str] | None, flags: list[str], suffix: str, open_lib,
         key_extra: str = "") -> tuple[object | None, str | None]:
    """The library built from ``src``, opened by ``open_lib(path)``, and None; or None and why not.

    It is taken from the cache if it verifies, else built; a file that fails verification or
    loading is rebuilt once. ``open_lib`` raises OSError/AttributeError for a library it cannot use.
    """
    key = "\n".join([src, " ".join(flags), fingerprint(cmd), key_extra])
    out = cache_dir() / f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:24]}.so"
    built = False
    for _ in range(2):
        if not verified(out):
            if cmd is None:
                return None, "no compiler"
            if built:
                return None, f"{out} does not verify after a fresh build"
            err = build(cmd, src, out, flags, suffix)
            built = True
            if err is not None:
                return None, err
        try:
            return open_lib(str(out)), None
        except (OSError, AttributeError) as e:
            if built or cmd is None:
                return None, f"loading {out.name} failed: {e}"
            try:  # verified but unusable: rebuild it once
                _sidecar(out).unlink()
            except OSError:
                pass
    return None, f"loading {out.name} failed"
