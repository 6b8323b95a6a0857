"""The ransomware guard: signals computed during backup, snapshot verdicts, last-clean lookup.

verdict.py: verdicts, marks and acknowledgements, and the view forget/restore use (docs/guard.md).
"""
