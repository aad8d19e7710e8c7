"""Decisions: drift, promotion of a challenger, batch size, which artifacts to keep."""
