"""Fakes of the services qlayer talks to (never of the libraries it builds on)."""
