"""Runnable experiments: each returns its numbers as data and can draw its figures."""
