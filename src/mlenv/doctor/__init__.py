"""Training diagnostics: data checks, label balance, loss edge cases."""
