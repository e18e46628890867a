"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §4) and the THREAD response format.

A thread is returned as a tuple: UIDs in parent -> child order, then one tuple per branch
when a message has several children, e.g. ``(2, 3, (4,), (5,))`` for "(2 3 (4)(5))"; a
thread under a dummy root begins with its branches, ``((3,), (5,))`` for "((3)(5))"
(RFC 5256 §4 and §5 thread-list). ``thread()`` returns the list of threads in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import count

from services.access.imapmsg.search import MessageView
from services.access.imapmsg.sort import SortInfo
from services.access.imapmsg.textsearch import to_text

ThreadTree = tuple  # nested tuples of ints (see the module docstring)
_MSGID = re.compile(r"<([^<>\s]+)>")


class _Node:
    __slots__ = ("children", "info", "parent")

    def __init__(self, info: SortInfo | None = None) -> None:
        self.info = info
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def sort_key(self) -> tuple[float, int]:
        """ORDEREDSUBJECT order: sent date, then mailbox order; a dummy sorts as its first child."""
        node = self
        while node.info is None and node.children:
            node = node.children[0]
        if node.info is None:
            return (0.0, 0)
        return (node.info.date, node.info.view.seq)

    def subject_info(self) -> SortInfo | None:
        return self.info if self.info is not None else (self.children[0].info if self.children else None)


def _ancestor_or_self(a: _Node, b: _Node) -> bool:
    """Whether A is B or one of B's ancestors."""
    n: _Node | None = b
    while n is not None:
        if n is a:
            return True
        n = n.parent
    return False


