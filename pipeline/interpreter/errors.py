"""Errors raised by the interpreter: one line each, naming what went wrong and where."""


class UnsupportedOperation(Exception):
    """An operation of the model has no linear-interpreter rule (or cannot be traced).

    The message names the operation and where it sits in the model (module path or graph node).
    """


class InputError(ValueError):
    """x0 does not fit the model (not 4-D, wrong channel count, not floating point)."""
