"""Read replicas: the set and its monitor, read routing, and the WAL positions behind
read-your-writes."""
