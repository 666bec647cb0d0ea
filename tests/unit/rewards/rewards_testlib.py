"""Helpers shared by the reward tests (imported as `rewards_testlib`; pytest puts this directory on sys.path)."""

from __future__ import annotations

from pathlib import Path

from ring_lightning.rows import PromptRow

# Tests draw sandbox uids from their own range, so processes of other runs on a shared machine
# (which use the default range) are never mistaken for leftovers of a test.
UID_RANGE = (3_500_000, 3_600_000)


def make_row(domain: str = "math", **fields) -> PromptRow:
    return PromptRow(id=fields.pop("id", "r0"), domain=domain,
                     messages=({"role": "user", "content": fields.pop("prompt", "question")},), **fields)


def sandbox_processes() -> list[tuple[int, int, str]]:
    """(pid, uid, name) of every live process whose uid is in the sandbox uid range."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        state = fields.get("State", "").strip()
        if UID_RANGE[0] <= uid < UID_RANGE[1] and not state.startswith("Z"):
            found.append((int(entry.name), uid, fields.get("Name", "").strip()))
    return found
