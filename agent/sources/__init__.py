"""The machine: GPU sources (NVML, simulated), scenarios, the spec table, clocks and /proc.
Imports nothing above it.
"""
