"""The architectures; importing this package registers them."""

from factory.models import bert  # noqa: F401
