#!/usr/bin/env python3
"""Timing loops that run INSIDE the bench's throwaway host (bench/attach.py starts them with
nsenter, so no nsenter cost lands in a figure).  Each prints one JSON object on stdout:
per-iteration milliseconds.

  inner.py cni N WORKDIR              CNI bridge+host-local: ADD and DEL per container
  inner.py netavark N WORKDIR         netavark setup and teardown per container
  inner.py cli N NET CLI [ARG…] -- C… `CLI ARG… network connect NET C` + `… disconnect NET C`
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

CNI_DIR = "/usr/lib/cni"
NETAVARK = "/usr/lib/podman/netavark"


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _netns(name: str, add: bool) -> None:
    subprocess.run(["ip", "netns", "add" if add else "del", name], check=True)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stdout!r} {proc.stderr!r}")


def cni(n: int, workdir: str) -> dict:
    config = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": {
                "type": "host-local",
                "subnet": "10.210.0.0/16",
                "dataDir": os.path.join(workdir, "cni-ipam"),
            },
        }
    )
    adds, dels = [], []
    for i in range(n):
        ns = f"cni{i}"
        _netns(ns, True)
        env = {
            "PATH": os.environ["PATH"],
            "CNI_CONTAINERID": f"bench{i:04d}",
            "CNI_NETNS": f"/run/netns/{ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
        }
        t0 = time.perf_counter()
        proc = subprocess.run(
            [f"{CNI_DIR}/bridge"],
            input=config,
            text=True,
            capture_output=True,
            env={**env, "CNI_COMMAND": "ADD"},
        )
        adds.append(_ms(t0))
        _check(proc, "CNI ADD")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [f"{CNI_DIR}/bridge"],
            input=config,
            text=True,
            capture_output=True,
            env={**env, "CNI_COMMAND": "DEL"},
        )
        dels.append(_ms(t0))
        _check(proc, "CNI DEL")
        _netns(ns, False)
    return {"add": adds, "del": dels}


def netavark(n: int, workdir: str) -> dict:
    confdir = os.path.join(workdir, "netavark")
    os.makedirs(confdir, exist_ok=True)
    net_id = "b" * 64
    setups, teardowns = [], []
    for i in range(n):
        ns = f"nv{i}"
        _netns(ns, True)
        doc = json.dumps(
            {
                "container_id": f"{i:064x}",
                "container_name": f"bench{i}",
                "networks": {
                    "benchnet": {"interface_name": "eth0", "static_ips": [f"10.220.{i // 250}.{i % 250 + 2}"]}
                },
                "network_info": {
                    "benchnet": {
                        "name": "benchnet",
                        "id": net_id,
                        "driver": "bridge",
                        "network_interface": "nv0",
                        "subnets": [{"subnet": "10.220.0.0/16", "gateway": "10.220.0.1"}],
                        "ipv6_enabled": False,
                        "internal": False,
                        "dns_enabled": False,
                        "ipam_options": {"driver": "host-local"},
                    }
                },
            }
        )
        argv = [NETAVARK, "--config", confdir]
        t0 = time.perf_counter()
        proc = subprocess.run([*argv, "setup", f"/run/netns/{ns}"], input=doc, text=True, capture_output=True)
        setups.append(_ms(t0))
        _check(proc, "netavark setup")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [*argv, "teardown", f"/run/netns/{ns}"], input=doc, text=True, capture_output=True
        )
        teardowns.append(_ms(t0))
        _check(proc, "netavark teardown")
        _netns(ns, False)
    return {"setup": setups, "teardown": teardowns}


def cli(n: int, net: str, argv: list[str], containers: list[str]) -> dict:
    rounds = []
    for c in containers[:n]:
        t0 = time.perf_counter()
        _check(
            subprocess.run([*argv, "network", "connect", net, c], capture_output=True, text=True), "connect"
        )
        _check(
            subprocess.run([*argv, "network", "disconnect", net, c], capture_output=True, text=True),
            "disconnect",
        )
        rounds.append(_ms(t0))
    return {"roundtrip": rounds}


def main(args: list[str]) -> int:
    kind = args[0]
    if kind == "cni":
        result = cni(int(args[1]), args[2])
    elif kind == "netavark":
        result = netavark(int(args[1]), args[2])
    elif kind == "cli":
        sep = args.index("--")
        result = cli(int(args[1]), args[2], args[3:sep], args[sep + 1 :])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
