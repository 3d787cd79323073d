"""HTTP routers: parse, call a service, translate ``None`` into 404."""
