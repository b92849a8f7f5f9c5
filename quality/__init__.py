"""The quality bar: checks on every answer, the ladder of retries, the report."""
