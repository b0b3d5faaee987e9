"""The only modules that talk to AWS (and the only ones importing boto3/botocore): Glacier's
vault API (``glacier``) and S3 reads of select output (``s3output``). Calls run in threads behind
limiters so the trio loop never blocks.

Imports nothing of the package but pure shared modules (``options``, ``treehash``).
"""
