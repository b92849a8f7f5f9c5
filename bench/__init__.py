"""Side-by-side throughput benchmark: vLLM offline, vLLM run_batch, nightshift end to end."""
