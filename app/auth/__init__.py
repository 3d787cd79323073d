"""Who is calling: credentials (password hashes, tokens), login throttling, the authenticator."""
