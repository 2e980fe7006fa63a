"""Side-by-side benchmarks of portwatch against nmap, masscan and sslscan.

Each module runs as ``python -m bench.<name>`` from the repository root, targets
only loopback (or network namespaces it creates and deletes) and prints a
markdown table for BENCHMARKS.md (``--json`` for machines).
"""
