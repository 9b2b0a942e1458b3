"""vnet forwarder: the per-host VNET data plane.

Modules, pure core first:
  ethernet   14-byte header checks, MACs, virtio-net header (vframes), checksum completion
  framing    wire formats: overlay link messages (TCP/TLS/UDP) and QEMU's stream netdev
  fragments  UDP links: a frame too large for a datagram cut into pieces and joined again
  core       ports, forwarding table, broadcast tree, the per-frame decision and counting
  counting   per (src MAC, dst MAC) frames/bytes, cut into publishing intervals
  linkstate  keepalive RTT, liveness, loss, throughput, reconnect backoff
  desired    DesiredState -> operations (refuses older generations; rejects bad entries)
  messages   FrameCounts / LinkMeasurements / ForwarderState
  overlay    `vnet apply` description files -> per-host DesiredState, diffs
  config     settings, declared once with defaults
and the shell: attach (AF_PACKET, TAP, QEMU stream), links (stream/UDP I/O),
capture (mirror a port to `vnet capture`), daemon (the one asyncio loop),
operator (`vnet links|rules|guests|apply`), cli.

Choices worth knowing:
- Frames travel as vframes: a 10-byte virtio_net_hdr + the frame. AF_PACKET
  (PACKET_VNET_HDR) and TAP (IFF_VNET_HDR + TUNSETOFFLOAD) hand over whole
  64 KB GSO frames with partial checksums; the header crosses overlay links
  with the frame and the receiving kernel segments and completes checksums.
  Guest offloads therefore stay ON. QEMU's stream has no such header: the
  forwarder completes partial checksums in software before writing to QEMU,
  and drops (counts `gso_to_plain_sink`) a GSO frame bound for QEMU.
- MTU: non-GSO frames longer than --mtu + 18 are dropped as oversized. TCP
  links carry any frame (length-prefixed). UDP links send a frame that fits
  --udp-datagram-max (1472: a 1500-byte underlay) as one datagram, and a
  larger one (a GSO frame, a jumbo frame) as FRAGMENT pieces of that size
  (fragments.py), all in one sendmsg with UDP_SEGMENT; the receiver reads a
  whole batch with UDP_GRO and joins it. The underlay's IP layer never
  fragments; a lost piece loses its frame (`udp_fragments_lost`).
- One listener per forwarder: TCP and UDP on --listen's port, TLS on port+1.
  The star link is dialled by the non-proxy; a fast-path link by the host
  whose name sorts first; the other side accepts. The dialler's handshake
  names its host, the link id and (on star links) its guests' MACs, which is
  how the proxy knows where each guest lives; hosts outside --members are
  refused.
- Counting: frames entering from local guests (and the proxy's LAN), per
  (src, dst), so each frame is counted once, on its first forwarder. A GSO
  frame counts as one frame with all its bytes.
- No MAC learning: the table is the control plane's rules, plus the
  forwarder's own guests and the MACs star peers announce.
"""
