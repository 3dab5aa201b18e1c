"""Revisions of the governance store (a package so that they ship with it)."""
