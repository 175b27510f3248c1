"""Imports from files: scanning records out of JSON and JSON Lines, and the importer."""
