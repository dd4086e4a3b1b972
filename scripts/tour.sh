#!/usr/bin/env bash
# tour.sh — Docker networking, step by step, with cnm.
#
# Each step prints a short explanation, the command ($ cnm …) and its output.  Needs a
# running cnmd (or lets the CLI start one) and the `busybox` image (`make image` +
# `cnm image import images/busybox.tar busybox`; `make demo` does all of it).
# Idempotent: it removes what an earlier run left behind first, and cleans up at the end.
#
# Environment: CNM (the cnm command; default: the repo's .venv/bin/cnm, else `cnm` on PATH),
# CNM_HOST (daemon socket, as for cnm), TOUR_PAUSE=1 to wait for Enter between steps,
# TOUR_PORT (first published host port, default 8080; the proxy step also uses the next one),
# TOUR_RESTART_CNMD=1 (default: CNM_SANDBOX, which scripts/in-sandbox sets): this cnmd is a
# throwaway one (`make demo-sandbox`, the e2e test) and the tour may restart it with
# --userland-proxy to show the proxy, then restart it as it was.
# Without it, the proxy step runs only if cnmd already has --userland-proxy; else it says how.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${CNM:-}" ]]; then
    if [[ -x "$here/.venv/bin/cnm" ]]; then CNM="$here/.venv/bin/cnm"; else CNM=cnm; fi
fi
BRIDGE="${TOUR_BRIDGE:-cnm0}"
PORT="${TOUR_PORT:-8080}"
PORT2=$((PORT + 1))

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
expect_fail() {  # expect_fail WHY CMD…: print and run CMD, which must fail; then say WHY
    local why="$1"; shift
    printf '%s$ %s%s\n' "$bold" "$*" "$reset"
    if [[ "$1" == cnm ]]; then set -- "$CNM" "${@:2}"; fi
    if "$@"; then echo "unexpected: that worked" >&2; exit 1; fi
    echo "($why)"
}
fetch() {  # fetch URL: what busybox wget gets there, retried for a few seconds (httpd starting)
    for _ in $(seq 15); do
        busybox timeout 3 busybox wget -qO- "$1" >/dev/null 2>&1 && break
        sleep 0.2
    done
    show busybox timeout 3 busybox wget -qO- "$1"
}
conns() {  # conns PORT: hold a TCP connection to 127.0.0.1:PORT open and show who holds what
    (sleep 2 | busybox timeout 3 busybox nc 127.0.0.1 "$1" >/dev/null 2>&1 || true) &
    local holder=$!
    sleep 0.5
    show ss -tnpH state established "( sport = :$1 or dport = :$1 or dport = :80 )"
    wait "$holder"
}

# -- cnmd itself: which process serves $CNM_HOST, with which flags -------------------------------
sock="${CNM_HOST:-unix:///run/cnm/cnm.sock}"
sock="${sock#unix://}"
cnmd_pid() {  # the process listening on cnmd's socket (ss reads it from /proc; nothing is changed)
    ss -xlpnH "src $sock" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}
