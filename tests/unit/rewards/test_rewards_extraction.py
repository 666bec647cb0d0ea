"""Answer extraction: last \\boxed{} with nested braces, <answer> tags, fenced code, thinking."""

from ring_lightning.rewards.extraction import last_boxed, last_fenced_block, last_tagged, strip_thinking


def test_last_boxed_nested_and_last_wins():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\boxed{a_{b_{c}} + {d}}") == "a_{b_{c}} + {d}"
    assert last_boxed(r"answer: \boxed 5.") == "5."
    assert last_boxed(r"\boxed{3} and later \fbox{7}") == "7"
    assert last_boxed(r"\boxedfoo{3}") is None
    assert last_boxed("no answer here") is None


def test_unterminated_last_box_gives_no_answer():
    assert last_boxed(r"\boxed{1} ... final \boxed{2^{3") is None


def test_last_tagged():
    assert last_tagged("<answer>1</answer> x <answer> 2 </answer>") == " 2 "
    assert last_tagged("<answer>1</answer> <answer>open") == "1"
    assert last_tagged("nothing") is None


def test_last_fenced_block():
    text = "```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```\n```bash\necho 3\n```"
    assert last_fenced_block(text, ("python", "py")) == "print(2)\n"
    assert last_fenced_block(text, ("bash",)) == "echo 3\n"
    assert last_fenced_block("```python\nunterminated", ("python",)) is None


def test_strip_thinking():
    assert strip_thinking("<think>reason \\boxed{1}</think>final") == "final"
    assert strip_thinking("<think>never closed") == ""
    assert strip_thinking("plain answer") == "plain answer"
