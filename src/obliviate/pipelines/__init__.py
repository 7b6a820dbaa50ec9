"""End-to-end jobs behind the CLI commands (the CLI is a thin layer over these)."""
