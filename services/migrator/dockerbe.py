"""The docker backend: a guest container moves from one host's segment network to another's.

Each host is a forwarder container reading its segment network (a docker bridge)
with AF_PACKET; a guest container lives on one segment with its own MAC and vnet
IP (docker's address removed). A move re-plugs the container, keeping its
processes, MAC, IP and TCP connections:

1. prepare: the destination forwarder holds the guest on *standby* on its segment
   interface (not live); the container is connected to the destination network
   and the new interface is given the guest's MAC, kept down, docker's address gone.
2. switch: inside the container, in one exec, the old interface loses the vnet
   address and goes down, the new one comes up with it; the guest's first frame
   there (an ARP probe is sent) wakes the destination, which announces the guest
   to the proxy, so forwarding switches at once.
3. release: the container leaves the source network; the source forwarder lets go.

Until the release the source interface is still plugged, so a failure rolls back
by putting the address back on it. Docker engines before API 1.44 cannot set a
MAC on `network connect`, hence the in-container `ip link` steps (the container
needs NET_ADMIN). The docker SDK blocks: its calls run in the loop's default
executor so the migrator keeps reading forwarder states meanwhile.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shlex
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from services.bus.pb import vnet_pb2 as pb
from services.migrator.model import Move, MoveControl, MoveFailed, Outcome

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NETWORK_LABEL = "com.docker.compose.network"


@dataclass(frozen=True)
class DockerSettings:
    segments: dict[str, str] = field(default_factory=dict)  # host -> network name (overrides)
    project: str = ""  # compose project; "" = this container's own project
    segment_pattern: str = "seg-{host}"  # compose network of a host's segment
    url: str = ""  # "" = DOCKER_HOST or the local socket
    attach_timeout_s: float = 5.0
    live_timeout_s: float = 5.0

    @staticmethod
    def parse_segment(text: str) -> tuple[str, str]:
        """`HOST=NETWORK`, as `--docker-segment` takes it."""
        host, sep, net = text.partition("=")
        if not sep or not host or not net:
            raise ValueError(f"--docker-segment {text!r}: use HOST=NETWORK")
        return host, net


@dataclass(frozen=True)
class Iface:
    name: str
    mac: str
    up: bool
    addrs: tuple[str, ...]  # IPv4 address/prefix


@dataclass
class _Plan:
    """What one move touches, found before anything changes."""
    container: Any
    src_net: str
    dst_net: str
    dst_attachment: str  # the destination forwarder's segment interface
    addrs: tuple[str, ...] = ()
    old_if: str = ""
    new_if: str = ""
    switched: bool = False  # the address may have left the source interface


def _sh(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _probe_ip(addr: str) -> str:
    """Another address in the guest's subnet: pinging it sends an ARP request (a frame)."""
    iface = ipaddress.IPv4Interface(addr)
    for host in iface.network.hosts():
        if host != iface.ip:
            return str(host)
    return str(iface.network.broadcast_address)


