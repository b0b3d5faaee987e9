"""glacierfs: a FUSE filesystem over Amazon S3 Glacier vaults."""

__version__ = "0.1.0"
