"""Built-in synthetic tasks (no downloads): problems.py (SFT traces and prompts), instruction.py
(IFEval-style prompts), rl_tasks.py (RL prompt rows)."""
