"""Share of the library's code lines that are input validation, per module and in all.

    python benchmarks/validation_share.py [jaxguide]

Code lines: lines holding code (docstrings, comments and blank lines excluded). Validation
lines: those of functions named check*/_check*, of if-blocks whose body only raises, of
raise statements, and of statements that only call a check* function. Counted with `ast`.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}


def span(node: ast.AST) -> set[int]:
    return set(range(node.lineno, node.end_lineno + 1))


def code_lines(src: str, tree: ast.Module) -> set[int]:
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in NOT_CODE:
            lines |= set(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(tree):  # Docstrings are not code.
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines -= span(first)
    return lines


def is_check(name: str) -> bool:
    name = name.lstrip("_")
    return name == "check" or name.startswith("check_")


def validation_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and is_check(node.name):
            lines |= span(node)
        elif (isinstance(node, ast.If) and not node.orelse
              and all(isinstance(s, ast.Raise) for s in node.body)):
            lines |= span(node)
        elif isinstance(node, ast.Raise):
            lines |= span(node)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            f = node.value.func
            if is_check(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")):
                lines |= span(node)
    return lines


def main(root: Path) -> None:
    rows, total, checks = [], 0, 0
    for path in sorted(root.rglob("*.py")):
        src = path.read_text()
        tree = ast.parse(src)
        code = code_lines(src, tree)
        valid = validation_lines(tree) & code
        rows.append((len(valid) / max(1, len(code)), path, len(valid), len(code)))
        total, checks = total + len(code), checks + len(valid)
    for share, path, v, c in sorted(rows, reverse=True):
        print(f"{100 * share:5.1f} %  {v:4d} / {c:4d}  {path}")
    print(f"total {100 * checks / total:.1f} % ({checks} / {total} code lines)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "jaxguide"))
