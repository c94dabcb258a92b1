"""Engines built into livecalc-worker-py (see livecalc.registry for their DAG names)."""
