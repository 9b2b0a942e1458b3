"""vnet inference."""
