#!/usr/bin/env bash
# tour.sh — Docker networking, step by step, with cnm.
#
# Each step prints a short explanation, the command ($ cnm …) and its output.  Needs a
# running cnmd (or lets the CLI start one) and the `busybox` image (`make image` +
# `cnm image import images/busybox.tar busybox`; `make demo` does all of it).
# Idempotent: it removes what an earlier run left behind first, and cleans up at the end.
#
# Environment: CNM (the cnm command; default: the repo's .venv/bin/cnm, else `cnm` on PATH),
# CNM_HOST (daemon socket, as for cnm), TOUR_PAUSE=1 to wait for Enter between steps.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${CNM:-}" ]]; then
    if [[ -x "$here/.venv/bin/cnm" ]]; then CNM="$here/.venv/bin/cnm"; else CNM=cnm; fi
fi
BRIDGE="${TOUR_BRIDGE:-cnm0}"

bold=$'\e[1m'; dim=$'\e[2m'; reset=$'\e[0m'
[[ -t 1 ]] || { bold=""; dim=""; reset=""; }

step=0
say() {  # say TITLE TEXT…: a numbered step with its explanation
    step=$((step + 1))
    printf '\n%s== %d. %s ==%s\n' "$bold" "$step" "$1" "$reset"
    shift
    printf '%s\n' "$@" | fold -s -w 96
    if [[ "${TOUR_PAUSE:-0}" == 1 && -t 0 ]]; then read -r -p "${dim}(Enter)${reset} " _; fi
}
show() {  # show CMD…: print "$ cnm …" then run it (through $CNM when it is cnm)
    printf '%s$ %s%s\n' "$bold" "$*" "$reset"
    if [[ "$1" == cnm ]]; then shift; "$CNM" "$@"; else "$@"; fi
}
quiet() { "$CNM" "$@" >/dev/null 2>&1 || true; }

cleanup() {
    quiet rm -f tour-a tour-b tour-c
    quiet network rm tour-net
}

cleanup  # leftovers of an earlier run

say "The networks" \
    "A fresh engine has three networks, as in Docker: 'bridge' (the default: a Linux bridge" \
    "called $BRIDGE with a NAT'd subnet), 'host' (share the host's own network stack) and" \
    "'none' (loopback only)."
show cnm network ls

say "The default bridge, inspected" \
    "Its subnet and gateway come from the first default address pool (172.17.0.0/16); the" \
    "gateway address lives on the bridge itself; 'Containers' lists what is attached."
show cnm network inspect bridge

say "Two containers on the default bridge" \
    "Each container gets its own network namespace (a sandbox), a veth pair whose one end is" \
    "its eth0 and whose other end is plugged into $BRIDGE, and the lowest free address."
show cnm run -d --name tour-a busybox sleep 1d
show cnm run -d --name tour-b busybox sleep 1d
show cnm ps
ip_a="$("$CNM" inspect -f '{{ .NetworkSettings.IPAddress }}' tour-a)"
ip_b="$("$CNM" inspect -f '{{ .NetworkSettings.IPAddress }}' tour-b)"
echo "tour-a is $ip_a, tour-b is $ip_b"

say "Their veth pair" \
    "Inside the container, /sys/class/net/eth0/iflink is the interface index of the *other*" \
    "end of its veth pair. On the host that index is a port of $BRIDGE:"
show cnm exec tour-a cat /sys/class/net/eth0/iflink
peer="$("$CNM" exec tour-a cat /sys/class/net/eth0/iflink | tr -d '[:space:]')"
show cnm exec tour-a ip -o link show eth0
printf '%s$ ip -o link | grep "^%s:"%s\n' "$bold" "$peer" "$reset"
ip -o link | grep "^${peer}:" || { echo "no host link with ifindex $peer" >&2; exit 1; }
show ip -o link show master "$BRIDGE"

say "A ping between them" \
    "Both ends are on the same bridge, so the packet never leaves it: layer 2 switching."
show cnm exec tour-a ping -c 2 "$ip_b"

say "A second network cannot reach the first" \
    "A user-defined network gets its own bridge (br-<id>) and subnet. cnm's firewall drops" \
    "traffic between different bridge networks, so tour-c cannot reach tour-a."
show cnm network create --subnet 10.222.0.0/24 tour-net
show cnm run -d --name tour-c --network tour-net busybox sleep 1d
printf '%s$ cnm exec tour-c ping -c 1 -W 1 %s%s\n' "$bold" "$ip_a" "$reset"
if "$CNM" exec tour-c ping -c 1 -W 1 "$ip_a"; then
    echo "unexpected: tour-c reached tour-a across networks" >&2
    exit 1
fi
echo "(no answer, as expected: the networks are isolated)"
say "...until it joins it" \
    "'network connect' adds a second interface (eth1) in the other network."
show cnm network connect bridge tour-c
show cnm exec tour-c ping -c 1 -W 2 "$ip_a"
show cnm network disconnect bridge tour-c

say "The NAT rules" \
    "cnm keeps its rules in its own nftables table: masquerade for traffic leaving a" \
    "bridge network to the outside, and the isolation between networks, each rule" \
    "tagged (comment) with the network that owns it."
show nft list table ip cnm

say "Cleaning up" \
    "Removing a container releases its address, veth pair, netns and rules; removing the" \
    "network deletes its bridge."
show cnm rm -f tour-a tour-b tour-c
show cnm network rm tour-net
show cnm network ls
printf '\n%sTour complete.%s\n' "$bold" "$reset"
