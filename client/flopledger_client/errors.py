"""The errors the client raises: only for values a program got wrong, never because the
spool cannot be written (that is logged and retried, so training goes on)."""

from __future__ import annotations


class InvalidValueError(ValueError):
    """An argument (or the environment variable standing in for it) breaks the spool
    format's rules; the message names the argument and what was expected."""


class MessageTooLargeError(ValueError):
    """A message would be over the spool's size limit; the message names the field
    that takes the most room."""
