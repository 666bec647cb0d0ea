"""The offline prompt pipeline (`python -m ring_lightning prepare`): pipeline.py runs clean.py,
dedup.py, decontam.py, verify.py and difficulty.py over rows.py's records and writer.py writes them."""
