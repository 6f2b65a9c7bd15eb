"""Datasets by name, their verified download, and the prepared splits every stage reads."""
