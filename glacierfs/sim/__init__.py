"""The Glacier emulator: an HTTP server speaking the Amazon S3 Glacier vault REST API, for tests
and the demo. It shares only pure code with the client (``treehash``) and imports nothing else
of the package; nothing of the client imports it (the CLI starts it as a sub-command)."""
