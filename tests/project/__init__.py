"""Checks over the whole project tree: import layers, import cycles, public entry points."""
