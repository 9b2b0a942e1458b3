"""Entrypoint of every compose container: set the container's network up, then exec.

    entrypoint.py broker          make the CURVE keys on first start, run the broker
    entrypoint.py run COMMAND     run `vnet COMMAND --host $VNET_HOST $VNET_ARGS`
    entrypoint.py forwarder       find the underlay and segment interfaces, shape the
                                  underlay, run `vnet forwarder` for this host
    entrypoint.py relay           join two site networks through the delay relay
    entrypoint.py guest [CMD..]   give the guest its vnet address, run its workload
    entrypoint.py exec CMD..      run CMD as is
    entrypoint.py vnet ARGS..     run `vnet ARGS` (operator commands: vnet tail ...)

Interfaces are found by the subnet their address is in, never by name: docker
numbers them in an order compose does not promise. Settings come from the
environment (SETTINGS below lists each with its default); logs are JSON lines
on stdout, and each service's own log (stderr) goes to stdout as well.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

# name: (default, what it means). "" means unset/off.
SETTINGS: dict[str, tuple[str, str]] = {
    "VNET_HOST": ("", "this container's host name in bus topics and logs"),
    "VNET_ARGS": ("", "extra arguments for the vnet command (shell words)"),
    "VNET_KEYS": ("", "keys directory (shared volume); empty: the bus runs without CURVE"),
    "VNET_KEY_CLIENTS": ("", "broker: names to allow-list, NAME or NAME:control, spaces"),
    "VNET_LOG_LEVEL": ("info", "debug | info | warning | error"),
    "VNET_UNDERLAY_NET": ("", "forwarder: the whole underlay (all sites), reached on-link"),
    "VNET_UNDERLAY_RATE": ("", "forwarder: TBF rate on its underlay egress (e.g. 50mbit)"),
    "VNET_LISTEN_PORT": ("7000", "forwarder: overlay port (TCP and UDP; TLS on port+1)"),
    "VNET_PROXY_ADDRESS": ("", "forwarder: the proxy's IP:PORT; empty: this is the proxy"),
    "VNET_SEGMENT_NET": ("", "forwarder: subnet of its guest segment network"),
    "VNET_GUESTS": ("", "forwarder: its guests as ID=MAC, spaces"),
    "VNET_GUEST_MTU": ("1400", "forwarder: guest MTU (overlay headroom under 1500)"),
    "VNET_RELAY_NETS": ("", "relay: the two site subnets it joins, spaces"),
    "VNET_WAN_DELAY_MS": ("20", "relay: one-way delay between the sites"),
    "VNET_GUEST_IP": ("", "guest: its vnet address with prefix (one subnet for all guests)"),
    "VNET_WORKLOAD": ("none", "guest: patterns | iperf3 | none"),
    "VNET_GUEST_RANK": ("0", "guest: its index in VNET_GUEST_PEERS (patterns)"),
    "VNET_GUEST_PEERS": ("", "guest: every guest's IP by rank, commas (patterns)"),
    "VNET_PATTERNS_ARGS": ("--topology ring", "guest: extra `vnet patterns worker` arguments"),
    "VNET_IPERF_PEER": ("", "guest: iperf3 workload target IP"),
    "VNET_IPERF_ARGS": ("-b 2M -t 3600", "guest: iperf3 client arguments"),
}


def setting(name: str) -> str:
    return os.environ.get(name, SETTINGS[name][0])


def log(event: str, level: str = "info", **fields: object) -> None:
    """One JSON line, shaped like the services' structlog lines."""
    line = {"event": event, "level": level, "service": "entrypoint",
            "host": setting("VNET_HOST"),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    print(json.dumps(line), flush=True)


def fail(event: str, **fields: object) -> NoReturn:
    log(event, level="error", **fields)
    sys.exit(2)


def need(name: str) -> str:
    value = setting(name)
    if not value:
        fail(f"{name} is not set", doc=SETTINGS[name][1])
    return value


def sh(*argv: str) -> str:
    """Run a command; a failure ends the container with the command's error."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        fail("command failed", command=" ".join(argv), error=done.stderr.strip())
    return done.stdout


def addresses() -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(interface, address/prefix) of every IPv4 address in this namespace."""
    out: list[tuple[str, ipaddress.IPv4Interface]] = []
    for link in json.loads(sh("ip", "-j", "-4", "addr", "show")):
        for a in link.get("addr_info", []):
            out.append((link["ifname"], ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")))
    return out


def interface_in(net_text: str) -> tuple[str, ipaddress.IPv4Interface]:
    """The interface (and its address) inside `net_text`; waits a little for docker."""
    net = ipaddress.IPv4Network(net_text, strict=False)
    for _ in range(50):
        for ifname, addr in addresses():
            if addr.ip in net:
                return ifname, addr
        time.sleep(0.1)
    fail("no interface in network", network=net_text, addresses=[str(a) for _, a in addresses()])


def exec_(argv: Sequence[str]) -> NoReturn:
    """Replace this process; the service's stderr (its JSON log) joins stdout."""
    log("exec", argv=list(argv))
    sys.stdout.flush()
    os.dup2(1, 2)
    os.execvp(argv[0], list(argv))


def vnet_argv(command: str) -> list[str]:
    argv = ["vnet", "--log-level", setting("VNET_LOG_LEVEL"), command]
    if setting("VNET_HOST"):
        argv += ["--host", setting("VNET_HOST")]
    return argv + shlex.split(setting("VNET_ARGS"))


# ------------------------------------------------------------------ roles


def broker() -> NoReturn:
    directory = setting("VNET_KEYS")
    if directory:
        from pathlib import Path

        from services.bus import keys

        path = Path(directory)
        first = not (path / "broker.key_secret").exists()
        keys.init(path)
        for item in setting("VNET_KEY_CLIENTS").split():
            name, _, role = item.partition(":")
            keys.add(path, name, control=role == "control")
        log("keys ready", directory=directory, created=first,
            clients=setting("VNET_KEY_CLIENTS").split())
    exec_(vnet_argv("broker"))


def rate_bytes_per_s(rate: str) -> int:
    units = {"gbit": 10**9, "mbit": 10**6, "kbit": 10**3, "bit": 1}
    for unit, scale in units.items():
        if rate.endswith(unit):
            return int(float(rate[: -len(unit)]) * scale / 8)
    fail("rate must end in gbit, mbit, kbit or bit", rate=rate)


def forwarder() -> NoReturn:
    need("VNET_HOST")
    underlay = need("VNET_UNDERLAY_NET")
    ifname, addr = interface_in(underlay)
    # Every site's subnet on-link: frames to other sites cross the WAN relay at layer 2.
    sh("ip", "route", "replace", underlay, "dev", ifname)
    rate = setting("VNET_UNDERLAY_RATE")
    if rate:
        # Burst: 10 ms at the rate, at least 64 KB (GSO frames are segmented past it).
        burst = max(rate_bytes_per_s(rate) // 100, 65536)
        sh("tc", "qdisc", "replace", "dev", ifname, "root", "tbf", "rate", rate,
           "burst", str(burst), "latency", "50ms")
    log("underlay ready", interface=ifname, address=str(addr), rate=rate or "unshaped")
    argv = [*vnet_argv("forwarder"), "--listen", f"{addr.ip}:{setting('VNET_LISTEN_PORT')}",
            "--mtu", setting("VNET_GUEST_MTU")]
    proxy = setting("VNET_PROXY_ADDRESS")
    argv += ["--proxy-address", proxy] if proxy else ["--proxy"]
    guests = setting("VNET_GUESTS").split()
    if guests:
        seg_if, seg_addr = interface_in(need("VNET_SEGMENT_NET"))
        # Only the forwarder joins guests: the host keeps no address on their segment.
        sh("ip", "addr", "flush", "dev", seg_if)
        for item in guests:
            gid, _, mac = item.partition("=")
            argv += ["--guest", f"id={gid},mac={mac},iface={seg_if}"]
        log("segment ready", interface=seg_if, docker_address=str(seg_addr), guests=guests)
    exec_(argv)


def relay() -> NoReturn:
    nets = need("VNET_RELAY_NETS").split()
    if len(nets) != 2:
        fail("VNET_RELAY_NETS needs two subnets", value=nets)
    ifs = [interface_in(n)[0] for n in nets]
    for ifname in ifs:
        sh("ip", "addr", "flush", "dev", ifname)  # a wire, not a host
    delay = setting("VNET_WAN_DELAY_MS")
    exec_([sys.executable, "-m", "services.testbed.relay", "--link", ifs[0], ifs[1], delay])


def guest(command: Sequence[str]) -> NoReturn:
    ip = ipaddress.IPv4Interface(need("VNET_GUEST_IP"))
    links = [a for a in addresses() if a[0] != "lo"]
    if not links:
        fail("guest has no network interface")
    ifname = links[0][0]
    # Docker's address on the segment goes: the guest lives in vnet's one subnet,
    # with no default route, so only the overlay reaches it.
    sh("ip", "addr", "flush", "dev", ifname)
    sh("ip", "addr", "add", str(ip), "dev", ifname)
    with open(f"/sys/class/net/{ifname}/address") as f:
        mac = f.read().strip()
    log("guest address set", interface=ifname, address=str(ip), mac=mac)
    subprocess.run(["iperf3", "-s", "-D", "-B", str(ip.ip)], check=False)
    if command:
        exec_(command)
    workload = setting("VNET_WORKLOAD")
    if workload == "patterns":
        exec_(["vnet", "--log-level", setting("VNET_LOG_LEVEL"), "patterns", "worker",
               "--no-bus", "--guest", need("VNET_HOST"), "--rank", setting("VNET_GUEST_RANK"),
               "--peers", need("VNET_GUEST_PEERS"), "--duration", "0",
               *shlex.split(setting("VNET_PATTERNS_ARGS"))])
    if workload == "iperf3":
        peer = need("VNET_IPERF_PEER")
        # Retry forever: the peer or the overlay may come up after this guest.
        exec_(["sh", "-c", 'while :; do iperf3 -c "$0" "$@"; sleep 2; done', peer,
               *shlex.split(setting("VNET_IPERF_ARGS"))])
    if workload != "none":
        fail("unknown VNET_WORKLOAD", workload=workload)
    exec_(["sleep", "infinity"])


def usage() -> NoReturn:
    print(__doc__)
    print("Settings (environment):")
    for name, (default, doc) in SETTINGS.items():
        print(f"  {name:<20} {doc} (default {default!r})")
    sys.exit(0)


def main(argv: list[str]) -> NoReturn:
    if not argv or argv[0] in ("-h", "--help", "help"):
        usage()
    role, rest = argv[0], argv[1:]
    if role == "broker":
        broker()
    if role == "run" and rest:
        exec_(vnet_argv(rest[0]) + rest[1:])
    if role == "forwarder":
        forwarder()
    if role == "relay":
        relay()
    if role == "guest":
        guest(rest)
    if role == "exec" and rest:
        exec_(rest)
    if role == "vnet":  # operator commands: `... run --rm operator vnet tail`
        exec_(argv)
    fail("unknown role", argv=argv)


if __name__ == "__main__":
    main(sys.argv[1:])
