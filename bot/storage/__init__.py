"""History in SQL (source of truth) and the rebuildable cache."""
