"""Code reward: run the response's program against the row's tests in the sandbox; 1 only if all pass.

What the Ring-lite report says (arXiv 2506.14731, reinforcement-learning data, code: problems are
kept only with enough test cases, and the reward comes from executing the generated program on
them in a sandbox): a binary reward, 1 when every test passes. Partial credit (fraction of tests)
is not used. The report does not specify the sandbox or the test format; ours follow.

Test schema (``row.tests``)::

    {"type": "stdio", "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...],
     "language": "python",   # optional, default "python"; any configured `Language`
     "timeout_s": 2.0}       # optional: per-case limit overriding CodeReward(timeout_s)
    {"type": "assert", "code": "assert add(1, 2) == 3\\nassert add(0, 0) == 0\\n",
     "timeout_s": 5.0}       # optional: limit for the whole assert suite (Python only)

* stdio: the program reads the case input on stdin; a case passes when it exits with status 0
  within the limit and its stdout equals the expected output after removing trailing whitespace
  from every line and trailing empty lines (`code_harness.normalize_output`). The comparison is by
  SHA-256 in the trainer; expected outputs never enter the sandbox.
* assert: the program is run as module ``solution`` (so ``if __name__ == "__main__":`` blocks do not
  run), then the tests with its names in scope — except names that shadow a builtin, so the
  target function must not be named like one (``sorted``, ``max``). The asserts are rewritten by
  `assert_probes.py` so that the trainer evaluates each one from exactly serialised built-in
  values (an always-true
  ``__eq__``, patched builtins, ``sys.exit(0)`` / ``os._exit(0)`` before the asserts, or printed
  "passed" text earn nothing). Every unconditional assert must run; the run must finish.

The program is the last fenced block tagged for the language (```` ```python ````), or the whole
response when there is none. Programs run concurrently (`max_workers` threads, each driving one
sandbox process); see `sandbox.py` for the isolation and `code_harness.py` for the in-sandbox side.
The verdict, not the exit code, decides: the harness reports on a private channel with a random
token, and the trainer checks every reported case / assert against its own expectations.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import math
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.code.assert_probes import AssertTestError, Probe, compile_assert_tests, judge_event
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.code.harness import normalize_output
from ring_lightning.rewards.extraction import last_fenced_block
from ring_lightning.rewards.code.sandbox import Isolation, Sandbox

HARNESS_SOURCE = Path(__file__).with_name("harness.py").read_text()
HARNESS_ASSERT_SOURCE = Path(__file__).with_name("harness_assert.py").read_text()
TEST_TYPES = ("stdio", "assert")


@dataclass(frozen=True)
class Language:
    """How to run a program of one language in the sandbox.

    Attributes:
        name: the name rows use in ``tests["language"]``.
        source_file: file the program is written to in the sandbox's working directory.
        run: command run per test case (stdin = case input); empty = Python executed inside the
            harness's own (forked) interpreter, which is the fast path for Python.
        compile: command run once before the cases (a failure fails every case); empty = none.
        fence_tags: info strings of the fenced code block the program is taken from.
    """

    name: str
    source_file: str
    run: tuple[str, ...] = ()
    compile: tuple[str, ...] = ()
    fence_tags: tuple[str, ...] = ()


PYTHON = Language(name="python", source_file="solution.py", fence_tags=("python", "py", "python3"))


class CodeTestsError(ValueError):
    """A row's ``tests`` field does not follow the schema in the module docstring."""


def validate_tests(tests: Any, languages: dict[str, Language], where: str = "row") -> None:
    """Raise `CodeTestsError` naming `where` and the key when `tests` is not a valid test spec."""

    def fail(msg: str) -> CodeTestsError:
        return CodeTestsError(f"{where}: tests: {msg}")

    if not isinstance(tests, dict):
        raise fail(f"must be an object, got {type(tests).__name__}")
    kind = tests.get("type")
    if kind not in TEST_TYPES:
        raise fail(f"'type' must be one of {TEST_TYPES}, got {kind!r}")
    lang = tests.get("language", "python")
    if lang not in languages:
        raise fail(f"unknown 'language' {lang!r}; configured: {sorted(languages)}")
    t = tests.get("timeout_s")
    if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0):
        raise fail(f"'timeout_s' must be a positive number, got {t!r}")
    if kind == "stdio":
        cases = tests.get("cases")
        if not isinstance(cases, list) or not cases:
            raise fail("stdio tests need a non-empty 'cases' list")
        for j, c in enumerate(cases):
            if not isinstance(c, dict) or not isinstance(c.get("input"), str) or not isinstance(c.get("output"), str):
                raise fail(f"cases[{j}] must be {{'input': str, 'output': str}}")
    else:
        if lang != "python":
            raise fail("assert tests are Python only")
        if not isinstance(tests.get("code"), str) or not tests["code"].strip():
            raise fail("assert tests need a non-empty 'code' string")
        try:
            compile_assert_tests(tests["code"])
        except AssertTestError as e:
            raise fail(str(e)) from None


