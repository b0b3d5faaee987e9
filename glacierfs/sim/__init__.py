"""The Glacier emulator: an HTTP server speaking the Amazon S3 Glacier vault REST API."""
