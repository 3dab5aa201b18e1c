"""Attacks on the governance seams (issue 21): each one refused or detected."""
