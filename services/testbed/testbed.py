"""The embedded testbed: hosts, guests, sites and WAN links as network namespaces.

Layout (see `plan` for names and addresses): every host is a namespace on its
site's underlay segment (a bridge in the site's namespace, which is also the site's
router); sites are joined by point-to-point WAN links. Guests are namespaces whose
``eth0`` is a veth into their host's namespace (``g-<guest>``, up, no IP) or, with
``attach = "tap"``, an interface the forwarder creates and hands over. The host
namespaces neither bridge nor route guest traffic: only the forwarder joins them.
Every underlay veth takes its receive work on one CPU (RPS, `_steer_rx`), as a
single-queue NIC does, so a TCP flow over the underlay arrives in order.

WAN shaping, per site pair, the same in both directions:

- rate: a TBF (or HTB) qdisc on each router's egress interface towards the WAN;
- delay: this kernel has no netem, so a delayed WAN link runs through a user-space
  delay relay (`services.testbed.relay`) in the ``<prefix>-wan`` namespace: each
  router's WAN veth ends there, and the relay copies frames between the two ends
  with AF_PACKET (virtio-net header on, so 64 KB GSO frames pass in one piece),
  holding each in a priority queue keyed on release time until `delay_ms` has
  passed. One selector loop serves all links; a frame leaves ~0.1-0.2 ms late
  (wake-up and Python), never early. The relay runs at nice -10 (it stands for the
  network, which should not queue behind the workloads) and costs CPU per frame, so
  a delayed link above ~2-3 Gbit/s is bounded by the relay: `vnet testbed measure
  SPEC` shows what a spec really gets.

Measured on this machine (2 vCPU; `vnet testbed measure`, ping min/avg, iperf3 TCP
3 s each way): wan.toml 10 ms/50 Mbit -> RTT 20.6/20.7 ms, 46.7/47.0 Mbit/s;
25 ms/20 Mbit -> 50.7/50.8 ms, 18.1/18.3 Mbit/s; 5 ms/100 Mbit -> 10.5/10.7 ms,
94.4/94.8 Mbit/s; two-clusters.toml 1 ms/100 Mbit (HTB) -> 2.4/2.6 ms, 95.5 Mbit/s.
TCP goodput is ~0.95 of the shaped rate (headers). A 1 ms relayed link with no rate
carried 2.2-3.6 Gbit/s (machine busy or not), so the relay is not the bottleneck at
WAN rates; hosts on one segment see 0.05 ms and 6-15 Gbit/s. tests/testbed checks
RTT >= 2 x delay and the rate within 0.5x-1.1x.

IPv6 is off in every namespace, so guests emit only the frames a test sends
(no router solicitations or MLD reports to upset exact counts).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import NetNS
from pyroute2 import netns as pyr_netns

from services.testbed import rundir
from services.testbed.plan import (
    BRIDGE_IFNAME,
    GUEST_IFNAME,
    LAN_IFNAME,
    LAN_MAC,
    UNDERLAY_IFNAME,
    GuestInfo,
    HostPlan,
    Plan,
    WanPlan,
    make_plan,
    tc_commands,
)
from services.testbed.spec import TestbedSpec

__all__ = ["GuestInfo", "Testbed", "TestbedError", "plain_bridges", "rx_cpu_mask"]

NUD_PERMANENT = 0x80
RELAY_READY_TIMEOUT_S = 20.0


class TestbedError(RuntimeError):
    """Building or tearing down the testbed failed."""

    __test__ = False


# Bridges stay plain switches: where br_netfilter is loaded (Docker loads it), a new
# namespace's bridges would hand every frame to iptables' hooks, which cost every path
# that crosses one (br_nf_pre_routing showed in the forwarders' profiles).
PLAIN_BRIDGES = {f"net.bridge.bridge-nf-call-{table}": "0"
                 for table in ("iptables", "ip6tables", "arptables")}


def _sysctl(netns: str, settings: dict[str, str], ignore_unknown: bool = False) -> None:
    args = [f"{k}={v}" for k, v in settings.items()]
    flags = ["-e"] if ignore_unknown else []
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-q", *flags, "-w", *args],
                   check=True, capture_output=True, timeout=30)


def plain_bridges(netns: str) -> None:
    """The namespace's bridges skip br_netfilter (nothing to do where it is not loaded)."""
    _sysctl(netns, PLAIN_BRIDGES, ignore_unknown=True)


