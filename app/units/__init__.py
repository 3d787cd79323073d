"""Units of database work: every request's database work is one read or one write, in one
transaction, behind a gate; the container sizes the gates (``app.units.sizing``)."""
