"""vnet inference (VTTIF): the application's topology and traffic matrix, live.

Pure core, one job per module: ``params`` (the knobs and their effect),
``guests`` (guest identity from forwarder state), ``records`` (a batch of
frame counts → numpy columns of guest codes), ``window`` (per-forwarder
intervals → smoothed global matrix, loss and restart recovery),
``grouping`` (the fast integer sort the others share), ``detect``
(normalise, prune, change detection, damping), ``shapes`` (naming the
topology), ``core`` (messages and ``now`` in, messages out). I/O shell:
``service`` (the asyncio loop), ``cli`` (``vnet inference``, ``vnet
topology``, ``vnet matrix``), ``render`` (text, DOT, PNG). ``simulate``
plays forwarders for tests and benchmarks.
"""
