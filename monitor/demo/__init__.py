"""Offline demo: a loopback server of real Yahoo Finance feed and news page captures (see server.py)."""
