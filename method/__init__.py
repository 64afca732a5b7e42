"""method package."""