proxy_on() {  # does cnmd PID run with --userland-proxy (bare, =true/1/yes/on, or a separate value)?
    local prev="" arg on=false
    while IFS= read -r -d '' arg; do
        case "$arg" in
            --userland-proxy) on=true ;;
            --userland-proxy=*) [[ "${arg#*=}" =~ ^(1|true|yes|on)$ ]] && on=true || on=false ;;
            *) [[ "$prev" == --userland-proxy && "$arg" =~ ^(0|false|no|off)$ ]] && on=false ;;
        esac
        prev="$arg"
    done < "/proc/$1/cmdline"
    [[ "$on" == true ]]
}
ORIGINAL_ARGV=()  # cnmd's command line before the tour restarted it (empty: not restarted)
restart_cnmd() {  # restart_cnmd ARGV…: stop cnmd (its containers keep running) and start ARGV
    local pid log
    pid="$(cnmd_pid)"
    [[ -n "$pid" ]] || { echo "no cnmd listens on $sock" >&2; return 1; }
    log="$(readlink "/proc/$pid/fd/2" || echo /dev/null)"
    [[ "$log" == /* ]] || log=/dev/null
    kill -TERM "$pid"
    for _ in $(seq 300); do [[ -e "/proc/$pid" ]] || break; sleep 0.1; done
    [[ ! -e "/proc/$pid" ]] || { echo "cnmd $pid did not stop" >&2; return 1; }
    setsid "$@" >>"$log" 2>&1 </dev/null &
    # no autostart: the CLI must not start a default-rooted cnmd while this one comes up
    for _ in $(seq 300); do CNM_NO_AUTOSTART=1 "$CNM" version >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "cnmd did not come back (log: $log)" >&2
    return 1
}
restore_cnmd() {  # put back the cnmd the tour found, if it restarted it
    if ((${#ORIGINAL_ARGV[@]})); then
        local argv=("${ORIGINAL_ARGV[@]}")
        ORIGINAL_ARGV=()
        restart_cnmd "${argv[@]}"
    fi
}

cleanup() {
    quiet rm -f tour-a tour-b tour-c tour-d tour-e tour-web tour-web2
    quiet network rm tour-net tour-other
}
on_exit() {
    local rc=$?
    restore_cnmd || rc=1
    exit "$rc"
}
trap on_exit EXIT

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

say "Names on a user-defined network" \
    "On a user-defined network a container finds the others by name: its resolv.conf points" \
    "at the embedded DNS server, 127.0.0.11, which cnmd serves inside every container (one" \
    "server for the whole host). It answers the names of the containers that share a network" \
    "with the one asking, and forwards every other name to the host's resolvers."
show cnm run -d --name tour-d --network tour-net busybox sleep 1d
show cnm exec tour-c cat /etc/resolv.conf
show cnm exec tour-c ping -c 1 -W 2 tour-d
show cnm exec tour-c nslookup tour-d

say "...and only there" \
    "tour-e, on another network, asks the same server for the same name and gets no answer:" \
    "names are scoped to the networks a container is attached to. (The default bridge has no" \
    "embedded DNS at all, as in Docker.)"
show cnm network create tour-other
show cnm run -d --name tour-e --network tour-other busybox sleep 1d
expect_fail "not found, as expected: tour-d shares no network with tour-e" cnm exec tour-e nslookup tour-d

host_ip="$(ip -4 route get 192.0.2.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')"  # route lookup only
say "Publishing a port" \
    "'-p $PORT:80' publishes the container's port 80 on the host's port $PORT. By default the" \
    "kernel does the work: a DNAT map entry in cnm's nftables table sends the host's port to" \
    "the container, from other machines, from the host's own address and from 127.0.0.1" \
    "alike (route_localnet), and the container sees the client's real address."
show cnm run -d --name tour-web -p "$PORT:80" busybox httpd -f -p 80 -h /etc
echo "(busybox httpd serves the container's /etc: /hostname is the container's short id)"
fetch "http://127.0.0.1:$PORT/hostname"
if [[ -n "$host_ip" ]]; then fetch "http://$host_ip:$PORT/hostname"; fi
show cnm port tour-web
show cnm ps --filter name=tour-web

say "The NAT rules" \
    "cnm keeps its rules in its own nftables table: masquerade for traffic leaving a" \
    "bridge network to the outside, the isolation between networks (each rule tagged" \
    "with the network that owns it), and the published ports as map elements (one per" \
    "port or range), so the rules stay the same however many ports are published."
show nft list table ip cnm
conns "$PORT"
echo "(kernel mode: the client talks to 127.0.0.1:$PORT and the kernel rewrites its packets;" \
     "no process sits in the middle. cnmd only holds the port, so no other program takes it:)"
show ss -ltnpH "( sport = :$PORT )"

say "Seeing inside: the map" \
    "'cnm network map' draws what the kernel holds: the host's uplink, each network's bridge," \
    "the veth pairs on it (the host end's ifindex) and the container at the other end of each," \
    "with its interface, IP, MAC and published ports.  '--format dot' is Graphviz source," \
    "'--format svg' a drawing, '--format json' the facts."
show cnm network map
say "Seeing inside: one container explained" \
    "'cnm explain' prints every fact of a container's networking as the kernel holds it, each" \
    "followed by the command that shows the same thing: its namespace and how to enter it," \
    "eth0 (whose iflink is the host end's ifindex), the veth's host end and its bridge, the" \
    "routes inside, resolv.conf and hosts, the nftables element that serves its published port," \
    "and the live conntrack entries of its address."
fetch "http://127.0.0.1:$PORT/hostname" >/dev/null
show cnm explain tour-web
say "Seeing inside: a packet's path to a published port" \
    "'cnm trace SRC DST' walks the path the kernel would give a packet, from its real routes," \
    "neighbours and ruleset: 'world' is a packet arriving from outside on the host's" \
    "default-route interface, here for port $PORT of the host's own address. The prerouting" \
    "hook's port map rewrites its destination (DNAT) to tour-web's address and port 80, the" \
    "forward hook lets a published port enter the bridge, and the bridge hands it to the veth." \
    "Each hop is followed by the command that shows the same fact ('--live' sends a real probe)."
show cnm trace world "host:$PORT"
say "Seeing inside: a blocked packet" \
    "The ping of step 6, traced: tour-c (on tour-net) to tour-a (on bridge). The route leads to" \
    "tour-net's bridge and on to the host, which would forward it to $BRIDGE, but the forward" \
    "hook's isolation rule drops what goes from one bridge network to another; the trace names" \
    "that rule."
show cnm trace tour-c tour-a/icmp

pid="$(cnmd_pid)"
if [[ -n "$pid" ]] && ! proxy_on "$pid" && [[ "${TOUR_RESTART_CNMD:-${CNM_SANDBOX:-0}}" == 1 ]]; then
    mapfile -d '' ORIGINAL_ARGV < "/proc/$pid/cmdline"
    # cnmd is a Python console script: /proc shows "python …/cnmd ARGS"; run the script
    # itself, so the process is still called cnmd
    if [[ "${ORIGINAL_ARGV[0]##*/}" == python* && -x "${ORIGINAL_ARGV[1]:-}" ]]; then
        ORIGINAL_ARGV=("${ORIGINAL_ARGV[@]:1}")
    fi
    say "The userland proxy: restarting cnmd with --userland-proxy" \
        "This cnmd is a throwaway one, so the tour restarts it in proxy mode. Its containers keep" \
        "running (live restore); the new cnmd re-creates their ports."
    printf '%s$ kill %s; %s --userland-proxy%s\n' "$bold" "$pid" "${ORIGINAL_ARGV[*]}" "$reset"
    restart_cnmd "${ORIGINAL_ARGV[@]}" --userland-proxy
    pid="$(cnmd_pid)"
fi
if [[ -n "$pid" ]] && proxy_on "$pid"; then
    say "The userland proxy" \
        "With --userland-proxy, traffic to 127.0.0.1 (and from containers to the host's address)" \
        "is not DNATed: cnmd itself accepts it and relays it to the container. One process serves" \
        "every published port of the host, TCP and UDP -- Docker runs one docker-proxy per port."
    show cnm run -d --name tour-web2 -p "$PORT2:80" busybox httpd -f -p 80 -h /etc
    fetch "http://127.0.0.1:$PORT/hostname"
    fetch "http://127.0.0.1:$PORT2/hostname"
    show ss -ltnpH "( sport = :$PORT or sport = :$PORT2 )"
    echo "(one process, cnmd pid $pid, listens on both ports)"
    conns "$PORT"
    echo "(proxy mode: cnmd holds both connections, the client's and its own to the container)"
    show nft list chain ip cnm output
    echo "(loopback destinations 'return' before the port map: the proxy serves them)"
    if ((${#ORIGINAL_ARGV[@]})); then
        say "Back to kernel mode" "The tour restarts cnmd as it found it."
        printf '%s$ kill %s; %s%s\n' "$bold" "$pid" "${ORIGINAL_ARGV[*]}" "$reset"
        restore_cnmd
        fetch "http://127.0.0.1:$PORT2/hostname"
    fi
else
    say "The userland proxy (not shown)" \
        "This cnmd runs in kernel mode and the tour does not restart a daemon it did not start." \
        "To see the proxy: restart cnmd with --userland-proxy (scripts/start-cnmd --userland-proxy" \
        "after stopping it), or run 'make demo-sandbox', where the tour does it in a throwaway host."
fi

say "Cleaning up" \
    "Removing a container releases its address, veth pair, netns, names, ports and rules;" \
    "removing a network deletes its bridge."
show cnm rm -f tour-a tour-b tour-c tour-d tour-e tour-web
quiet rm -f tour-web2
show cnm network rm tour-net tour-other
show cnm network ls
printf '\n%sTour complete.%s\n' "$bold" "$reset"
