"""Tree growth: branching decisions (pure) and generation engines."""
