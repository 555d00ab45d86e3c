"""Size limits of the code in lungseg/: no function rated worse than D by radon's cyclomatic
complexity (E from 31 on: break it into named steps), and none longer than 90 lines (from its
``def`` line to its last line, docstring included). Run ``radon cc -s -n C lungseg`` to see the
functions closest to the limit."""

from __future__ import annotations

import ast
from pathlib import Path

from radon import complexity as radon_complexity  # a dev requirement (requirements-dev.txt)

PACKAGE = Path(__file__).resolve().parents[1] / "lungseg"
#: the worst radon rank allowed (A 1–5, B 6–10, C 11–20, D 21–30, E 31–40, F 41+)
WORST_RANK = "D"
MAX_LINES = 90


def _sources() -> list[tuple[str, str]]:
    return [
        (path.relative_to(PACKAGE.parent).as_posix(), path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def _functions(blocks):
    """radon's functions and methods (``cc_visit`` lists both) with their nested functions (closures,
    rated on their own); not the classes (a class's rank is its methods' mean)."""
    for block in blocks:
        if not hasattr(block, "methods"):
            yield block
            yield from _functions(block.closures)


def too_complex(name: str, source: str) -> list[str]:
    """``path:line function — rank (complexity)`` of each function rated worse than WORST_RANK."""
    out = []
    for block in sorted(_functions(radon_complexity.cc_visit(source)), key=lambda b: b.lineno):
        rank = radon_complexity.cc_rank(block.complexity)
        if rank > WORST_RANK:
            out.append(f"{name}:{block.lineno} {block.fullname} — {rank} ({block.complexity})")
    return out


def too_long(name: str, source: str) -> list[str]:
    """``path:line function — n lines`` of each function (methods and nested ones too) over MAX_LINES."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                out.append(f"{name}:{node.lineno} {node.name} — {lines} lines")
    return out


def test_no_function_is_rated_worse_than_d():
    offenders = [o for name, source in _sources() for o in too_complex(name, source)]
    assert not offenders, "rated worse than D by radon (break into named steps):\n" + "\n".join(offenders)


def test_no_function_is_longer_than_90_lines():
    offenders = [o for name, source in _sources() for o in too_long(name, source)]
    assert not offenders, f"longer than {MAX_LINES} lines:\n" + "\n".join(offenders)


def _ifs(n: int, indent: str) -> str:
    return "".join(f"{indent}if x == {i}:\n{indent}    return {i}\n" for i in range(n))


def test_the_checks_see_what_they_are_meant_to():
    """A function, a method and a nested function of 31 paths (E) are flagged, one of 30 (D) is not;
    91 lines are flagged, 90 are not (nested functions too)."""
    source = (
        f"def d(x):\n{_ifs(29, '    ')}    return -1\n\n\n"
        f"def e(x):\n{_ifs(30, '    ')}    return -1\n\n\n"
        f"class K:\n    def m(self, x):\n{_ifs(30, '        ')}        return -1\n\n\n"
        f"def outer():\n    def inner(x):\n{_ifs(30, '        ')}        return -1\n\n    return inner\n"
    )
    flagged = too_complex("f.py", source)
    assert [o.split(" — ")[0].split(" ")[1] for o in flagged] == ["e", "K.m", "inner"]
    assert flagged[0] == "f.py:63 e — E (31)"

    def lines(n: int, indent: str) -> str:  # a body of n lines
        return "".join(f"{indent}a{i} = {i}\n" for i in range(n))

    long_source = (
        f"def ok():\n{lines(89, '    ')}\n\n"  # 90 lines
        f"def too_long():\n{lines(90, '    ')}\n\n"  # 91 lines
        f"def outer():\n    def inner():\n{lines(90, '        ')}    return inner\n"  # outer 93, inner 91
    )
    assert too_long("f.py", long_source) == [
        "f.py:93 too_long — 91 lines",
        "f.py:186 outer — 93 lines",
        "f.py:187 inner — 91 lines",
    ]
