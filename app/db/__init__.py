"""The database layer: URLs, engines and their options, SQLite's connection hooks, sessions."""