def extract_program(response: str, language: Language) -> str:
    """The last fenced block tagged for `language`, else the whole response."""
    block = last_fenced_block(response, language.fence_tags) if language.fence_tags else None
    return block if block is not None else response


_CHILD_RECORDS = ({"a", "v"}, {"a", "e"}, {"error"}, {"done"})  # what the assert child writes


def _child_record(text: Any) -> dict[str, Any] | None:
    """A record of the assert child (`harness_assert.py`), or None when it is not one it writes."""
    try:
        rec = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or set(rec) not in _CHILD_RECORDS or rec.get("done", True) is not True:
        return None
    return rec if isinstance(rec.get("a", 0), int) and not isinstance(rec.get("a"), bool) else None


class _Judge:
    """Reads the harness's channel incrementally and keeps the verdict; `failed` enables early stop."""

    def __init__(self, token: str, kind: str, expected: list[str] | None, probes: list[Probe] | None) -> None:
        self.token, self.kind, self.expected, self.probes = token, kind, expected, probes
        self.offset = 0
        self.passed: set[int] = set()
        self.seen_probes: set[int] = set()
        self.failure: str | None = None
        self.ended = False
        self.done = False
        self.foreign = 0
        self.events = 0

    def feed(self, buf: bytes) -> bool:
        end = buf.rfind(b"\n")
        if end < self.offset:
            return self.failure is not None
        for line in buf[self.offset:end].split(b"\n"):
            self._event(line)
        self.offset = end + 1
        return self.failure is not None

    def _fail(self, why: str) -> None:
        if self.failure is None:
            self.failure = why

    def _event(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            ev = json.loads(line)
        except (ValueError, RecursionError):
            self.foreign += 1
            return
        if not isinstance(ev, dict) or ev.get("t") != self.token:
            self.foreign += 1
            return
        self.events += 1
        if self.kind == "assert" and "c" in ev:  # a record of the child that ran the program, relayed
            ev = _child_record(ev["c"])
            if ev is None:
                return self._fail("the test run wrote a record its harness never writes (forged or corrupt)")
        elif self.kind == "assert" and ("a" in ev or "done" in ev):
            return self._fail("malformed harness message")
        if "compile_error" in ev:
            self._fail(f"compile error: {str(ev['compile_error'])[:500]}")
        elif "error" in ev:
            self._fail(str(ev["error"])[:500])
        elif ev.get("end") is True:
            self.ended = True
        elif ev.get("done") is True and self.kind == "assert":
            self.done = True
        elif self.kind == "stdio" and isinstance(ev.get("case"), int):
            i = ev["case"]
            if not 0 <= i < len(self.expected):
                self._fail(f"unknown case {i}")
            elif ev.get("timeout") or ev.get("exit") == -24:  # -24: SIGXCPU, the case hit its RLIMIT_CPU
                self._fail(f"case {i}: time limit exceeded (exit status {ev.get('exit')})")
            elif ev.get("over"):
                self._fail(f"case {i}: output limit exceeded")
            elif ev.get("exit") != 0:
                self._fail(f"case {i}: exit status {ev.get('exit')}; stderr: {str(ev.get('err', ''))[-300:]}")
            elif ev.get("sha") != self.expected[i]:
                self._fail(f"case {i}: wrong answer; got {str(ev.get('head', ''))[:120]!r}")
            else:
                self.passed.add(i)
        elif self.kind == "assert" and isinstance(ev.get("a"), int) and 0 <= ev["a"] < len(self.probes):
            probe = self.probes[ev["a"]]
            self.seen_probes.add(probe.id)
            if "e" in ev:
                self._fail(f"assert {probe.id}: {str(ev['e'])[:300]}")
                return
            values = ev.get("v")
            ok, why = judge_event(probe, values) if isinstance(values, list) else (False, "no operands")
            if not ok:
                self._fail(f"assert {probe.id}: {why}")
        else:
            self._fail("malformed harness message")

    def verdict(self) -> tuple[bool, str | None]:
        if self.failure:
            return False, self.failure
        if not self.ended:
            return False, "the run did not finish (crashed, exited early or was killed)"
        if self.kind == "stdio":
            missing = set(range(len(self.expected))) - self.passed
            return (False, f"cases not run: {sorted(missing)[:10]}") if missing else (True, None)
        if not self.done:
            return False, "the tests did not run to the end"
        if not self.seen_probes:
            return False, "no assert was executed"
        missing = [p.id for p in self.probes if p.required and p.id not in self.seen_probes]
        return (False, f"asserts never executed: {missing[:10]}") if missing else (True, None)


class CodeReward:
    """1.0 when the response's program passes every test of ``row.tests`` in the sandbox, else 0.0.

    Args:
        timeout_s: wall-clock (and CPU) limit per stdio test case, or for a whole assert suite, in
            seconds; a row's ``tests["timeout_s"]`` overrides it.
        memory_mb: address-space limit of each sandboxed process, in MiB.
        max_processes: process/thread limit of a run.
        max_output_bytes: stdout a test case may produce (larger output fails the case).
        max_total_s: wall-clock cap on one sample's whole run (all cases), in seconds.
        startup_s: extra wall-clock allowance per run for starting the sandbox, in seconds (a
            backstop: the harness inside times each case / the assert suite from its own start).
        wall_grace_s: wall-clock grace over the limit for an assert suite (measured inside the
            sandbox, so a sleeping program is killed after ``timeout_s + wall_grace_s``).
        compile_timeout_s: limit of a language's compile step, in seconds.
        max_workers: programs run at once (0 = number of CPUs).
        early_stop: stop a run at the first failing case / assert.
        isolation: sandbox isolation ("auto", "namespaces", "process"; see `sandbox.py`).
        python: interpreter inside the sandbox ("" = the base interpreter of this Python).
        languages: extra languages beside Python (``Language`` specs).
        max_asserts: most assert executions reported by one run (more fails the sample).
        uid_range: [first, last) unprivileged uids the sandbox draws from (see `Sandbox`).
    """

    binary = True

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 1024, max_processes: int = 16,
                 max_output_bytes: int = 4 << 20, max_total_s: float = 60.0, startup_s: float = 10.0,
                 compile_timeout_s: float = 30.0, max_workers: int = 0, early_stop: bool = True,
                 isolation: Isolation = "auto", python: str = "", languages: Sequence[Language] = (),
                 max_asserts: int = 10_000, uid_range: tuple[int, int] = (2_000_000, 2_100_000),
                 wall_grace_s: float = 0.5) -> None:
        if not wall_grace_s >= 0:
            raise ValueError(f"CodeReward wall_grace_s must be >= 0, got {wall_grace_s!r}")
        self.timeout_s = timeout_s
        self.wall_grace_s = float(wall_grace_s)
        self.max_output_bytes = max_output_bytes
        self.max_total_s = max_total_s
        self.startup_s = startup_s
        self.compile_timeout_s = compile_timeout_s
        self.max_workers = max_workers or os.cpu_count() or 2
        self.early_stop = early_stop
        self.max_asserts = max_asserts
        self.languages = {PYTHON.name: PYTHON, **{lang.name: lang for lang in languages}}
        self.sandbox = Sandbox(timeout_s=max_total_s, cpu_time_s=max_total_s, memory_mb=memory_mb,
                               max_processes=max_processes, max_output_bytes=1 << 20,
                               max_file_mb=max(1, -(-max_output_bytes // (1 << 20))),
                               isolation=isolation, python=python, uid_range=uid_range)

    def validate(self, row: PromptRow, where: str) -> None:
        """Load-time check of ``row.tests`` (raises `CodeTestsError` naming `where`)."""
        validate_tests(row.tests, self.languages, where)

    def score_one(self, row: PromptRow, response: str) -> RewardResult:
        try:
            validate_tests(row.tests, self.languages, f"row {row.id!r}")
        except CodeTestsError as e:
            return RewardResult(0.0, valid=False, info={"error": str(e)})
        tests = row.tests
        lang = self.languages[tests.get("language", "python")]
        program = extract_program(response, lang)
        if not program.strip():
            return RewardResult(0.0, info={"reason": "no program"})
        limit = float(tests.get("timeout_s") or self.timeout_s)
        token = secrets.token_hex(16)
        cfg: dict[str, Any] = {"mode": tests["type"], "kill_all": self.sandbox.is_root,
                               "language": {"name": lang.name, "source_file": lang.source_file,
                                            "run": list(lang.run), "compile": list(lang.compile)},
                               "case_timeout_s": limit, "case_cpu_s": max(1, math.ceil(limit)),
                               "compile_timeout_s": self.compile_timeout_s,
                               "max_output_bytes": self.max_output_bytes, "max_events": self.max_asserts}
        if tests["type"] == "stdio":
            cases = tests["cases"]
            cfg["inputs"] = [c["input"] for c in cases]
            expected = [hashlib.sha256(normalize_output(c["output"]).encode("utf-8")).hexdigest() for c in cases]
            judge = _Judge(token, "stdio", expected, None)
            wall = min(self.max_total_s, len(cases) * (limit + 0.5)) + self.startup_s
            cpu = self.max_total_s
        else:
            cfg["tests"], probes = compile_assert_tests(tests["code"])
            judge = _Judge(token, "assert", None, probes)
            cfg["assert_timeout_s"] = min(self.max_total_s, limit) + self.wall_grace_s
            wall = cfg["assert_timeout_s"] + self.startup_s
            cpu = limit
        if lang.compile:
            wall += self.compile_timeout_s
        files = {"harness.py": HARNESS_SOURCE, "harness_assert.py": HARNESS_ASSERT_SOURCE, lang.source_file: program,
                 "harness_config.marshal": marshal.dumps(cfg, 4)}
        res = self.sandbox.run(["{python}", "-I", "-S", "harness.py"], files, stdin=(token + "\n").encode(),
                               timeout_s=wall, channel=True, cpu_time_s=cpu,
                               should_stop=judge.feed if self.early_stop else None)
        if res.setup_error:  # infrastructure, not the program: excluded from the loss, counted as an error
            return RewardResult(0.0, valid=False, info={"error": f"sandbox failed: {res.setup_error[:500]}",
                                                        "reward_error": True, "isolation": res.isolation})
        judge.feed(res.channel + b"\n")
        ok, why = judge.verdict()
        if ok and res.returncode != 0:
            ok, why = False, f"harness exited with status {res.returncode}"
        # RLIMIT_CPU kills the program inside the namespace; the launcher then exits 1, so the only
        # trace is a run that never finished and lasted at least the CPU limit.
        cpu_killed = not judge.ended and res.wall_s >= cpu
        if not ok and res.timed_out:
            why = f"time limit of the run ({wall:.0f} s) exceeded; {why}"
        elif not ok and cpu_killed:
            why = f"time limit of the run (CPU {cpu:.0f} s) reached; {why}"
        elif not ok and res.output_truncated:
            why = f"output limit exceeded; {why}"
        info = {"language": lang.name, "tests": tests["type"], "passed": ok, "isolation": res.isolation,
                "wall_s": round(res.wall_s, 3)}
        if tests["type"] == "stdio":
            info["cases_passed"] = f"{len(judge.passed)}/{len(tests['cases'])}"
        if why:
            info["reason"] = why
            info["stderr_tail"] = res.stderr[-500:].decode("utf-8", "replace")
        if judge.foreign:
            info["foreign_messages"] = judge.foreign
        return RewardResult(1.0 if ok else 0.0, info=info)

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"CodeReward got {len(rows)} rows but {len(responses)} responses")
        if len(rows) <= 1:
            return [self.score_one(r, s) for r, s in zip(rows, responses)]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(rows))) as ex:
            return list(ex.map(self.score_one, rows, responses))
