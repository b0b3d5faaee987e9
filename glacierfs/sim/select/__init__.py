"""Glacier Select in the emulator: the SQL subset (``lexer`` tokens, ``sql`` translation), CSV
serialization (``csvio``), the query run over SQLite (``engine``), S3 output through the S3 API
(``s3out``) and the select job lifecycle (``service``)."""
