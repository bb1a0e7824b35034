"""The architectures; importing this package registers them."""

from factory.models import bart, bert, gpt2  # noqa: F401
