"""Training objectives as pure torch functions (this package imports nothing but torch)."""
