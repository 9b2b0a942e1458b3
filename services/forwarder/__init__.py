"""vnet forwarder."""
