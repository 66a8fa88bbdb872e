"""Profiles and prompts, shipped inside the wheel as cleancurate.conf."""