def _link(parent: _Node, child: _Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _ids(info: SortInfo, name: str) -> list[str]:
    f = info.fields.first(name)
    if f is None:
        return []
    return _MSGID.findall(to_text(f.value))


def _references(views: Sequence[MessageView]) -> list[_Node]:
    """RFC 5256 §4 REFERENCES steps 1-3: link by References/In-Reply-To, prune dummies."""
    table: dict[str, _Node] = {}
    unique = count()
    for view in sorted(views, key=lambda v: v.seq):
        info = SortInfo(view)
        own = _ids(info, "message-id")
        mid = own[0] if own else None
        node = table.get(mid) if mid is not None else None
        if node is None or node.info is not None:
            # No Message-ID, or a duplicate of an earlier message's: a unique one (step 1).
            if mid is None or node is not None:
                mid = f"\0unique-{next(unique)}"
            node = _Node()
            table[mid] = node
        node.info = info
        refs = _ids(info, "references") or _ids(info, "in-reply-to")[:1]
        # (1.A) link the references in a chain, never changing an existing parent or looping
        prev: _Node | None = None
        for ref in refs:
            cur = table.get(ref)
            if cur is None:
                cur = table[ref] = _Node()
            if prev is not None and cur.parent is None and not _ancestor_or_self(cur, prev):
                _link(prev, cur)
            prev = cur
        # (1.B) the last reference is the parent, replacing a parent from a truncated chain
        _unlink(node)
        if prev is not None and not _ancestor_or_self(node, prev):
            _link(prev, node)
    roots = [n for n in table.values() if n.parent is None]
    return _prune(roots)


def _descendants_first(roots: list[_Node]) -> list[_Node]:
    """Every node below ROOTS (and ROOTS), each after all of its descendants. Iterative:
    a reply chain can be thousands of messages deep."""
    order: list[_Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    order.reverse()
    return order


def _prune(roots: list[_Node]) -> list[_Node]:
    """Step 3: drop empty dummies; splice a dummy's children into its place (at the top level
    only when it has a single child)."""
    for n in _descendants_first(roots):
        kept: list[_Node] = []
        for c in n.children:
            if c.info is not None:
                kept.append(c)
            elif c.children:
                kept.extend(c.children)
        for c in kept:
            c.parent = n
        n.children = kept
    out: list[_Node] = []
    for n in roots:
        if n.info is not None or len(n.children) > 1:
            out.append(n)
        elif n.children:
            child = n.children[0]
            child.parent = None
            out.append(child)
    return out


def _merge_subjects(roots: list[_Node]) -> list[_Node]:
    """Step 5: gather top-level threads with the same base subject."""
    table: dict[str, _Node] = {}
    for n in roots:
        info = n.subject_info()
        if info is None or not info.base:
            continue
        have = table.get(info.subject_key)
        if have is None:
            table[info.subject_key] = n
        elif have.info is not None and (n.info is None or (have.info.is_reply and not n.info.is_reply)):
            table[info.subject_key] = n
    out: list[_Node] = []
    for n in roots:
        info = n.subject_info()
        have = table.get(info.subject_key) if info is not None and info.base else None
        if have is None or have is n:
            out.append(n)
            continue
        if have.info is None and n.info is None:
            for c in n.children:
                _link(have, c)
            n.children = []
        elif have.info is None or (n.info is not None and n.info.is_reply and not have.info.is_reply):
            _link(have, n)
        else:
            dummy = _Node()
            assert info is not None
            table[info.subject_key] = dummy
            idx = out.index(have) if have in out else None
            _unlink(have)
            _link(dummy, have)
            _link(dummy, n)
            if idx is None:
                roots[roots.index(have)] = dummy  # not yet visited: it is replaced where it stands
            else:
                out[idx] = dummy
    return [n for n in out if n.parent is None]


def _sort_tree(roots: list[_Node]) -> None:
    """Step 6: sort every set of siblings by sent date, the deepest first."""
    for n in _descendants_first(roots):
        n.children.sort(key=_Node.sort_key)
    roots.sort(key=_Node.sort_key)


def _shape(root: _Node) -> ThreadTree:
    """The nested-tuple form of the thread under ROOT (built without recursion)."""
    top: list = []
    stack: list[tuple[_Node, list]] = [(root, top)]
    while stack:
        cur, items = stack.pop()
        while True:
            if cur.info is not None:
                items.append(cur.info.view.uid)
            if len(cur.children) != 1:
                break
            cur = cur.children[0]
        for c in cur.children:
            branch: list = []
            items.append(branch)
            stack.append((c, branch))
    return _tuples(top)


def _tuples(top: list) -> ThreadTree:
    """Nested lists to nested tuples, deepest first."""
    order: list[list] = []
    stack = [top]
    while stack:
        lst = stack.pop()
        order.append(lst)
        stack.extend(x for x in lst if isinstance(x, list))
    done: dict[int, ThreadTree] = {}
    for lst in reversed(order):
        done[id(lst)] = tuple(done[id(x)] if isinstance(x, list) else x for x in lst)
    return done[id(top)]


def _ordered_subject(views: Sequence[MessageView]) -> list[_Node]:
    """RFC 5256 §4 ORDEREDSUBJECT: by base subject, then sent date; the first of each subject
    is the parent of the others; threads ordered by their first message's sent date."""
    infos = sorted((SortInfo(v) for v in views), key=lambda i: (i.subject_key, i.date, i.view.seq))
    roots: list[_Node] = []
    last: str | None = None
    for info in infos:
        node = _Node(info)
        if roots and info.subject_key == last:
            _link(roots[-1], node)
        else:
            roots.append(node)
            last = info.subject_key
    roots.sort(key=_Node.sort_key)
    return roots


def thread(views: Sequence[MessageView], algorithm: str) -> list[ThreadTree]:
    """The threads of VIEWS (UIDs) by ALGORITHM ("REFERENCES" or "ORDEREDSUBJECT")."""
    alg = algorithm.upper()
    if alg == "ORDEREDSUBJECT":
        return [_shape(n) for n in _ordered_subject(views)]
    if alg != "REFERENCES":
        raise ValueError(f"unknown THREAD algorithm {algorithm}")
    roots = _references(views)
    roots.sort(key=_Node.sort_key)  # step 4
    roots = _merge_subjects(roots)
    _sort_tree(roots)
    return [_shape(n) for n in roots]


def _items(items: ThreadTree) -> bytes:
    """thread-members and thread-nested of one thread (RFC 5256 §5), without recursion."""
    out: list[bytes] = []
    stack: list[tuple[ThreadTree, int]] = [(items, 0)]
    while stack:
        seq, i = stack.pop()
        if i == len(seq):
            if stack:
                out.append(b")")
            continue
        stack.append((seq, i + 1))
        item = seq[i]
        if isinstance(item, int):
            out.append((b" " if i else b"") + b"%d" % item)
        else:
            out.append((b" " if i and isinstance(seq[i - 1], int) else b"") + b"(")
            stack.append((item, 0))
    return b"".join(out)


def serialize_thread(threads: Sequence[ThreadTree]) -> bytes:
    """The THREAD response data (RFC 5256 §5): "(1)(2 3 (4)(5))"."""
    return b"".join(b"(" + _items(t) + b")" for t in threads)
