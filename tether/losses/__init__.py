"""Training objectives as pure torch functions (this package imports nothing but torch, and
from tether only the names of its objectives, which tether.choices holds for the config)."""
