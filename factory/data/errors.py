"""The error every data source raises: a file, dataset or setting that cannot give the examples asked
for. Its own module, so that the readers (`factory.data.files`) and the `datasets` source
(`factory.data.hf`) share it without importing each other."""

from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be used: the message names the file, and the line or column when there is one."""
