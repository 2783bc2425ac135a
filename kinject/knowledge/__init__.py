"""The knowledge stage (conf groups `knowledge`, `world`): relations, facts, items, their sources."""
