"""HTML run reports."""
