"""Run a Python script as root inside a throwaway host (private net + mount + pid
namespaces, a tmpfs on /run, ``lo`` up): everything it makes vanishes with it.

The integration tests of single layers (kernel, firewall, DNS, proxy) use this; the e2e
tier uses ``tests/harness.py``'s TestHost, which also runs cnmd and a "world".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--mount", "--propagation", "private"]


def have(*tools: str) -> bool:
    """Root, ``unshare`` and every tool on PATH (the reason to skip otherwise)."""
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", *tools))


def run_script(
    tmp_path: Path, source: str, *args: str, name: str = "script.py", timeout: float = 240
) -> subprocess.CompletedProcess:
    """Write ``source`` to ``tmp_path/name`` and run it with this interpreter in a throwaway
    host; its output is captured (text).  Extra ``args`` go on its command line."""
    script = tmp_path / name
    script.write_text(source)
    argv = " ".join([sys.executable, str(script), *args])
    shell = f"set -e; mount -t tmpfs tmpfs /run; ip link set lo up; exec {argv}"
    return subprocess.run([*UNSHARE, "bash", "-c", shell], capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> str:
    """The script succeeded and printed OK last; its output (printed for the test log)."""
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("OK")
    return proc.stdout
