"""The producer: the `nightshift` CLI, input readers, job submission and the read side."""
