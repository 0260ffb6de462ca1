"""Errors a user can fix. The CLI prints their message as one line and exits with 2."""


class UserError(Exception):
    """Bad input: an unknown name, a missing file, a shape that does not fit.

    The message must name the problem (which layer, which field, which file) in one line.
    """
