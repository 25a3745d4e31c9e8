"""Version-gated, revertible Inductor patches."""
