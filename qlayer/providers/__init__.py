"""Quantum providers behind one interface: local Aer (ideal or noisy fake devices) first."""
