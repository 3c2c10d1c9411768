"""Updaters: each owns only the parameter update and returns a flat dict of metrics."""

from polopt.updaters.base import Updater

__all__ = ["Updater"]