def rx_cpu_mask() -> str:
    """The rps_cpus mask of the underlay's receive CPU: the last one this process may use."""
    bits = format(1 << max(os.sched_getaffinity(0)), "x")
    groups = [bits[max(0, end - 8):end] for end in range(len(bits), 0, -8)]
    return ",".join(reversed(groups))  # sysfs writes 32-bit groups, comma-separated


def _steer_rx(netns: str, ifnames: list[str]) -> None:
    """Receive processing of these veths on one CPU, as a single-queue NIC would.

    A veth hands each packet to the backlog of the CPU that sent it, and a TCP
    connection sends from two CPUs at once (the writer's system call and the softirq
    that takes its ACKs), so without this its segments arrive out of order. Over the
    underlay that hit the forwarders' TCP links: reordering, spurious retransmits and
    a collapsed window cut four guest streams through vnet from 11 to 5 Gbit/s.
    A kernel without RPS has no rps_cpus file, and nothing to steer.
    """
    mask = rx_cpu_mask()
    files = [f"/sys/class/net/{ifname}/queues/rx-0/rps_cpus" for ifname in ifnames]
    script = "; ".join(f"if [ -e {f} ]; then echo {mask} > {f}; fi" for f in files)
    subprocess.run(["ip", "netns", "exec", netns, "sh", "-ec", script],
                   check=True, capture_output=True, timeout=30)


