"""Model tiers. Each tier builds on the `clinie` core only; the application wires tiers and router."""
