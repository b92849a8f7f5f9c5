"""The file formats nightshift reads and writes: the command line's choices, known without
importing the readers and writers (a command that needs neither starts faster)."""

INPUT = ("auto", "jsonl", "openai", "csv", "documents", "paths")
OUTPUT = ("jsonl", "csv", "parquet", "openai")
