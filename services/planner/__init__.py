"""The planner (VADAPT): placement, overlay links, forwarding rules, migrations."""
