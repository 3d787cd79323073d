"""Your own jobs on the outbox's events: ``app worker`` imports every module of this package,
and the handlers they register run for the events of their types (docs/outbox.md)::

    # app/jobs/welcome.py
    from app.outbox.handlers import Event, handler

    @handler("user.created")
    async def send_welcome_mail(event: Event) -> None:
        ...  # raise to have the event retried (with backoff), then parked as dead

A handler runs at least once per event: make it idempotent (``event.id`` is stable).
"""
