"""vnet testbed."""
