"""The worker side: the Celery app, the engine host, prompt building and chunk execution."""
