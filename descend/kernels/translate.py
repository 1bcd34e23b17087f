"""The blocks' C snippets, translated into Triton statements.

A block states its rule for one element once, as C (``Block.c_code``); the CPU backend pastes that
C into a loop. A GPU kernel needs the same rule in Triton's Python dialect, and keeping a second
hand-written copy per block would drift (torch.optim's three copies of every rule are the warning).
So this module parses the small C subset the snippets use and writes the equivalent Triton code:

- statements: ``T x = e;``, ``x = e;``, ``x += e;`` (``-=``, ``*=``, ``/=``), ``if (c) stmt;`` and
  ``{ ... }``;
- expressions: numbers, names, ``+ - * /``, comparisons, ``|| && !``, ``c ? a : b``, casts ``(T)e``,
  calls of the C math functions and of the macros the CPU kernel defines (``SQRT``, ``ABS``, ``MAX``,
  ``SIGN``, ...). The macros are read from the CPU kernel's own C source (:func:`c_macros`), so
  whatever the C kernel means by ``MAX`` (NaN handling included) the Triton kernel means too.

Element-wise branches become selections: ``c ? a : b`` is ``tl.where(c, a, b)`` and ``if (c) x = e;``
is ``x = tl.where(c, e, x)`` (both sides are computed, one is kept: the same values as C, as long as
the snippets have no side effects in expressions, which the grammar does not allow). In float32,
``/`` and ``sqrt`` become ``tl.div_rn`` and ``tl.sqrt_rn``: Triton's plain ``/`` and ``tl.sqrt`` on
float32 compile to the approximate ``div.full.f32`` and ``sqrt.approx.f32``, which the C kernel and
torch do not use. In float64 both are exactly rounded already.

Names: ``u`` and ``p`` stay; ``s_NAME`` becomes ``s{i}_NAME`` and ``c_NAME`` ``c{i}_NAME`` for block
``i`` (as in the C kernel), and a local ``T x`` becomes ``l{i}_x`` (C gives each block its own scope).
Anything outside the grammar raises :class:`TranslateError`; the backend then runs the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TranslateError", "translate", "c_macros"]


class TranslateError(ValueError):
    """A snippet uses C outside the subset this module understands."""


_TOKEN = re.compile(r"\s*(?:(\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)[fF]?"
                    r"|([A-Za-z_]\w*)|(\|\||&&|==|!=|>=|<=|\+=|-=|\*=|/=|[-+*/<>=!?:;(){},]))")


def _tokens(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    src = re.sub(r"/\*.*?\*/|//[^\n]*", " ", src, flags=re.S)
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN.match(src, pos)
        if not m:
            raise TranslateError(f"unexpected text {src[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1):
            out.append(("num", m.group(1)))
        elif m.group(2):
            out.append(("name", m.group(2)))
        else:
            out.append(("op", m.group(3)))
    out.append(("end", ""))
    return out


# ---------------------------------------------------------------------------------------- the tree

@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Unary:
    op: str
    x: object


@dataclass(frozen=True)
class Binary:
    op: str
    a: object
    b: object


@dataclass(frozen=True)
class Cond:
    c: object
    a: object
    b: object


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple


@dataclass(frozen=True)
class Assign:
    name: str
    op: str  # "=", "+=", ...
    value: object
    declare: bool


@dataclass(frozen=True)
class If:
    cond: object
    body: tuple


_BINARY_LEVELS = [("||",), ("&&",), ("==", "!="), ("<", ">", "<=", ">="), ("+", "-"), ("*", "/")]
_TYPE_NAMES = {"T", "float", "double"}


class _Parser:
    def __init__(self, src: str):
        self.toks = _tokens(src)
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise TranslateError(f"expected {value!r}, found {tok[1] or 'the end'!r}")
        self.i += 1
        return tok

    def at(self, value: str) -> bool:
        return self.peek()[1] == value and self.peek()[0] != "end"

    # statements
    def statements(self, until: str = "") -> list:
        out = []
        while not (self.peek()[0] == "end" or (until and self.at(until))):
            out.extend(self.statement())
        return out

    def statement(self) -> list:
        if self.at(";"):
            self.take()
            return []
        if self.at("{"):
            self.take()
            body = self.statements("}")
            self.take("}")
            return body
        if self.at("if"):
            self.take()
            self.take("(")
            cond = self.expr()
            self.take(")")
            body = self.statement()
            if any(isinstance(s, Assign) and s.declare for s in body):
                raise TranslateError("a declaration under an if")
            return [If(cond, tuple(body))]
        declare = False
        if self.peek()[1] in _TYPE_NAMES and self.peek(1)[0] == "name":
            self.take()
            declare = True
        if self.at("const") and not declare:
            raise TranslateError("const declarations are not part of the snippet grammar")
        kind, name = self.take()
        if kind != "name":
            raise TranslateError(f"expected a statement, found {name!r}")
        op = self.take()[1]
        if op not in ("=", "+=", "-=", "*=", "/=") or (declare and op != "="):
            raise TranslateError(f"unsupported statement {name} {op} ...")
        value = self.expr()
        self.take(";")
        return [Assign(name, op, value, declare)]

    # expressions
    def expr(self):
        c = self.binary(0)
        if self.at("?"):
            self.take()
            a = self.expr()
            self.take(":")
            return Cond(c, a, self.expr())
        return c

    def binary(self, level: int):
        if level == len(_BINARY_LEVELS):
            return self.unary()
        x = self.binary(level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in _BINARY_LEVELS[level]:
            op = self.take()[1]
            x = Binary(op, x, self.binary(level + 1))
        return x

    def unary(self):
        if self.at("-") or self.at("!") or self.at("+"):
            op = self.take()[1]
            x = self.unary()
            return x if op == "+" else Unary(op, x)
        if self.at("(") and self.peek(1)[1] in _TYPE_NAMES and self.peek(2)[1] == ")":
            self.i += 3
            # a cast to the kernel's type: every value already has it, but a comparison becomes 0 or 1
            return Unary("cast", self.unary())
        return self.primary()

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return Num(float(text))
        if kind == "name":
            if self.at("("):
                self.take()
                args = []
                while not self.at(")"):
                    args.append(self.expr())
                    if not self.at(")"):
                        self.take(",")
                self.take(")")
                return Call(text, tuple(args))
            return Name(text)
        if text == "(":
            x = self.expr()
            self.take(")")
            return x
        raise TranslateError(f"unexpected {text or 'end of snippet'!r}")


def parse(src: str) -> list:
    """The statements of a snippet, as a tree."""
    p = _Parser(src)
    out = p.statements()
    if p.peek()[0] != "end":
        raise TranslateError(f"unexpected {p.peek()[1]!r}")
    return out


# ---------------------------------------------------------------------------------------- macros

@dataclass(frozen=True)
class Macro:
    params: tuple[str, ...] | None  # None: an object-like macro (a name for a function)
    body: object


def c_macros(c_source: str) -> dict[str, Macro]:
    """The ``#define`` lines of a C kernel's source, parsed: ``SQRT`` → ``sqrtf``, ``MAX(a, b)`` → its
    expression. Lines that are not expressions (include guards, types) are left out."""
    out = {}
    for m in re.finditer(r"^#define\s+(\w+)(\(([^)]*)\))?\s+(.+?)\s*(?:/\*.*\*/)?\s*$", c_source, flags=re.M):
        name, params, body = m.group(1), m.group(3), m.group(4)
        try:
            tree = _Parser(body).expr()
        except TranslateError:
            continue
        out[name] = Macro(tuple(x.strip() for x in params.split(",")) if params is not None else None, tree)
    return out


def _expand(x, macros: dict[str, Macro], env: dict | None = None, depth: int = 0):
    """Substitute macros (and a macro's parameters) in an expression tree."""
    if depth > 20:
        raise TranslateError("macros nest too deep")
    env = env or {}
    rec = lambda y: _expand(y, macros, env, depth)  # noqa: E731
    if isinstance(x, Name):
        if x.name in env:
            return env[x.name]
        m = macros.get(x.name)
        if m is not None and m.params is None and isinstance(m.body, Name):
            return Name(m.body.name)
        return x
    if isinstance(x, Num):
        return x
    if isinstance(x, Unary):
        return Unary(x.op, rec(x.x))
    if isinstance(x, Binary):
        return Binary(x.op, rec(x.a), rec(x.b))
    if isinstance(x, Cond):
        return Cond(rec(x.c), rec(x.a), rec(x.b))
    if isinstance(x, Call):
        args = tuple(rec(a) for a in x.args)
        m = macros.get(x.fn)
        if m is None:
            return Call(x.fn, args)
        if m.params is None:  # SQRT → sqrtf
            if not isinstance(m.body, Name):
                raise TranslateError(f"macro {x.fn} is not a function name")
            return _expand(Call(m.body.name, args), macros, env, depth + 1)
        if len(m.params) != len(args):
            raise TranslateError(f"macro {x.fn} takes {len(m.params)} arguments, given {len(args)}")
        return _expand(m.body, macros, dict(zip(m.params, args)), depth + 1)
    raise TranslateError(f"cannot expand {x!r}")


# ---------------------------------------------------------------------------------------- output

_COMPARE = {"<", ">", "<=", ">=", "==", "!="}


class _Writer:
    """Writes expressions as Triton code for block ``i``, in float32 (``exact_f32`` calls) or float64."""

    def __init__(self, i: int, f32: bool, macros: dict[str, Macro]):
        self.i, self.f32, self.macros = i, f32, macros
        self.locals: set[str] = set()
        self.names: set[str] = set()  # the state and scalar names the snippet reads or writes

    def name(self, n: str) -> str:
        if n in ("u", "p"):
            return n
        if n in self.locals:
            return f"l{self.i}_{n}"
        for prefix in ("s_", "c_"):
            if n.startswith(prefix) and len(n) > 2:
                out = f"{prefix[0]}{self.i}_{n[2:]}"
                self.names.add(out)
                return out
        raise TranslateError(f"unknown name {n!r}")

    def is_bool(self, x) -> bool:
        return (isinstance(x, Binary) and x.op in _COMPARE | {"||", "&&"}) or (isinstance(x, Unary) and x.op == "!")

    def cond(self, x) -> str:
        """A condition: a comparison as it is, any other value compared with 0 (C's truth)."""
        return self.expr(x) if self.is_bool(x) else f"({self.expr(x)} != 0)"

    def expr(self, x) -> str:
        if isinstance(x, Num):
            return repr(float(x.value))
        if isinstance(x, Name):
            return self.name(x.name)
        if isinstance(x, Unary):
            if x.op == "cast":
                return f"tl.where({self.expr(x.x)}, 1.0, 0.0)" if self.is_bool(x.x) else self.expr(x.x)
            return f"(~{self.cond(x.x)})" if x.op == "!" else f"(-{self.expr(x.x)})"
        if isinstance(x, Cond):
            return f"tl.where({self.cond(x.c)}, {self.expr(x.a)}, {self.expr(x.b)})"
        if isinstance(x, Binary):
            if x.op in ("||", "&&"):
                return f"({self.cond(x.a)} {'|' if x.op == '||' else '&'} {self.cond(x.b)})"
            a, b = self.expr(x.a), self.expr(x.b)
            if x.op == "/" and self.f32:
                return f"tl.div_rn({a}, {b})"
            return f"({a} {x.op} {b})"
        if isinstance(x, Call):
            args = [self.expr(a) for a in x.args]
            fn = _FUNCTIONS.get(x.fn)
            if fn is None or len(args) != fn[0]:
                raise TranslateError(f"unsupported function {x.fn}({len(args)} arguments)")
            return fn[1 if self.f32 else 2].format(*args)
        raise TranslateError(f"cannot write {x!r}")


# C math function -> (arity, float32 form, float64 form). sqrtf/sqrt are exactly rounded in C.
_FUNCTIONS = {
    "sqrtf": (1, "tl.sqrt_rn({0})", "tl.sqrt({0})"),
    "sqrt": (1, "tl.sqrt_rn({0})", "tl.sqrt({0})"),
    "fabsf": (1, "tl.abs({0})", "tl.abs({0})"),
    "fabs": (1, "tl.abs({0})", "tl.abs({0})"),
    "fmaf": (3, "tl.fma({0}, {1}, {2})", "tl.fma({0}, {1}, {2})"),
    "fma": (3, "tl.fma({0}, {1}, {2})", "tl.fma({0}, {1}, {2})"),
    "isnan": (1, "({0} != {0})", "({0} != {0})"),
    # finite: |x| at most the type's largest value (false for ±inf and NaN)
    "isfinite": (1, "(tl.abs({0}) <= 3.4028234663852886e+38)", "(tl.abs({0}) <= 1.7976931348623157e+308)"),
}


def translate(code: str, i: int, f32: bool, macros: dict[str, Macro]) -> tuple[list[str], set[str]]:
    """Block ``i``'s C snippet as Triton statements (one per line), and the ``s{i}_``/``c{i}_`` names
    it uses. ``f32``: the kernel computes in float32 (exactly rounded ``/`` and ``sqrt`` calls)."""
    w = _Writer(i, f32, macros)
    lines: list[str] = []

    def assign(s: Assign, cond: str | None) -> None:
        if s.declare:
            if s.name in w.locals or s.name in ("u", "p") or s.name.startswith(("s_", "c_")):
                raise TranslateError(f"{s.name} declared twice")
            w.locals.add(s.name)
        if s.name == "p" or s.name.startswith("c_"):
            raise TranslateError(f"{s.name} is read-only in a snippet")
        target = w.name(s.name)
        value = _expand(s.value, macros)
        rhs = w.expr(value)
        if s.op != "=":
            rhs = w.expr(Binary(s.op[0], Name(s.name), value))
        if cond is not None:
            rhs = f"tl.where({cond}, {rhs}, {target})"
        lines.append(f"{target} = {rhs}")

    def emit(stmts, cond: str | None) -> None:
        for s in stmts:
            if isinstance(s, Assign):
                assign(s, cond)
            else:  # the condition is evaluated once, before the statements under it change anything
                c = w.cond(_expand(s.cond, macros))
                flag = f"q{i}_{len(lines)}"
                lines.append(f"{flag} = {c if cond is None else f'({cond} & {c})'}")
                emit(s.body, flag)

    emit(parse(code), None)
    return lines, w.names
