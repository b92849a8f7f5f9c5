"""Contracts shared by the producer and the workers: settings, job specs, rows, tables."""
