"""The fault suite: faults injected into real workers on servers it starts itself
(`make chaos`, and the `chaos`-marked tests in a short version)."""
