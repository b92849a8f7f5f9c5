"""`nightshift serve`: OpenAI's Batch API over nightshift's jobs. The server keeps nothing
of its own: keys, files' metadata and batches are rows in SQL, files sit in the files
directory, so several servers can run behind one load balancer."""
