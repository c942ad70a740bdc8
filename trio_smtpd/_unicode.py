"""Which characters are unsafe to write down raw, and which no domain name may hold.

Sans-I/O, standard library only. Both rules go by Unicode properties (general category,
Default_Ignorable_Code_Point, nameprep's table B.1) rather than by a hand list of code
points: a list misses what it does not name (the soft hyphen, the tag characters, the
deprecated format controls U+206A-206F were all missed once, issue 16).
"""

from __future__ import annotations

import re
import stringprep
import unicodedata
from collections.abc import Callable

__all__ = ["UNSAFE_CATEGORIES", "escape_unsafe", "first_not_in_name", "is_unsafe",
           "not_in_name"]

# The general categories never written raw. Controls (Cc), format characters (Cf: bidi
# controls, zero-width characters, the soft hyphen, tag characters...), and the line and
# paragraph separators (Zl, Zp) split a line or disguise it. Lone surrogates (Cs, what a
# surrogateescape decoder leaves) cannot be encoded in UTF-8 at all. Private use (Co) means
# whatever a reader's font makes of it. Unassigned code points (Cn) may be format controls
# in the reader's newer Unicode (U+2066-2069 were unassigned before Unicode 6.3).
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def is_unsafe(char: str) -> bool:
    """Whether ``char`` could split, reorder or hide text if written raw."""
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def escape_unsafe(text: str, escaped: Callable[[str], str]) -> str:
    """``text`` with each unsafe character replaced by ``escaped(char)``."""
    # str.isprintable() is False for every unsafe category (and for spaces other than
    # U+0020), in C: the usual text needs no look at each character.
    if text.isprintable():
        return text
    return "".join(escaped(c) if is_unsafe(c) else c for c in text)


# The Default_Ignorable_Code_Point characters (DerivedCoreProperties.txt) outside the
# unsafe categories, which render as nothing: the combining grapheme joiner, the Hangul
# fillers, the Khmer inherent vowels, the Mongolian free variation selectors and the
# variation selectors. (unicodedata does not expose the property; the other ignorables
# are Cf or Cn.) Written down they cannot split or reorder a line, so they are not unsafe
# there; in a name they make two spellings of it look alike.
_IGNORABLE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u3164"
                        "\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")


def not_in_name(char: str) -> bool:
    """Whether no domain name label may hold ``char``.

    The unsafe characters, spaces (Zs), the other default-ignorable characters, and what
    IDNA2003's nameprep maps to nothing (table B.1, which adds U+1806): IDNA2008 (RFC
    5892) disallows them all, and a label holding one would be a different spelling of a
    name (``exa\\u00admple`` is ``example`` to IDNA2003) or no name at all.
    """
    return (is_unsafe(char) or unicodedata.category(char) == "Zs"
            or _IGNORABLE.match(char) is not None or stringprep.in_table_b1(char))


def first_not_in_name(label: str) -> str | None:
    """The first character of ``label`` that no name may hold, if any."""
    if label.isascii():
        return None  # ASCII labels are checked by the grammar
    return next((c for c in label if not_in_name(c)), None)
