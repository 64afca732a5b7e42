"""Tests of sd."""
