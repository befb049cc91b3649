"""Countdown expressions: a parser with exact rational evaluation (no ``eval``), and a canonical form.

Grammar (ASCII, whitespace between tokens ignored)::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"
    NUMBER := [0-9]+

There is no unary minus: every number in an expression is one of the puzzle's sources, used as given. Values are
``fractions.Fraction``; a division by zero makes the expression invalid. Work is bounded: expressions longer than
``MAX_EXPRESSION_CHARS`` or nested deeper than ``MAX_DEPTH`` are refused, numbers have at most ``MAX_DIGITS`` digits.

The canonical form (:func:`canonical_key`) identifies expressions that differ only by commutativity and
associativity of ``+`` and ``*`` (``3+(5+7)``, ``(7+3)+5``) and by where a subtraction or division sits in a chain
(``8-3+2`` and ``8+2-3``): a sum is the sorted multiset of its signed terms, a product that of its factors with
their exponents (+1 or -1). Two solutions of a puzzle are *distinct* when their canonical keys differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Union

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 32
MAX_DIGITS = 6
OPERATORS = "+-*/"


@dataclass(frozen=True)
class Node:
    """A binary operation ``left op right`` of an expression tree (leaves are plain ``int``)."""

    op: str
    left: Tree
    right: Tree


Tree = Union[int, Node]  # noqa: UP007 (a runtime alias: ``int | Node`` would need Node defined before it)


class ParseError(ValueError):
    """The text is not an expression of the grammar (or exceeds the bounds)."""


def tokenize(text: str) -> list[str]:
    """The tokens of ``text``: numbers, operators and parentheses; ParseError on any other character."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ParseError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t":
            i += 1
        elif "0" <= char <= "9":
            j = i
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            if j - i > MAX_DIGITS:
                raise ParseError(f"number longer than {MAX_DIGITS} digits")
            tokens.append(text[i:j])
            i = j
        elif char in OPERATORS or char in "()":
            tokens.append(char)
            i += 1
        else:
            raise ParseError(f"unexpected character {char!r}")
    return tokens


class _Parser:
    """Recursive descent over a token list (see the module docstring's grammar)."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ParseError("unexpected end of expression")
        self.position += 1
        return token

    def expr(self, depth: int) -> Tree:
        tree = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            tree = Node(op, tree, self.term(depth))
        return tree

    def term(self, depth: int) -> Tree:
        tree = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            tree = Node(op, tree, self.factor(depth))
        return tree

    def factor(self, depth: int) -> Tree:
        token = self.take()
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ParseError(f"parentheses nested deeper than {MAX_DEPTH}")
            tree = self.expr(depth + 1)
            if self.take() != ")":
                raise ParseError("expected ')'")
            return tree
        if token.isdigit():
            return int(token)
        raise ParseError(f"unexpected token {token!r}")


def parse(text: str) -> Tree:
    """The expression tree of ``text`` (operators left-associative, ``*`` and ``/`` binding tighter than ``+`` and
    ``-``); raises ParseError when ``text`` is not one whole expression of the grammar."""
    parser = _Parser(tokenize(text))
    tree = parser.expr(0)
    if parser.peek() is not None:
        raise ParseError(f"unexpected token {parser.peek()!r} after the expression")
    return tree


def evaluate(tree: Tree) -> Fraction | None:
    """The exact value of ``tree``, or None when it divides by zero."""
    if isinstance(tree, int):
        return Fraction(tree)
    left, right = evaluate(tree.left), evaluate(tree.right)
    if left is None or right is None:
        return None
    if tree.op == "+":
        return left + right
    if tree.op == "-":
        return left - right
    if tree.op == "*":
        return left * right
    return None if right == 0 else left / right


def leaves(tree: Tree) -> list[int]:
    """The numbers of ``tree``, left to right."""
    if isinstance(tree, int):
        return [tree]
    return leaves(tree.left) + leaves(tree.right)


def render(tree: Tree) -> str:
    """``tree`` as text, every operation below the root in parentheses (``(8-7+5)`` is written ``((8-7)+5)``):
    unambiguous, and :func:`parse` gives the same tree back."""
    if isinstance(tree, int):
        return str(tree)

    def child(sub: Tree) -> str:
        return str(sub) if isinstance(sub, int) else f"({render(sub)})"

    return f"{child(tree.left)}{tree.op}{child(tree.right)}"


CanonicalKey = tuple
"""A hashable canonical form: an ``int`` for a number, ``("S", terms)`` for a sum, ``("P", factors)`` for a
product, terms and factors being sorted tuples of ``(sign or exponent, key)``."""


def canonical_key(tree: Tree) -> CanonicalKey | int:
    """The canonical form of ``tree`` (see the module docstring): equal for expressions that differ only by the
    order and grouping of the terms of a sum or the factors of a product."""
    if isinstance(tree, int):
        return tree
    if tree.op in "+-":
        return ("S", tuple(sorted(_terms(tree, 1), key=repr)))
    return ("P", tuple(sorted(_factors(tree, 1), key=repr)))


def _terms(tree: Tree, sign: int) -> list[tuple[int, object]]:
    """The signed terms of a chain of ``+`` and ``-`` (a term that is not a sum is one term)."""
    if isinstance(tree, Node) and tree.op in "+-":
        return _terms(tree.left, sign) + _terms(tree.right, sign if tree.op == "+" else -sign)
    return [(sign, canonical_key(tree))]


def _factors(tree: Tree, exponent: int) -> list[tuple[int, object]]:
    """The factors, with exponent +1 or -1, of a chain of ``*`` and ``/``."""
    if isinstance(tree, Node) and tree.op in "*/":
        return _factors(tree.left, exponent) + _factors(tree.right, exponent if tree.op == "*" else -exponent)
    return [(exponent, canonical_key(tree))]
