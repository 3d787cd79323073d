"""``app.main``'s app with the test-sized password hashing of app.testing.plugin, for the live
servers of tests whose subject is not the hash's cost (tests/test_fuzz.py, test_identity.py):
hundreds of sign-ups and logins take seconds, not minutes."""

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from app.main import create_app
from containers import container

container.password_hasher.override(
    PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
)
app = create_app()
