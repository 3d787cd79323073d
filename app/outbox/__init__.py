"""The transactional outbox (docs/outbox.md): ``events`` writes an event row in the
transaction of every change of a resource; ``app worker`` (``worker``) claims the due ones and
runs the ``handlers`` registered for their type, webhooks (``webhooks``) among them.

This package imports nothing on its own: the services import ``events``, which stays light.
"""
