"""One fresh start of cnmd with ``--firewall-backend iptables`` in a throwaway host, checked.

Shared by the e2e test (a few starts per variant) and ``scripts/soak-iptables`` (50 per
variant).  ``variant`` picks what ``iptables`` is inside the host: ``nft`` or ``legacy``
(Debian's alternatives, switched by bind-mounting a private copy of /etc/alternatives over
the real one in the host's own mount namespace; the real host is untouched).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from harness import HarnessError, TestHost, venv_bin

VARIANTS = ("nft", "legacy")
# What a start must never log (iptables-nft, iptables-legacy and cnm's own wording).
BAD_LOG = re.compile(r"does not exist|No chain/target/match|firewall repair failed|Traceback|ERROR")
# Two containers, on the default bridge and on a user network, with a couple of ports each.
PUBLISHED = {
    "web": ("bridge", ("8081:80", "8082:81/udp")),
    "api": ("apinet", ("8083:80", "127.0.0.1:8084:82")),
}


def use_variant(host: TestHost, variant: str) -> None:
    """Make ``iptables``/``-save``/``-restore`` inside ``host`` the ``variant`` ones."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown iptables variant {variant!r}")
    alt = host.tmp / "alternatives"
    links = " && ".join(
        f"ln -sfn /usr/sbin/iptables-{variant}{tail} {alt}/iptables{tail}"
        for tail in ("", "-save", "-restore")
    )
    host.sh(f"cp -a /etc/alternatives {alt} && {links} && mount --bind {alt} /etc/alternatives")
    version = host.run(["iptables", "--version"]).stdout
    want = "nf_tables" if variant == "nft" else "legacy"
    if want not in version:
        raise HarnessError(f"iptables inside the host is {version.strip()!r}, not {want}")


def dnat_problems(saved: str) -> list[str]:
    """Every port of ``PUBLISHED`` must have its DNAT rule in ``iptables-save`` output."""
    problems = []
    for name, (_, ports) in PUBLISHED.items():
        for spec in ports:
            proto = spec.partition("/")[2] or "tcp"
            parts = spec.partition("/")[0].split(":")
            host_ip = f"-d {parts[0]}/32 " if len(parts) == 3 else ""
            pattern = re.compile(
                rf"^-A CNM-P-\S+ {re.escape(host_ip)}-p {proto} -m {proto} --dport {parts[-2]} .*-j DNAT",
                re.M,
            )
            if not pattern.search(saved):
                problems.append(f"no DNAT rule for {name} -p {spec}")
    return problems


def start_once(busybox_tar: Path, variant: str, *flags: str, keep_log: Path | None = None) -> list[str]:
    """Build a fresh host, start cnmd on iptables (``variant``), publish ports; return what
    went wrong (empty: a good start).  The host is gone when this returns; the cnmd log of
    a bad start is copied to ``keep_log`` when given."""
    problems: list[str] = []
    with TestHost() as host:
        try:
            use_variant(host, variant)
            host.start_daemon("--firewall-backend", "iptables", *flags)
            host.import_image(busybox_tar, "busybox")
            host.cnm("network", "create", "apinet")
            for name, (network, ports) in PUBLISHED.items():
                publish = [arg for port in ports for arg in ("-p", port)]
                host.cnm(
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    network,
                    *publish,
                    "busybox",
                    "sleep",
                    "1d",
                    timeout=90,
                )
            time.sleep(0.5)  # let a self-heal pass (if any) run before the rules are read
            problems += dnat_problems(host.run([f"iptables-{variant}-save"]).stdout)
        except HarnessError as exc:
            problems.append(_short(str(exc)))
        finally:
            problems += [
                f"cnmd log: {line}"
                for line in host.daemon_log_tail(2000).splitlines()
                if BAD_LOG.search(line)
            ]
            if problems and keep_log is not None:
                shutil.copyfile(host.daemon_log, keep_log)
    return problems


def _short(error: str) -> str:
    """A failed command's message in one line: what ran (without the venv path) and what
    it printed on stderr."""
    lines = error.splitlines()
    head = lines[0].replace(str(Path(venv_bin("cnm")).parent) + "/", "") if lines else "?"
    head = re.sub(r"-H unix://\S+ ", "", head)
    err = next((ln[len("stderr: ") :] for ln in lines if ln.startswith("stderr: ")), "")
    return f"{head}: {err}" if err else head