def _index(ns: NetNS, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise TestbedError(f"no interface {ifname!r} in this namespace")
    return int(found[0])


class Testbed:
    """Builds the testbed on entry and removes all of it on exit, also after errors."""

    __test__ = False

    def __init__(self, spec: TestbedSpec, prefix: str | None = None,
                 spec_source: str = "", owner_cli: bool = False) -> None:
        self.spec = spec
        if prefix:
            rundir.check_prefix(prefix)
            if (rundir.run_root() / prefix).exists() or any(
                    n.startswith(prefix + "-") for n in rundir.list_netns()):
                raise TestbedError(f"prefix {prefix!r} is in use (see `vnet testbed ls`)")
        self._prefix = prefix or rundir.new_prefix()
        self.plan: Plan = make_plan(spec, self._prefix)
        self._run_dir = rundir.run_root() / self._prefix
        self._state = rundir.RunState(
            self._prefix, os.getpid(), rundir.proc_start_time(os.getpid()),
            spec_source or spec.name, time.time(), owner_cli=owner_cli)
        self._procs: list[subprocess.Popen[Any]] = []
        self._relay: subprocess.Popen[str] | None = None
        self.relay_counters: dict[str, Any] = {}
        self._owns_run_dir = False
        self._closed = False

    # --- the API the forwarder and tests use ---------------------------------

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def run_dir(self) -> Path:
        return self._run_dir

    @property
    def proxy_host(self) -> str:
        return next(h.name for h in self.plan.hosts if h.proxy)

    @property
    def lan_ifname(self) -> str:
        """The proxy host's interface on the user's LAN (in the proxy's namespace)."""
        return LAN_IFNAME

    @property
    def lan_netns(self) -> str:
        """The namespace standing for the user's LAN (its ``eth0`` faces the proxy)."""
        return self.plan.lan_netns

    @property
    def lan_ip(self) -> str:
        """The LAN machine's IP: in the guests' subnet, as a machine on the user's LAN."""
        return self.plan.lan_ip

    def hosts(self) -> list[str]:
        return [h.name for h in self.plan.hosts]

    def _host(self, host: str) -> HostPlan:
        for h in self.plan.hosts:
            if h.name == host:
                return h
        raise KeyError(f"unknown host {host!r} (hosts: {', '.join(self.hosts())})")

    def host_netns(self, host: str) -> str:
        return self._host(host).netns

    def underlay_ip(self, host: str) -> str:
        return self._host(host).underlay_ip

    def site_of(self, host: str) -> str:
        return self._host(host).site

    def site_netns(self, site: str) -> str:
        for s in self.plan.sites:
            if s.name == site:
                return s.netns
        raise KeyError(f"unknown site {site!r}")

    def guest(self, guest: str) -> GuestInfo:
        for g in self.plan.guests:
            if g.name == guest:
                return g
        names = ", ".join(g.name for g in self.plan.guests)
        raise KeyError(f"unknown guest {guest!r} (guests: {names})")

    def guests(self) -> list[GuestInfo]:
        return list(self.plan.guests)

    @property
    def relay(self) -> subprocess.Popen[str] | None:
        """The delay relay process (None when no WAN link has a delay)."""
        return self._relay

    def popen(self, netns: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside `netns`, in its own process group, stopped at teardown."""
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], **kw)
        self._procs.append(proc)
        self._state.processes.append((proc.pid, rundir.proc_start_time(proc.pid)))
        self._save_state()
        return proc

    def run(self, netns: str, argv: list[str], timeout: float = 30.0, check: bool = True,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `netns` to completion; output captured as text by default."""
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(["ip", "netns", "exec", netns, *argv], timeout=timeout,
                              check=check, **kw)

    def configure_guest_interface(self, guest: str, ifname: str) -> None:
        """Give `ifname` (already moved into the guest's namespace) the guest's MAC, IP
        and MTU, and bring it up: for ``attach = "tap"`` guests."""
        g = self.guest(guest)
        with NetNS(g.netns) as ns:
            idx = _index(ns, ifname)
            ns.link("set", index=idx, state="down")
            ns.link("set", index=idx, address=g.mac, mtu=g.mtu)
            ns.link("set", index=idx, state="up")
            ns.addr("replace", index=idx, address=g.ip, prefixlen=g.prefix_len)

    def describe(self) -> dict[str, Any]:
        """What was built, as plain data (the CLI prints it)."""
        return {
            "prefix": self.prefix,
            "run_dir": str(self.run_dir),
            "spec": self.spec.name,
            "proxy_host": self.proxy_host,
            "lan": {"netns": self.lan_netns, "ip": self.lan_ip, "proxy_ifname": self.lan_ifname},
            "sites": [{"name": s.name, "netns": s.netns, "subnet": s.subnet}
                      for s in self.plan.sites],
            "hosts": [{"name": h.name, "site": h.site, "netns": h.netns,
                       "underlay_ip": h.underlay_ip, "proxy": h.proxy}
                      for h in self.plan.hosts],
            "guests": [{"name": g.name, "host": g.host, "netns": g.netns, "mac": g.mac,
                        "ip": f"{g.ip}/{g.prefix_len}", "mtu": g.mtu,
                        "host_ifname": g.host_ifname, "attach": g.attach}
                       for g in self.plan.guests],
            "wans": [{"sites": [w.site_a, w.site_b], "delay_ms": w.delay_ms,
                      "rate_mbit": w.rate_mbit, "shaper": w.shaper, "relayed": w.relayed}
                     for w in self.plan.wans],
            "wan_netns": self.plan.wan_netns,
        }

    # --- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Testbed:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        left = self.close()
        if left and exc is None:
            raise TestbedError(f"teardown left {', '.join(left)}")

    def close(self) -> list[str]:
        """Stop processes, delete namespaces and the run directory; return what remains."""
        if self._closed or os.getpid() != self._state.owner_pid:
            return []  # closed already, or a forked child that must not tear down
        self._closed = True
        if not self._owns_run_dir:
            return []  # nothing was created
        rundir.stop_processes([(p.pid, rundir.proc_start_time(p.pid)) for p in self._procs])
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._relay is not None and self._relay.stdout is not None:
            for line in self._relay.stdout.read().splitlines():
                if line.startswith("{"):
                    self.relay_counters = json.loads(line)
        for p in self._procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        left = rundir.remove_namespaces(self._state.namespaces[::-1])
        left += [n for n in rundir.list_netns() if n.startswith(self.prefix + "-")
                 and n not in left]
        if not left:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        return [f"namespace {n}" for n in left]

    def _save_state(self) -> None:
        if self._run_dir.exists():
            self._state.save(self._run_dir)

    def _new_netns(self, name: str, forward: bool = False) -> None:
        self._state.namespaces.append(name)
        self._save_state()
        pyr_netns.create(name)
        settings = {"net.ipv6.conf.all.disable_ipv6": "1",
                    "net.ipv6.conf.default.disable_ipv6": "1",
                    # Explicit both ways: a new namespace may inherit the root's value.
                    "net.ipv4.ip_forward": "1" if forward else "0"}
        _sysctl(name, settings)
        plain_bridges(name)
        with NetNS(name) as ns:
            ns.link("set", index=_index(ns, "lo"), state="up")

    def _build(self) -> None:
        plan = self.plan
        self._run_dir.mkdir(parents=True, exist_ok=False)
        self._owns_run_dir = True
        self._save_state()
        for s in plan.sites:
            self._new_netns(s.netns, forward=True)
            with NetNS(s.netns) as ns:
                ns.link("add", ifname=BRIDGE_IFNAME, kind="bridge")
                idx = _index(ns, BRIDGE_IFNAME)
                ns.link("set", index=idx, mtu=plan.underlay_mtu, state="up")
                ns.addr("add", index=idx, address=s.gateway_ip, prefixlen=24)
        for h in plan.hosts:
            self._new_netns(h.netns)
            self._build_host(h)
        for g in plan.guests:
            self._new_netns(g.netns)
            if g.attach == "veth":
                self._build_veth_guest(g)
        self._new_netns(plan.lan_netns)
        self._build_lan()
        if plan.wan_netns:
            self._new_netns(plan.wan_netns)
        for w in plan.wans:
            self._build_wan(w)
        if plan.wan_netns:
            self._start_relay(plan.wan_netns)
        self._state.ready = True
        self._save_state()

    def _build_host(self, h: HostPlan) -> None:
        site_ns = self.plan.site(h.site).netns
        with NetNS(h.netns) as ns:
            ns.link("add", ifname=UNDERLAY_IFNAME, kind="veth",
                    peer={"ifname": h.site_ifname, "net_ns_fd": site_ns})
            idx = _index(ns, UNDERLAY_IFNAME)
            ns.link("set", index=idx, mtu=self.plan.underlay_mtu, state="up")
            ns.addr("add", index=idx, address=h.underlay_ip, prefixlen=h.prefix_len)
            ns.route("add", dst="default", gateway=h.gateway_ip)
        with NetNS(site_ns) as ns:
            idx = _index(ns, h.site_ifname)
            ns.link("set", index=idx, mtu=self.plan.underlay_mtu,
                    master=_index(ns, BRIDGE_IFNAME), state="up")
        _steer_rx(h.netns, [UNDERLAY_IFNAME])
        _steer_rx(site_ns, [h.site_ifname])

    def _build_veth_guest(self, g: GuestInfo) -> None:
        host_ns = self.host_netns(g.host)
        with NetNS(host_ns) as ns:
            ns.link("add", ifname=g.host_ifname, kind="veth",
                    peer={"ifname": GUEST_IFNAME, "net_ns_fd": g.netns})
            ns.link("set", index=_index(ns, g.host_ifname), mtu=g.mtu, state="up")
        self.configure_guest_interface(g.name, GUEST_IFNAME)

    def _build_lan(self) -> None:
        plan = self.plan
        proxy_ns = self.host_netns(self.proxy_host)
        with NetNS(proxy_ns) as ns:
            ns.link("add", ifname=LAN_IFNAME, kind="veth",
                    peer={"ifname": GUEST_IFNAME, "net_ns_fd": plan.lan_netns})
            ns.link("set", index=_index(ns, LAN_IFNAME), mtu=plan.lan_mtu, state="up")
        with NetNS(plan.lan_netns) as ns:
            idx = _index(ns, GUEST_IFNAME)
            ns.link("set", index=idx, address=LAN_MAC, mtu=plan.lan_mtu, state="up")
            ns.addr("add", index=idx, address=plan.lan_ip, prefixlen=plan.lan_prefix_len)

    def _build_wan(self, w: WanPlan) -> None:
        plan = self.plan
        ns_a, ns_b = plan.site(w.site_a).netns, plan.site(w.site_b).netns
        if w.relayed:
            assert plan.wan_netns is not None
            for site_ns, ifname, relay_ifname in ((ns_a, w.ifname_a, w.relay_ifname_a),
                                                   (ns_b, w.ifname_b, w.relay_ifname_b)):
                with NetNS(site_ns) as ns:
                    ns.link("add", ifname=ifname, kind="veth",
                            peer={"ifname": relay_ifname, "net_ns_fd": plan.wan_netns})
            with NetNS(plan.wan_netns) as ns:
                for relay_ifname in (w.relay_ifname_a, w.relay_ifname_b):
                    ns.link("set", index=_index(ns, relay_ifname), mtu=plan.underlay_mtu,
                            state="up")
            _steer_rx(plan.wan_netns, [w.relay_ifname_a, w.relay_ifname_b])
        else:
            with NetNS(ns_a) as ns:
                ns.link("add", ifname=w.ifname_a, kind="veth",
                        peer={"ifname": w.ifname_b, "net_ns_fd": ns_b})
        far = {w.site_a: plan.site(w.site_b), w.site_b: plan.site(w.site_a)}
        for site, site_ns, ifname, ip, mac, peer_ip, peer_mac in (
                (w.site_a, ns_a, w.ifname_a, w.ip_a, w.mac_a, w.ip_b, w.mac_b),
                (w.site_b, ns_b, w.ifname_b, w.ip_b, w.mac_b, w.ip_a, w.mac_a)):
            with NetNS(site_ns) as ns:
                idx = _index(ns, ifname)
                ns.link("set", index=idx, address=mac, mtu=plan.underlay_mtu, state="up")
                ns.addr("add", index=idx, address=ip, prefixlen=30)
                # Permanent neighbours: no ARP round trip through the delay on first use.
                ns.neigh("add", dst=peer_ip, lladdr=peer_mac, ifindex=idx, state=NUD_PERMANENT)
                ns.route("add", dst=far[site].subnet, gateway=peer_ip)
            _steer_rx(site_ns, [ifname])
            for args in tc_commands(w, ifname):
                subprocess.run(["ip", "netns", "exec", site_ns, "tc", *args], check=True,
                               capture_output=True, timeout=30)

    def _start_relay(self, wan_ns: str) -> None:
        argv = [sys.executable, "-m", "services.testbed.relay"]
        for w in self.plan.wans:
            if w.relayed:
                argv += ["--link", w.relay_ifname_a, w.relay_ifname_b, repr(w.delay_ms)]
        log = open(self._run_dir / "relay.log", "w")  # noqa: SIM115 - the child keeps it
        try:
            relay = self.popen(wan_ns, argv, stdout=subprocess.PIPE, stderr=log, text=True,
                               cwd=str(Path(__file__).resolve().parents[2]))
        finally:
            log.close()
        self._relay = relay
        assert relay.stdout is not None
        ready, _, _ = select.select([relay.stdout], [], [], RELAY_READY_TIMEOUT_S)
        line = relay.stdout.readline() if ready else ""
        if not line.startswith('{"ready": true'):
            err = (self._run_dir / "relay.log").read_text()[-2000:]
            raise TestbedError(
                f"delay relay did not become ready in {RELAY_READY_TIMEOUT_S}s "
                f"(exit code {relay.poll()}): {err}")