class DockerBackend:
    name = "docker"

    def __init__(self, settings: DockerSettings) -> None:
        import docker  # the SDK only where this backend runs

        self.s = settings
        # "auto": the engine's own API version (SDK 7 defaults to a newer one).
        try:
            self.client: Any = (docker.DockerClient(base_url=settings.url, version="auto")
                                if settings.url else docker.from_env(version="auto"))
        except docker.errors.DockerException as exc:  # `vnet migrator` reports ValueErrors
            raise ValueError(f"the docker backend cannot reach the engine: {exc}") from exc
        self._project = settings.project

    # ------------------------------------------------------------ docker, off the loop

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _exec(self, container: Any, script: str) -> str:
        code, out = await self._call(container.exec_run, ["sh", "-c", script], user="root")
        text = out.decode(errors="replace").strip() if isinstance(out, bytes) else str(out)
        if code != 0:
            raise MoveFailed(f"in {container.name}: `{script}` failed ({code}): {text}")
        return text

    def _project_name(self) -> str:
        if not self._project:
            try:
                me = self.client.containers.get(socket.gethostname())
            except Exception as exc:
                raise MoveFailed("no --docker-project given and this is not a compose"
                                 f" container ({exc})") from exc
            self._project = str(me.labels.get(PROJECT_LABEL, ""))
            if not self._project:
                raise MoveFailed("no --docker-project given and this container has no"
                                 " compose project label")
        return self._project

    def _by_service(self, service: str) -> Any:
        """A compose service's container in the project, or a container of that name."""
        found = self.client.containers.list(filters={"label": [
            f"{PROJECT_LABEL}={self._project_name()}", f"{SERVICE_LABEL}={service}"]})
        if found:
            return found[0]
        try:
            return self.client.containers.get(service)
        except Exception as exc:
            raise MoveFailed(f"no container for {service!r}: {exc}") from exc

    def _segment(self, host: str) -> str:
        if host in self.s.segments:
            return self.s.segments[host]
        net = self.s.segment_pattern.format(host=host)
        found = self.client.networks.list(filters={"label": [
            f"{PROJECT_LABEL}={self._project_name()}", f"{NETWORK_LABEL}={net}"]})
        if not found:
            raise MoveFailed(f"host {host!r}: no network {net!r} in compose project"
                             f" {self._project_name()!r} (--docker-segment HOST=NETWORK)")
        return str(found[0].name)

    async def _ifaces(self, container: Any) -> list[Iface]:
        out = await self._exec(container, "ip -j addr show")
        return [Iface(str(link["ifname"]), str(link.get("address", "")).lower(),
                      "UP" in link.get("flags", []),
                      tuple(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                            if a.get("family") == "inet"))
                for link in json.loads(out or "[]")]

    async def _docker_mac(self, container: Any, network: str) -> str:
        await self._call(container.reload)
        nets = container.attrs["NetworkSettings"]["Networks"]
        if network not in nets:
            raise MoveFailed(f"{container.name} is not on network {network!r}")
        return str(nets[network]["MacAddress"]).lower()

    async def _iface_on(self, container: Any, network: str, other_than: str = "") -> str:
        """The container's interface on network (docker's MAC for it, as docker knows it)."""
        mac = await self._docker_mac(container, network)
        for i in await self._ifaces(container):
            if i.mac == mac and i.name != other_than:
                return i.name
        raise MoveFailed(f"{container.name}: no interface with MAC {mac} ({network})")

    # ------------------------------------------------------------ the move

    async def _plan(self, move: Move) -> _Plan:
        container = await self._call(self._by_service, move.guest_id)
        src_net = await self._call(self._segment, move.from_host)
        dst_net = await self._call(self._segment, move.to_host)
        forwarder = await self._call(self._by_service, move.to_host)
        dst_if = await self._iface_on(forwarder, dst_net)
        plan = _Plan(container, src_net, dst_net, dst_if)
        mac = move.guest.mac.lower()
        for i in await self._ifaces(container):
            if i.mac == mac and i.addrs and i.up:
                plan.old_if, plan.addrs = i.name, i.addrs
        if not plan.old_if:
            raise MoveFailed(f"{container.name}: no up interface with MAC {mac} and an address")
        return plan

    async def run(self, move: Move, ctl: MoveControl) -> Outcome:
        if move.guest.kind != pb.ATTACHMENT_PACKET or not move.guest.mac:
            return Outcome(False, f"guest {move.guest_id} is not a container on a segment"
                                  f" ({pb.AttachmentKind.Name(move.guest.kind)})")
        try:
            plan = await self._plan(move)
        except (MoveFailed, OSError) as exc:
            return Outcome(False, f"{exc}; nothing changed")
        ctl.phase("prepare")
        dest = pb.Guest()
        dest.CopyFrom(move.guest)
        dest.attachment, dest.standby = plan.dst_attachment, True
        if not await ctl.attach(move.to_host, dest, self.s.attach_timeout_s):
            return await self._abort(move, ctl, plan, f"destination {move.to_host} did not"
                                     f" take the guest within {self.s.attach_timeout_s:g}s")
        ctl.progress(0.2, f"{move.to_host} holds {move.guest_id} on standby on"
                          f" {plan.dst_attachment}")
        try:
            await self._call(self.client.networks.get(plan.dst_net).connect, plan.container)
            plan.new_if = await self._iface_on(plan.container, plan.dst_net, plan.old_if)
            await self._exec(plan.container, " && ".join([
                _sh("ip", "link", "set", "dev", plan.new_if, "down"),
                _sh("ip", "addr", "flush", "dev", plan.new_if),
                _sh("ip", "link", "set", "dev", plan.new_if, "address", move.guest.mac)]))
        except Exception as exc:  # the SDK raises its own errors (APIError, NotFound)
            return await self._abort(move, ctl, plan, f"connecting to {plan.dst_net}: {exc}")
        ctl.progress(0.5, f"{move.guest_id} plugged into {plan.dst_net} as {plan.new_if}")
        ctl.phase("switch")
        t0 = time.monotonic()
        plan.switched = True
        try:
            await self._exec(plan.container, self._switch_script(plan.old_if, plan.new_if,
                                                                 plan.addrs))
        except MoveFailed as exc:
            return await self._abort(move, ctl, plan, str(exc))
        if not await ctl.await_live(move.to_host, move.guest_id, self.s.live_timeout_s):
            return await self._abort(move, ctl, plan, f"destination {move.to_host} did not"
                                     f" bring {move.guest_id} live within"
                                     f" {self.s.live_timeout_s:g}s")
        downtime = time.monotonic() - t0
        ctl.progress(0.9, f"{move.guest_id} live on {move.to_host}; releasing the source")
        ctl.phase("release")
        note = ""
        try:
            await self._call(self.client.networks.get(plan.src_net).disconnect, plan.container)
        except Exception as exc:  # the guest runs at the destination; a stale plug stays
            note = f"leaving {plan.src_net} failed: {exc}"
        if not await ctl.detach(move.from_host, move.guest_id, self.s.attach_timeout_s):
            note = (note + "; " if note else "") + f"{move.from_host} did not confirm release"
        return Outcome(True, downtime_s=downtime, detail=note or
                       f"{move.guest_id} on {plan.dst_net} ({plan.new_if})")

    @staticmethod
    def _switch_script(old_if: str, new_if: str, addrs: tuple[str, ...]) -> str:
        """Address off the old interface, onto the new one; a probe wakes the destination."""
        steps = [_sh("ip", "addr", "flush", "dev", old_if),
                 _sh("ip", "link", "set", "dev", old_if, "down"),
                 _sh("ip", "link", "set", "dev", new_if, "up"),
                 *(_sh("ip", "addr", "add", a, "dev", new_if) for a in addrs)]
        probe = _sh("ping", "-c", "1", "-W", "1", "-I", new_if, _probe_ip(addrs[0]))
        # docker may have given the new network the default route: guests have none.
        return (" && ".join(steps) + "; ip route del default >/dev/null 2>&1;"
                f" ({probe} >/dev/null 2>&1 &) ; true")

    async def _restore(self, plan: _Plan, guest_mac: str) -> str:
        """The guest's address back on its source interface; the destination plug removed."""
        notes = []
        ifaces = {i.name: i for i in await self._ifaces(plan.container)}
        if not plan.addrs:  # after a crash: take the addresses from wherever they are
            plan.addrs = next((i.addrs for i in ifaces.values()
                               if i.mac == guest_mac and i.addrs), ())
        if not plan.old_if or plan.old_if not in ifaces:
            await self._call(self.client.networks.get(plan.src_net).connect, plan.container)
            plan.old_if = await self._iface_on(plan.container, plan.src_net)
            notes.append(f"re-plugged into {plan.src_net}")
        if plan.switched or notes:
            await self._readdress(plan, ifaces, guest_mac)
        await self._call(plan.container.reload)
        if plan.dst_net in plan.container.attrs["NetworkSettings"]["Networks"]:
            await self._call(self.client.networks.get(plan.dst_net).disconnect, plan.container)
        return "; ".join(notes)

    async def _readdress(self, plan: _Plan, ifaces: dict[str, Iface], guest_mac: str) -> None:
        if not plan.addrs:
            raise MoveFailed(f"{plan.container.name}: the guest's address was not found")
        others = [n for n, i in ifaces.items() if n not in (plan.old_if, "lo")
                  and i.mac == guest_mac]
        steps = [s for n in others for s in (_sh("ip", "addr", "flush", "dev", n),
                                               _sh("ip", "link", "set", "dev", n, "down"))]
        steps += [_sh("ip", "link", "set", "dev", plan.old_if, "down"),
                  _sh("ip", "link", "set", "dev", plan.old_if, "address", guest_mac),
                  _sh("ip", "addr", "flush", "dev", plan.old_if),
                  _sh("ip", "link", "set", "dev", plan.old_if, "up"),
                  *(_sh("ip", "addr", "add", a, "dev", plan.old_if) for a in plan.addrs)]
        await self._exec(plan.container, " && ".join(steps))

    async def _abort(self, move: Move, ctl: MoveControl, plan: _Plan, why: str) -> Outcome:
        """Before the release: the guest goes back to its source plug, still held there."""
        try:
            note = await self._restore(plan, move.guest.mac.lower())
        except Exception as exc:
            note = f"rollback failed: {exc}"
        live = await ctl.await_live(move.from_host, move.guest_id, self.s.live_timeout_s)
        await ctl.detach(move.to_host, move.guest_id, self.s.attach_timeout_s)
        where = f"{move.guest_id} stays on {move.from_host}" if live else (
            f"{move.from_host} has not reported {move.guest_id} live")
        return Outcome(False, f"{why}; rolled back{', ' + note if note else ''}, {where}")

    async def recover(self, move: Move, phase: str, ctl: MoveControl) -> str:
        try:
            container = await self._call(self._by_service, move.guest_id)
            plan = _Plan(container, await self._call(self._segment, move.from_host),
                         await self._call(self._segment, move.to_host), "",
                         switched=phase != "prepare")
            try:
                plan.old_if = await self._iface_on(container, plan.src_net)
            except MoveFailed:
                plan.old_if = ""
            note = await self._restore(plan, move.guest.mac.lower())
        except Exception as exc:
            return f"cannot recover: {exc}"
        if not await ctl.attach(move.from_host, move.guest, self.s.attach_timeout_s):
            note += f"; {move.from_host} did not take {move.guest_id} back"
        await ctl.detach(move.to_host, move.guest_id, self.s.attach_timeout_s)
        return f"rolled back to {move.from_host}" + (f" ({note})" if note else "")
