"""The SSA-vs-vanilla comparison command: train variants over seeds, analyse, report."""
