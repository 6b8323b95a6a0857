"""cermin: ransomware-resilient backup, off-site mirroring and verified recovery."""

__version__ = "0.1.0"
