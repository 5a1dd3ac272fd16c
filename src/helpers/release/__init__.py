"""The authors' released artifacts: import with checksum verification, and tidy Parquet tables."""
