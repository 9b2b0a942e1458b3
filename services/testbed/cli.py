"""`vnet testbed` sub-commands: up, down, ls, measure."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

from services.testbed import rundir
from services.testbed.spec import SpecError, load_spec


class _Stop(Exception):
    """Raised by the first SIGINT/SIGTERM so the with-block unwinds and tears down."""


def _stop_on_signals() -> None:
    owner = os.getpid()

    def _handler(signum: int, _frame: Any) -> None:
        if os.getpid() != owner:
            # A forked helper (pyroute2 forks to enter namespaces) must not unwind
            # our stack and tear the testbed down: die as the signal says.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # Later signals are ignored: they must not interrupt the teardown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def _print_summary(d: dict[str, Any]) -> None:
    print(f"testbed {d['prefix']} up (spec {d['spec']}, run dir {d['run_dir']})")
    print("sites:")
    for s in d["sites"]:
        print(f"  {s['name']:<12} netns {s['netns']:<22} underlay {s['subnet']}")
    print("hosts:")
    for h in d["hosts"]:
        proxy = "  (proxy)" if h["proxy"] else ""
        print(f"  {h['name']:<12} netns {h['netns']:<22} site {h['site']:<10} "
              f"underlay {h['underlay_ip']}{proxy}")
    print("guests:")
    for g in d["guests"]:
        print(f"  {g['name']:<12} netns {g['netns']:<22} host {g['host']:<10} "
              f"mac {g['mac']}  ip {g['ip']}  mtu {g['mtu']}  {g['attach']} {g['host_ifname']}")
    for w in d["wans"]:
        rate = f"{w['rate_mbit']:g} Mbit/s ({w['shaper']})" if w["rate_mbit"] else "unshaped"
        print(f"wan {w['sites'][0]} <-> {w['sites'][1]}: {w['delay_ms']:g} ms each way, {rate}")
    lan = d["lan"]
    print(f"user LAN: netns {lan['netns']} ip {lan['ip']}, proxy side {lan['proxy_ifname']}")
    print(f"Ctrl-C (or `vnet testbed down {d['prefix']}`) removes it.", flush=True)


def _up(args: argparse.Namespace) -> int:
    from services.testbed.testbed import Testbed, TestbedError

    try:
        spec = load_spec(args.spec)
    except (SpecError, OSError) as e:
        print(f"vnet testbed up: {e}", file=sys.stderr)
        return 2
    _stop_on_signals()
    tb: Testbed | None = None
    try:
        tb = Testbed(spec, prefix=args.prefix, spec_source=str(args.spec), owner_cli=True)
        with tb:
            d = tb.describe()
            if args.json:
                print(json.dumps({"ready": True, **d}), flush=True)
            else:
                _print_summary(d)
            relay = tb.relay
            while relay is None or relay.poll() is None:
                time.sleep(0.5)
            print(f"delay relay exited with code {relay.returncode}; tearing down",
                  file=sys.stderr)
            return 1
    except _Stop as e:
        print(f"testbed {tb.prefix if tb else ''}: {e}, removed", file=sys.stderr)
        return 0
    except TestbedError as e:
        print(f"vnet testbed up: {e}", file=sys.stderr)
        return 1


def _down(args: argparse.Namespace) -> int:
    try:
        left = rundir.down(args.prefix, force=args.force)
    except (ValueError, rundir.OwnerAlive) as e:
        hint = " (--force)" if isinstance(e, rundir.OwnerAlive) else ""
        print(f"vnet testbed down: {e}{hint}", file=sys.stderr)
        return 2
    if left:
        print(f"could not remove: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"testbed {args.prefix} removed")
    return 0


def _ls(args: argparse.Namespace) -> int:
    runs = rundir.list_runs()
    if args.json:
        for r in runs:
            print(json.dumps({"prefix": r.prefix, "owner_pid": r.owner_pid,
                              "owner_alive": r.owner_alive, "spec": r.spec,
                              "namespaces": r.namespaces}))
        return 0
    if not runs:
        print("no testbeds")
    for r in runs:
        state = "running" if r.owner_alive else "leftover (owner gone: `vnet testbed down`)"
        print(f"{r.prefix}  {state}  spec {r.spec}  {len(r.namespaces)} namespaces")
    return 0


def _measure(args: argparse.Namespace) -> int:
    from services.testbed.measure import measure
    from services.testbed.testbed import Testbed

    try:
        spec = load_spec(args.spec)
    except (SpecError, OSError) as e:
        print(f"vnet testbed measure: {e}", file=sys.stderr)
        return 2
    _stop_on_signals()
    try:
        with Testbed(spec, spec_source=str(args.spec)) as tb:
            figures = measure(tb, seconds=args.seconds, rate=not args.no_rate)
    except _Stop:
        return 1
    if args.json:
        print(json.dumps({"spec": spec.name, "pairs": [asdict(f) for f in figures],
                          "relay": tb.relay_counters}))
        return 0
    print(f"{'hosts':<16} {'delay ms':>8} {'RTT min/avg ms':>15} {'rate Mbit/s':>11} "
          f"{'fwd':>7} {'rev':>7}")
    for f in figures:
        rate = f"{f.rate_mbit:g}" if f.rate_mbit else "-"
        fwd = f"{f.forward_mbit:.1f}" if f.forward_mbit is not None else "-"
        rev = f"{f.reverse_mbit:.1f}" if f.reverse_mbit is not None else "-"
        print(f"{f.src_host + '-' + f.dst_host:<16} {f.delay_ms:>8g} "
              f"{f.rtt.min_ms:>7.2f}/{f.rtt.avg_ms:<7.2f} {rate:>11} {fwd:>7} {rev:>7}")
    print(f"delay relay: {tb.relay_counters}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this area's sub-commands to `vnet`."""
    p = sub.add_parser("testbed", help="embedded network-namespace testbed (root)")
    tsub = p.add_subparsers(dest="testbed_command", required=True)

    up = tsub.add_parser("up", help="build a testbed from SPEC; stays up until Ctrl-C/SIGTERM")
    up.add_argument("spec", help="SPEC file (TOML), e.g. services/testbed/specs/wan.toml")
    up.add_argument("--json", action="store_true",
                    help="print one JSON line describing the testbed when it is ready")
    up.add_argument("--prefix", default=None, help="run prefix (default: a fresh 'vtXXXX')")
    up.set_defaults(func=_up)

    down = tsub.add_parser("down", help="remove a run's leftovers by its prefix (after a crash)")
    down.add_argument("prefix", help="the run prefix, e.g. vt3f2a (see `vnet testbed ls`)")
    down.add_argument("--force", action="store_true",
                      help="also remove a run whose owner is a live program other than "
                           "`vnet testbed up` (a test, a benchmark)")
    down.set_defaults(func=_down)

    ls = tsub.add_parser("ls", help="list testbeds running or left over")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=_ls)

    m = tsub.add_parser("measure", help="build SPEC, measure RTT and rate per WAN, remove it")
    m.add_argument("spec")
    m.add_argument("--seconds", type=float, default=3.0, help="iperf3 duration per direction")
    m.add_argument("--no-rate", action="store_true", help="ping only, no iperf3")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_measure)
