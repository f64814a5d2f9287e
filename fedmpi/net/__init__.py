"""Emulated network: link profiles, clocks, and the Link all traffic crosses."""
