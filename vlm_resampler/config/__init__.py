"""Composing and validating configs before anything is built or submitted."""
