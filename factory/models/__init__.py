"""The architectures; importing this package registers them."""

from factory.models import bert, gpt2  # noqa: F401
