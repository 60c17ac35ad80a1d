"""Policy-optimisation algorithms (Lightning modules) and what they share."""
